"""Kill-and-resume gives the weights (and data order) of an uninterrupted run; a crash while a
checkpoint is being written leaves the previous one in charge."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import radlads.checkpoint as checkpoint
from radlads.config import load_config
from helpers import tiny_teacher, tiny_tokenizer, write_word_corpus
from radlads.train import make_data, train_stage
from radlads.transfer import build_student


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


WORDS = "pack my box with five dozen liquor jugs how vexingly quick daft zebras jump".split()


def write_corpus(path):
    return write_word_corpus(path, WORDS, n_docs=150, stride=5, min_words=10, extra_words=11, numbered=True)


def config(tmp_path, stage, steps):
    seq, batch = 32, 4
    return load_config(overrides={
        "teacher": "tiny", "out": str(tmp_path / "run"), "stages": [stage], "save_every": 2, "eval_every": 100,
        "data": {"spec": str(write_corpus(tmp_path / "corpus.jsonl")), "valid_sequences": 1, "valid_fraction": 0.1,
                 "shuffle_buffer": 8},
        f"stage{stage}": {"tokens": steps * batch * seq, "seq_len": seq, "batch_size": batch, "lr": 3e-3,
                          "warmup_steps": 2, "grad_accum": 2},
    })


class Killed(Exception):
    pass


def dying_data(cfg, tokenizer, batches_before_death, seen):
    """The configured data, except that the process 'dies' when asking for one batch too many."""

    def factory(stage_cfg, seed):
        stream, valid = make_data(cfg, stage_cfg, seed, tokenizer)

        class Dying:
            def __next__(self):
                if batches_before_death is not None and len(seen) == batches_before_death:
                    raise Killed
                batch = next(stream)
                seen.append(batch)
                return batch

            state_dict, load_state_dict = stream.state_dict, stream.load_state_dict

        return Dying(), valid

    return factory


@pytest.mark.parametrize("stage,arch", [(1, "rwkv6"), (2, "rwkv7")])
def test_kill_and_resume_equals_uninterrupted(tmp_path, stage, arch):
    teacher, tok = tiny_teacher("llama"), tiny_tokenizer()

    cfg = config(tmp_path / "a", stage, steps=7)
    full, batches_full = build_student(teacher, arch), []
    assert train_stage(stage, cfg, teacher, full, tok, tmp_path / "a" / "run",
                       data_factory=dying_data(cfg, tok, None, batches_full))

    cfg_b = config(tmp_path / "b", stage, steps=7)
    batches_b = []
    with pytest.raises(Killed):  # dies while fetching step 6's batch: steps 1-5 ran, step 4 was saved
        train_stage(stage, cfg_b, teacher, build_student(teacher, arch), tok, tmp_path / "b" / "run",
                    data_factory=dying_data(cfg_b, tok, 5, batches_b))
    assert json.loads((tmp_path / "b/run/checkpoints" / f"stage{stage}" / "latest.json").read_text())["step"] == 4
    resumed = build_student(teacher, arch)  # a new process starts from the same command
    assert train_stage(stage, cfg_b, teacher, resumed, tok, tmp_path / "b" / "run", resume=True,
                       data_factory=dying_data(cfg_b, tok, None, batches_b))

    # the resumed run replays steps 5.. with the batches the uninterrupted run saw at 5..
    assert len(batches_b) == 5 + 3
    for got, want in zip(batches_b[:4] + batches_b[5:], batches_full):
        assert torch.equal(got, want)
    for (name, p), q in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
    rows_a = [json.loads(x) for x in (tmp_path / "a/run/metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(1, 8))  # the killed run's step 5 was logged once
    for a, b in zip(rows_a, rows_b):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["lr"] == a["lr"]


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, 2, steps=6)
    teacher = tiny_teacher("llama")
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def save_then_crash(tensors, path):
        calls["n"] += 1
        if calls["n"] == 3:  # the second checkpoint (step 4): model written, optimizer not
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise KeyboardInterrupt
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_stage(2, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints" / "stage2"
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step-0000002"]  # no debris
    assert checkpoint.latest_checkpoint(folder).name == "step-0000002"
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert train_stage(2, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run",
                       resume=True)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    cfg = config(tmp_path, 2, steps=2)
    teacher = tiny_teacher("llama")
    train_stage(2, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run")
    cfg.stage2.tokens *= 2
    with pytest.raises(Exception, match="does not match the model"):
        train_stage(2, cfg, teacher, build_student(teacher, "rwkv6"), tiny_tokenizer(), tmp_path / "run",
                    resume=True)


def test_rerun_without_resume_refuses_to_overwrite(tmp_path):
    cfg = config(tmp_path, 1, steps=2)
    teacher = tiny_teacher("llama")
    train_stage(1, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run")
    with pytest.raises(Exception, match="pass --resume"):
        train_stage(1, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run")


# --------------------------------------------------------------------------------------------
# A real SIGKILL of `radlads train`, then `--resume`
# --------------------------------------------------------------------------------------------


def train_cmd(student, teacher, data, out, steps):
    return [sys.executable, "-m", "radlads.cli", "train", "--stage", "2", "--student", str(student),
            "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--threads", "1",
            "--stage2-tokens", str(steps * 4 * 32), "--stage2-seq-len", "32", "--stage2-batch-size", "4",
            "--lr", "1e-3", "--save-every", "3", "--set", "data.valid_sequences=0"]


def test_sigkill_then_resume_from_the_command_line(tmp_path):
    from radlads.export import save_model

    teacher_model, tok = tiny_teacher("llama"), tiny_tokenizer()
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    teacher_model.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    save_model(build_student(teacher_model, "rwkv7"), tok, student)
    data = write_corpus(tmp_path / "corpus.jsonl")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    steps = 24

    ok = subprocess.run(train_cmd(student, teacher, data, tmp_path / "full", steps), env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]

    proc = subprocess.Popen(train_cmd(student, teacher, data, tmp_path / "killed", steps), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed" / "checkpoints" / "stage2" / "latest.json"
    deadline = time.time() + 240
    while not pointer.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert killed_at < steps, "the run finished before it could be killed"

    resumed = subprocess.run(train_cmd(student, teacher, data, tmp_path / "killed", steps) + ["--resume"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    want = load_file(str(tmp_path / "full" / "model.safetensors"))
    got = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
