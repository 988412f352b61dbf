"""`radlads convert` end to end on a tiny teacher folder: a loadable Hugging Face export with
run.yaml and metrics.jsonl, resume at the unfinished stage, teacher-sampled default data, and
one-line errors (exit 2) for bad inputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from radlads.cli import main
from radlads.config import load_config
from radlads.convert import convert
from helpers import tiny_teacher, tiny_tokenizer, write_word_corpus


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


WORDS = "a stitch in time saves nine but the early bird gets the worm before noon".split()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    teacher = root / "teacher"
    tiny_teacher("qwen2").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    data = write_word_corpus(root / "corpus.jsonl", WORDS, n_docs=150, stride=3, min_words=15, extra_words=7)
    return teacher, data


def small(seq=32, batch=4, steps=(3, 3)):
    out = []
    for n, s in zip((1, 2), steps):
        out += [f"--stage{n}-tokens", str(s * batch * seq), f"--stage{n}-seq-len", str(seq),
                f"--stage{n}-batch-size", str(batch)]
    return out + ["--set", "data.valid_sequences=1", "--set", "data.valid_fraction=0.1", "--stage2-lr", "1e-3"]


def test_convert_cli_exports_a_loadable_student(inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher, data = inputs
    out = tmp_path / "run"
    assert main(["convert", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--arch", "rwkv6",
                 "--attention-layers", "1", *small()]) == 0
    cfg = load_config(config_file=str(out / "run.yaml"))
    assert cfg.student.arch == "rwkv6" and cfg.student.attention_layers == [1] and cfg.teacher == str(teacher)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert (out / "checkpoints" / "stage1" / "final" / "config.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules")  # the copied code, not radlads
    assert model.config.time_mix == "rwkv6" and model.config.attention_layers == [1]
    exported = load_file(str(out / "model.safetensors"))
    for name, p in model.state_dict().items():
        if name in exported:
            assert torch.equal(p, exported[name]), name
    ids = torch.tensor([[5, 6, 7, 8]])
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_convert_resumes_at_the_unfinished_stage_and_step(inputs, tmp_path):
    teacher, data = inputs
    pair = (tiny_teacher("qwen2"), tiny_tokenizer())

    def cfg(name):
        return load_config(overrides={
            "teacher": str(teacher), "out": str(tmp_path / name), "save_every": 2, "stages": [1, 2],
            "data": {"spec": str(data), "valid_sequences": 1, "valid_fraction": 0.1},
            "stage1": {"tokens": 3 * 4 * 32, "seq_len": 32, "batch_size": 4},
            "stage2": {"tokens": 5 * 4 * 32, "seq_len": 32, "batch_size": 4, "lr": 1e-3},
        })

    assert convert(cfg("full"), teacher_and_tokenizer=pair)
    # 3 steps of stage 1, then 3 of stage 2's 5: stopped at a step that is not a save_every multiple
    assert not convert(cfg("stopped"), teacher_and_tokenizer=pair, stop_after_steps=6)
    stopped = tmp_path / "stopped"
    assert (stopped / "checkpoints" / "stage1" / "final" / "config.json").is_file()
    assert json.loads((stopped / "checkpoints" / "stage2" / "latest.json").read_text())["step"] == 3
    assert not (stopped / "model.safetensors").exists()  # no export before the last stage is done
    assert convert(cfg("stopped"), resume=True, teacher_and_tokenizer=pair)

    want, got = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    rows = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 1), (1, 2), (1, 3)] + [(2, i) for i in range(1, 6)]


def test_without_data_the_teacher_writes_the_corpus(inputs, tmp_path):
    teacher, _ = inputs
    out = tmp_path / "run"
    assert main(["convert", "--teacher", str(teacher), "--out", str(out), *small(steps=(2, 1)),
                 "--set", "data.teacher_samples=6", "--set", "data.teacher_sample_tokens=48",
                 "--set", "data.valid_fraction=0.3"]) == 0
    docs = (out / "teacher_samples.jsonl").read_text().splitlines()
    assert len(docs) == 6 and all(json.loads(d)["text"] for d in docs)
    assert load_config(config_file=str(out / "run.yaml")).data.spec == "teacher"  # reproducible as given


def error_lines(capsys, argv):
    code = main(argv)
    errors = [x for x in capsys.readouterr().err.splitlines() if "error" in x.lower()]
    return code, errors


@pytest.mark.parametrize("case", ["missing data", "bad data file", "too long", "nothing to resume", "not empty",
                                  "no teacher"])
def test_bad_inputs_are_one_line_and_exit_2(inputs, tmp_path, capsys, case):
    teacher, data = inputs
    out = tmp_path / "run"
    argv = ["convert", "--teacher", str(teacher), "--data", str(data), "--out", str(out), *small()]
    if case == "missing data":
        argv[4], expected = str(tmp_path / "nowhere.jsonl"), "nowhere.jsonl"
    elif case == "bad data file":
        (tmp_path / "weights.bin").write_bytes(b"\0\1\2")
        argv[4], expected = str(tmp_path / "weights.bin"), "unsupported data file"
    elif case == "too long":
        argv += ["--stage1-seq-len", "8192"]
        expected = "sequence length 8192 is above the teacher's context of 4096"
    elif case == "nothing to resume":
        argv += ["--resume"]
        expected = "nothing to resume"
    elif case == "not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expected = "is not empty"
    else:
        argv[2], expected = str(tmp_path / "no-teacher"), "teacher not found"
    code, errors = error_lines(capsys, argv)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("radlads convert: error: ") and expected in errors[0]


def test_train_cli_runs_one_stage_on_a_student_folder(inputs, tmp_path, capsys):
    from radlads.export import save_model
    from radlads.transfer import build_student

    teacher, data = inputs
    student = tmp_path / "student"
    save_model(build_student(tiny_teacher("qwen2"), "rwkv7"), tiny_tokenizer(), student)
    out = tmp_path / "s2"
    argv = ["train", "--stage", "2", "--student", str(student), "--teacher", str(teacher), "--data", str(data),
            "--out", str(out), *small(), "--lr", "2e-3", "--set", "stage2.freeze_mlp=true"]
    assert main(argv) == 0
    assert load_config(config_file=str(out / "run.yaml")).stage2.lr == 2e-3
    trained, initial = load_file(str(out / "model.safetensors")), load_file(str(student / "model.safetensors"))
    assert torch.equal(trained["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(trained["model.layers.0.time_mix.r_proj.weight"],
                           initial["model.layers.0.time_mix.r_proj.weight"])
    code, errors = error_lines(capsys, argv[:4] + [str(tmp_path)] + argv[5:])  # not a student folder
    assert code == 2 and errors == [f"radlads train: error: {tmp_path} is not a radlads student folder "
                                    "(make one with radlads init)"]


def test_convert_with_teacher_init_starts_stage1_lower(inputs, tmp_path):
    teacher, data = inputs
    first_loss = {}
    for mode in ("none", "decay+gain"):
        out = tmp_path / mode
        assert main(["convert", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--arch", "rwkv7",
                     "--stages", "1", "--set", f"student.teacher_init={mode}", *small(steps=(1, 1))]) == 0
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        first_loss[mode] = rows[0]["loss"]  # measured before the first update
    assert first_loss["decay+gain"] < first_loss["none"]
