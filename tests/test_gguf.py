"""GGUF export: tiny random students run in llama.cpp (llama-cpp-python) exactly as in PyTorch.

llama-cpp-python is the `gguf` extra, installed by the README's test install; these tests are not
skipped without it, they fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import cli_error, tiny_teacher, tiny_tokenizer
from radlads.export import save_model
from radlads.transfer import build_student

PROMPT_TOKENS = 64
GREEDY_TOKENS = 32
REL_TOL = 1e-3  # max |Δlogit| <= REL_TOL × max |logit| at f32 (the bound)

# A minimal chat template (the byte tokenizer has none), so chat requests have something to render.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

# arwkv7 needs heads of 64 (llama.cpp's CPU wkv7 kernel, see gguf_export.WKV7_HEAD_MULTIPLE): 2 heads
# of 64 sharing 1 K/V head (GQA, expanded on export). rwkv6 keeps the tiny default, 4 heads of 16 over 2.
HEAD64 = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}

VARIANTS = {
    # name: (teacher family, arch, student config overrides, teacher overrides)
    "rwkv7": ("llama", "rwkv7", {}, HEAD64),
    "rwkv7-groupnorm-tied-scale": ("mistral", "rwkv7", {"use_groupnorm": True, "attn_scale": 0.3},
                                   {**HEAD64, "tie_word_embeddings": True}),
    "rwkv6": ("llama", "rwkv6", {}, {}),
    "rwkv6-qwen2-bias-scale": ("qwen2", "rwkv6", {"attn_scale": 0.2}, {}),
}


def randomize(model, seed: int = 0):
    """Move every parameter off its initial value, so no path is trivially zero (LoRA down-projections,
    token-shift mixes and GroupNorm start at 0 or 1). The rwkv6 decay LoRA stays small enough that its
    clamp never acts (that case has its own test)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.02 if name.endswith("time_mix.w2") and model.config.time_mix == "rwkv6" else 0.2
            if name.endswith(("maa", "maa_x", "k_k", "k_a", "ln_x.weight", "ln_x.bias", "w0", "a0", "v0")):
                std = 0.5
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def make_student(folder, variant: str, teacher_extra: dict | None = None, **extra):
    family, arch, overrides, teacher_overrides = VARIANTS[variant]
    teacher = tiny_teacher(family, seed=3, **{**teacher_overrides, **(teacher_extra or {})})
    student = build_student(teacher, arch, **{**overrides, **extra})
    if student.config.tie_word_embeddings:
        student.tie_weights()
    randomize(student)
    return str(save_model(student, tok_with_template(), folder)), student.eval()


def tok_with_template():
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """variant -> (student folder, PyTorch student, f32 GGUF path)."""
    from radlads.gguf_export import export_gguf

    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for variant in VARIANTS:
        folder, model = make_student(root / variant, variant)
        path = root / f"{variant}.gguf"
        export_gguf(folder, path, "f32", say=lambda *_: None)
        out[variant] = (folder, model, path)
    return out


def prompt_ids(n: int = PROMPT_TOKENS, seed: int = 1) -> list[int]:
    return torch.randint(3, 259, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def torch_greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model(torch.tensor([ids]), use_cache=True)
    cache, nxt, got = out.cache, int(out.logits[0, -1].argmax()), []
    for _ in range(steps):
        got.append(nxt)
        out = model(torch.tensor([[nxt]]), cache=cache, use_cache=True)
        cache, nxt = out.cache, int(out.logits[0, -1].argmax())
    return got


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_cpp_logits_and_greedy_match_pytorch(exported, variant, one_thread):
    from radlads import llama_cpp_run

    _, model, path = exported[variant]
    ids = prompt_ids()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp_run.load(path, n_ctx=256, threads=1, logits_all=True)
    got = llama_cpp_run.eval_logits(llm, ids)
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 1.0  # random weights give logits of a few units, not a degenerate all-zero check
    assert float(np.abs(got - expected).max()) <= REL_TOL * scale
    assert llama_cpp_run.greedy(llm, ids, GREEDY_TOKENS) == torch_greedy(model, ids, GREEDY_TOKENS)


@pytest.mark.parametrize("variant", ["rwkv7", "rwkv6"])
def test_llama_cpp_state_carries_across_evals(exported, variant, one_thread):
    from radlads import llama_cpp_run

    _, _, path = exported[variant]
    ids = prompt_ids()
    llm = llama_cpp_run.load(path, n_ctx=256, threads=1, logits_all=True)
    whole = llama_cpp_run.eval_logits(llm, ids)
    first = llama_cpp_run.eval_logits(llm, ids[:40])
    second = llama_cpp_run.eval_logits(llm, ids[40:], reset=False)
    split = np.concatenate([first, second])
    assert float(np.abs(split - whole).max()) <= 1e-5 * float(np.abs(whole).max())
    # and the state really is carried: the second half alone, from a fresh state, differs
    alone = llama_cpp_run.eval_logits(llm, ids[40:])
    assert float(np.abs(alone - whole[40:]).max()) > 1e-2


def test_gguf_layout_and_types(exported, tmp_path):
    """llama.cpp's names and shapes; at q8_0 the matrices are quantised, vectors and decay LoRAs stay f32."""
    import gguf

    from radlads.gguf_export import export_gguf

    folder, model, path = exported["rwkv7"]
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "arwkv7"
    tensors = {t.name: t for t in reader.tensors}
    d = model.config.hidden_size
    # ggml order {ne0, ne1}: GQA k/v expanded to full width, the output head written out
    assert list(tensors["blk.1.time_mix_key.weight"].shape) == [d, d]
    assert list(tensors["blk.0.time_mix_lerp_fused.weight"].shape) == [d, 1, 1, 6]
    assert "output.weight" in tensors and "blk.0.time_mix_v1.weight" in tensors
    assert not np.any(tensors["blk.0.time_mix_r_k.weight"].data)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.chat_template"].contents() == CHAT_TEMPLATE
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == model.config.vocab_size

    q8 = tmp_path / "q8.gguf"
    export_gguf(folder, q8, "q8_0", say=lambda *_: None)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(q8).tensors}
    assert types["blk.1.ffn_up.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.1.time_mix_w1.weight"] == "F32" and types["blk.1.attn_norm.weight"] == "F32"
    assert q8.stat().st_size < path.stat().st_size / 2


def test_tied_embeddings_written_out(exported):
    import gguf

    _, model, path = exported["rwkv7-groupnorm-tied-scale"]
    assert model.config.tie_word_embeddings
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    np.testing.assert_array_equal(tensors["output.weight"].data, tensors["token_embd.weight"].data)
    assert "blk.0.time_mix_ln.bias" in tensors


# --------------------------------------------------------------------------------------------
# Refusals and bad input: one line, exit 2, no file
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, extra, family, words", [
    ("rwkv7", {"attention_layers": [1]}, None, "hybrid softmax layers"),
    ("rwkv7", {"use_rope": True}, None, "RoPE on r/k"),
    ("rwkv7", {}, "qwen2", "r/k/v biases"),
    ("rwkv7-small-heads", {}, None, "head size 16"),
    ("rwkv6", {"use_groupnorm": True}, None, "GroupNorm"),
])
def test_unrepresentable_students_are_refused(tmp_path, capsys, variant, extra, family, words):
    small_heads = variant == "rwkv7-small-heads"
    _, arch, overrides, teacher_overrides = VARIANTS["rwkv7" if small_heads else variant]
    teacher = tiny_teacher(family or "llama", seed=3, **({} if small_heads else teacher_overrides))
    folder = save_model(build_student(teacher, arch, **{**overrides, **extra}), tiny_tokenizer(), tmp_path / "s")
    out = tmp_path / "out.gguf"
    line = cli_error(capsys, ["export-gguf", str(folder), str(out)], alone=False)
    assert words in line
    assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))


def test_active_rwkv6_decay_clamp_is_refused(tmp_path, capsys):
    folder, model = make_student(tmp_path / "s", "rwkv6")
    with torch.no_grad():
        model.model.layers[0].time_mix.w0.fill_(3.0)  # log w = -e^3 < -5: the clamp acts on every channel
    save_model(model, tiny_tokenizer(), folder)
    out = tmp_path / "out.gguf"
    line = cli_error(capsys, ["export-gguf", folder, str(out)], alone=False)
    assert "decay clamp" in line and "layers [0]" in line
    assert not out.exists()


def test_bad_input(tmp_path, capsys, exported):
    folder = exported["rwkv7"][0]
    assert "not a radlads student folder" in cli_error(capsys, ["export-gguf", str(tmp_path), str(tmp_path / "o.gguf")])
    existing = tmp_path / "exists.gguf"
    existing.write_text("keep me")
    assert "pass --force" in cli_error(capsys, ["export-gguf", folder, str(existing)])
    assert existing.read_text() == "keep me"
    (tmp_path / "run.yaml").write_text("{}")
    assert "without an exported student" in cli_error(capsys, ["export-gguf", str(tmp_path), str(tmp_path / "o.gguf")])


def test_cli_force_overwrites(tmp_path, exported, capsys):
    from radlads.cli import main

    folder = exported["rwkv6"][0]
    out = tmp_path / "o.gguf"
    out.write_text("old")
    assert main(["export-gguf", folder, str(out), "--outtype", "f16", "--force"]) == 0
    assert "rwkv6qwen2, f16" in capsys.readouterr().out
    assert out.read_bytes()[:4] == b"GGUF"


# --------------------------------------------------------------------------------------------
# Serving: llama-cpp-python's OpenAI-compatible server on loopback
# --------------------------------------------------------------------------------------------


def test_openai_server_chat_matches_pytorch_greedy(tmp_path):
    from radlads import serve
    from radlads.gguf_export import export_gguf

    # vocabulary = the tokenizer's 259 tokens, so every greedy pick is a real token with a spelling
    folder, model = make_student(tmp_path / "s", "rwkv7", teacher_extra={"vocab_size": 259})
    # Only ASCII bytes can win the argmax (their head rows are random, the others' zero): random bytes
    # would form broken UTF-8, which llama-cpp-python holds back and generates past max_tokens for.
    with torch.no_grad():
        model.lm_head.weight[3 + 128 :] = 0
    save_model(model, tok_with_template(), folder)
    path = tmp_path / "s.gguf"
    export_gguf(folder, path, "f32", say=lambda *_: None)
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": "Say hi."}]
    # as llama-cpp-python does: render the template, tokenise with special tokens and no extra BOS
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)
    steps = 12
    expected_ids = torch_greedy(model, ids, steps)
    if tok.eos_token_id in expected_ids:
        expected_ids = expected_ids[: expected_ids.index(tok.eos_token_id)]
    expected = serve.bytes_text(tok, expected_ids)

    with serve.Server(path, n_ctx=512, threads=1, log=tmp_path / "server.log") as server:
        reply = server.chat(messages, max_tokens=steps)
        assert reply["object"] == "chat.completion"
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["choices"][0]["message"]["content"] == expected
        assert reply["usage"]["prompt_tokens"] == len(ids)
        assert reply["usage"]["completion_tokens"] == len(expected_ids) + (len(expected_ids) < steps)
        chunks = server.chat(messages, max_tokens=steps, stream=True)
        assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == expected
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert server.process.poll() is not None  # stopped


def test_bench_llama_cpp_backend_rows(exported, tmp_path, capsys):
    from radlads.cli import main

    student, teacher_like = exported["rwkv6"][2], exported["rwkv7"][2]
    out = tmp_path / "bench.json"
    assert main(["bench", str(student), "--vs", str(teacher_like), "--backend", "llama.cpp", "--contexts", "32,96",
                 "--decode-tokens", "3", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "llama.cpp" and report["summary"]["speedup_target"] == 3.0
    rows = report["models"][0]["rows"]
    assert [r["context"] for r in rows] == [32, 96]
    assert all(r["prefill_tokens_per_s"] > 0 and len(r["decode_ms"]) == 3 for r in rows)
    # a recurrent state does not grow with the context
    assert rows[0]["state_bytes"] == rows[1]["state_bytes"] > 0
    assert report["models"][0]["model_type"] == "rwkv6qwen2" and report["models"][0]["recurrent"]
    assert "ALL_F32" in capsys.readouterr().out
    assert "--backend llama.cpp measures .gguf files" in cli_error(
        capsys, ["bench", exported["rwkv6"][0], "--backend", "llama.cpp"])


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_reduced_types_load_and_stay_close(exported, tmp_path, outtype, one_thread):
    from radlads import llama_cpp_run
    from radlads.gguf_export import export_gguf

    folder, model, _ = exported["rwkv7"]
    path = tmp_path / f"{outtype}.gguf"
    export_gguf(folder, path, outtype, say=lambda *_: None)
    ids = prompt_ids()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp_run.eval_logits(llama_cpp_run.load(path, n_ctx=256, logits_all=True), ids)
    rel = float(np.abs(got - expected).max()) / float(np.abs(expected).max())
    assert 0 < rel < 0.05  # rounded, so not exact, but the same model
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9
