"""Training stages on a tiny teacher: losses fall, stage 1 touches only the time-mix,
kill-and-resume equals an uninterrupted run, NaN stops cleanly, convert exports a loadable model."""

import json

import pytest
import torch

from radlads.config import load_config
from radlads.convert import convert
from radlads.errors import RadladsError
from radlads.testing import cycling_stream_factory, tiny_teacher, tiny_tokenizer
from radlads.train import train_stage
from radlads.transfer import build_student


def config(tmp_path, **stage_overrides):
    overrides = {
        "teacher": "tiny", "out": str(tmp_path / "run"), "stages": [1, 2, 3], "eval_every": 4, "save_every": 2,
        "data": {"valid_sequences": 2},
        "stage1": {"tokens": 16 * 4 * 32, "seq_len": 32, "batch_size": 4, "warmup_steps": 2, "lr": 3e-3},
        "stage2": {"tokens": 12 * 4 * 32, "seq_len": 32, "batch_size": 4, "lr": 3e-3},
        "stage3": {"tokens": 10 * 2 * 64, "seq_len": 64, "batch_size": 2, "lr": 3e-3},
    }
    for stage, values in stage_overrides.items():
        overrides[stage].update(values)
    return load_config(overrides=overrides)


def losses(run_dir, stage):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["stage"] == stage]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_lowers_its_loss(tmp_path, stage):
    cfg = config(tmp_path)
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    assert train_stage(stage, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run",
                       stream_factory=cycling_stream_factory)
    curve = losses(tmp_path / "run", stage)
    assert len(curve) == cfg.stage(stage).tokens // (cfg.stage(stage).batch_size * cfg.stage(stage).seq_len)
    assert sum(curve[-2:]) / 2 < 0.9 * sum(curve[:2]) / 2, curve


def test_stage1_changes_only_time_mix_parameters(tmp_path):
    cfg = config(tmp_path)
    teacher = tiny_teacher("qwen2")
    student = build_student(teacher, "rwkv7", attention_layers=[1])  # the kept softmax layer must not train
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    train_stage(1, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run", stream_factory=cycling_stream_factory)
    trained = student.time_mix_parameter_names()
    assert not any(n.startswith("model.layers.1.") for n in trained)
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trained


def test_freeze_mlp_in_stage2(tmp_path):
    cfg = config(tmp_path, stage2={"freeze_mlp": True, "tokens": 2 * 4 * 32})
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    mlp = student.model.layers[0].mlp.up_proj.weight.detach().clone()
    train_stage(2, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run", stream_factory=cycling_stream_factory)
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, mlp)
    assert not torch.equal(student.model.layers[0].time_mix.r_proj.weight, teacher.model.layers[0].self_attn.q_proj.weight)


@pytest.mark.parametrize("stage", [1, 2])
def test_kill_and_resume_equals_uninterrupted(tmp_path, stage):
    teacher = tiny_teacher("llama")
    full = build_student(teacher, "rwkv6")
    cfg = config(tmp_path / "a", **{f"stage{stage}": {"tokens": 7 * 4 * 32}})
    train_stage(stage, cfg, teacher, full, tiny_tokenizer(), tmp_path / "a", stream_factory=cycling_stream_factory)

    cfg_b = config(tmp_path / "b", **{f"stage{stage}": {"tokens": 7 * 4 * 32}})
    first = build_student(teacher, "rwkv6")
    done = train_stage(stage, cfg_b, teacher, first, tiny_tokenizer(), tmp_path / "b",
                       stream_factory=cycling_stream_factory, stop_after_steps=3)
    assert not done
    del first  # the "killed" process is gone; a new one starts from the same initial student
    resumed = build_student(teacher, "rwkv6")
    assert train_stage(stage, cfg_b, teacher, resumed, tiny_tokenizer(), tmp_path / "b", resume=True,
                       stream_factory=cycling_stream_factory)
    for (name, p), q in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)


def test_rerun_without_resume_refuses_to_overwrite(tmp_path):
    cfg = config(tmp_path, stage1={"tokens": 2 * 4 * 32})
    teacher = tiny_teacher("llama")
    train_stage(1, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run",
                stream_factory=cycling_stream_factory)
    with pytest.raises(RadladsError, match="pass --resume"):
        train_stage(1, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run",
                    stream_factory=cycling_stream_factory)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path, stage2={"tokens": 6 * 4 * 32})
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    calls = {"n": 0}
    original = student.forward

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        if calls["n"] > 3 * 1 + 1:  # a few good steps (plus a validation pass), then NaN
            out.logits = out.logits * float("nan")
        return out

    student.forward = poisoned
    with pytest.raises(RadladsError, match=r"stage 2: loss is nan at step \d+.*last good checkpoint: .*step-"):
        train_stage(2, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run", stream_factory=cycling_stream_factory)
    ckpt = json.loads((tmp_path / "run" / "checkpoints" / "stage2" / "latest.json").read_text())
    assert ckpt["step"] >= 2


def test_convert_exports_a_loadable_student(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = config(tmp_path, stage1={"tokens": 2 * 4 * 32}, stage2={"tokens": 2 * 4 * 32},
                 stage3={"tokens": 2 * 2 * 64})
    assert convert(cfg, stream_factory=cycling_stream_factory,
                   teacher_and_tokenizer=(tiny_teacher("llama"), tiny_tokenizer()))
    run = tmp_path / "run"
    assert (run / "run.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert {json.loads(x)["stage"] for x in (run / "metrics.jsonl").read_text().splitlines()} == {1, 2, 3}
    model = AutoModelForCausalLM.from_pretrained(run, trust_remote_code=True)
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 320)


def test_convert_resumes_at_the_unfinished_stage(tmp_path):
    cfg = config(tmp_path, stage1={"tokens": 3 * 4 * 32}, stage2={"tokens": 4 * 4 * 32})
    cfg.stages = [1, 2]
    pair = (tiny_teacher("llama"), tiny_tokenizer())
    assert not convert(cfg, stream_factory=cycling_stream_factory, teacher_and_tokenizer=pair, stop_after_steps=3 + 0)
    # stage 1 had exactly 3 steps: it finished; stage 2 was stopped after 3 of its 4 steps
    assert (tmp_path / "run" / "checkpoints" / "stage1" / "final" / "config.json").exists()
    assert convert(cfg, resume=True, stream_factory=cycling_stream_factory, teacher_and_tokenizer=pair)
    stage2 = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["stage"] == 2]
    assert [r["step"] for r in stage2] == [1, 2, 3, 4]
