"""Exported folders load with plain transformers, even where radlads cannot be imported."""

import json
import subprocess
import sys

import pytest
import torch

from radlads.cli import main
from radlads.export import save_model
from radlads.loading import load_model
from helpers import tiny_teacher, tiny_tokenizer
from radlads.transfer import build_student

# Runs in a fresh interpreter that refuses to import radlads: only the folder's own code exists.
LOAD_WITHOUT_RADLADS = r"""
import sys, json, torch
sys.modules["radlads"] = None  # any `import radlads...` now raises ImportError
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, ids_json = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = torch.tensor(json.loads(ids_json))
with torch.no_grad():
    logits = model(ids).logits
    gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
print(json.dumps({"module": type(model).__module__, "logits": logits[0, -1, :8].tolist(),
                  "generated": gen[0].tolist()}))
"""


@pytest.mark.parametrize("arch", ["rwkv7", "rwkv6"])
def test_save_load_same_logits_without_radlads(tmp_path, arch):
    student = build_student(tiny_teacher("qwen2"), arch, attention_layers=[1] if arch == "rwkv7" else [])
    folder = save_model(student, tiny_tokenizer(), tmp_path / "student")
    ids = [[5, 17, 99, 250, 3, 42, 7]]
    with torch.no_grad():
        expected = student(torch.tensor(ids)).logits[0, -1, :8]
        expected_gen = student.generate(torch.tensor(ids), max_new_tokens=6, do_sample=False, pad_token_id=0)

    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_RADLADS, str(folder), json.dumps(ids)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert not got["module"].startswith("radlads")
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert got["generated"] == expected_gen[0].tolist()


def test_folder_contents(tmp_path):
    folder = save_model(build_student(tiny_teacher("llama"), "rwkv7"), tiny_tokenizer(), tmp_path / "s")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_radlads.py", "configuration_radlads.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_radlads.RadladsForCausalLM"
    assert config["model_type"] == "radlads" and config["time_mix"] == "rwkv7"


def test_overwrite_keeps_a_complete_folder(tmp_path):
    tok = tiny_tokenizer()
    save_model(build_student(tiny_teacher("llama", seed=1), "rwkv7"), tok, tmp_path / "s")
    second = build_student(tiny_teacher("llama", seed=2), "rwkv7")
    save_model(second, tok, tmp_path / "s")
    reloaded, _ = load_model(str(tmp_path / "s"))
    torch.testing.assert_close(reloaded.model.embed_tokens.weight, second.model.embed_tokens.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp or .old leftovers


def test_init_cli_end_to_end(tmp_path):
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    code = main(["init", "--teacher", str(tmp_path / "teacher"), "--arch", "rwkv6", "--out", str(tmp_path / "s")])
    assert code == 0
    student, _ = load_model(str(tmp_path / "s"))
    assert student.config.time_mix == "rwkv6"
    torch.testing.assert_close(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)


def test_student_folder_without_weights_is_a_clear_error(tmp_path, capsys):
    folder = save_model(build_student(tiny_teacher("llama"), "rwkv7"), tiny_tokenizer(), tmp_path / "s")
    (folder / "model.safetensors").unlink()
    capsys.readouterr()
    code = main(["generate", str(folder), "--prompt", "hi", "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no *.safetensors weights" in err[0]
