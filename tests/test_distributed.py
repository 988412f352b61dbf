"""Two gloo processes under torchrun (DDP, and FSDP2) give the student of one process with the
same global batch: every rank reads the same batches and takes its slice."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from helpers import tiny_teacher, tiny_tokenizer, write_word_corpus

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly".split()


def make_inputs(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_teacher("llama").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    data = write_word_corpus(tmp_path / "corpus.jsonl", WORDS, n_docs=200, stride=1, min_words=20, extra_words=13)
    return teacher, data


def convert_cmd(teacher, data, out, nproc, *extra):
    args = ["-m", "radlads.cli", "convert", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--arch", "rwkv7", "--stages", "1,2", "--threads", "1",
            "--stage1-tokens", str(3 * 4 * 32), "--stage1-seq-len", "32", "--stage1-batch-size", "4",
            "--stage2-tokens", str(3 * 4 * 32), "--stage2-seq-len", "32", "--stage2-batch-size", "4",
            "--set", "stage2.grad_accum=2", "--set", "stage2.lr=1e-3", "--set", "data.valid_sequences=1",
            "--save-every", "2", *extra]
    if nproc == 1:
        return [sys.executable] + args
    # --standalone picks a free rendezvous port: other test runs on this machine may be using one
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "--no-python", sys.executable] + args


def test_two_gloo_processes_match_one_process_with_ddp_and_fsdp2(tmp_path):
    teacher, data = make_inputs(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {"one": (1, ()), "ddp": (2, ()), "fsdp": (2, ("--fsdp",))}
    for name, (nproc, extra) in runs.items():
        result = subprocess.run(convert_cmd(teacher, data, tmp_path / name, nproc, *extra),
                                capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"

    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    initial = tiny_teacher("llama").state_dict()
    assert not torch.equal(one["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])
    for name in ("ddp", "fsdp"):
        other = load_file(str(tmp_path / name / "model.safetensors"))
        assert other.keys() == one.keys()
        for key in one:
            torch.testing.assert_close(other[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [(r["stage"], r["step"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
        base = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(base, rows):  # the logged loss is the global mean, as in one process
            assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]) + 1e-7, (name, a, b)
            assert abs(a.get("val_loss", 0) - b.get("val_loss", 0)) <= 1e-4 * abs(a.get("val_loss", 1))

