"""Write a radlads student as a GGUF file that llama.cpp runs (`radlads export-gguf`).

rwkv7 students become llama.cpp's `arwkv7` architecture, rwkv6 students `rwkv6qwen2`; the file is
written with the `gguf` package (llama.cpp's own writer). Every student tensor is mapped onto the
names and shapes llama.cpp's loader expects (src/models/arwkv7.cpp, rwkv6qwen2.cpp in the
llama.cpp tree), and our variants are expressed exactly in llama.cpp's graph:

  - no token shift (rwkv7)        -> zero `time_mix_lerp_fused` coefficients
  - no bonus term (rwkv7)         -> zero `time_mix_r_k`
  - GQA k/v (rwkv7)               -> k/v projections repeated to full width (arwkv7 has no GQA);
                                     rwkv6qwen2 has GQA and gets the narrow ones plus head_count_kv
  - first layer's v-residual LoRA -> zeros (llama.cpp requires the tensors, never uses them)
  - the read-out scale            -> folded into the receptance projection (and its bias)
  - rwkv6's low-rank gate g1 g2   -> one full gate matrix (g1 g2)ᵀ
  - tied embeddings               -> written out again as output.weight

What llama.cpp's graphs cannot compute (hybrid softmax layers, RoPE on r/k, r/k qk-norm, biases the
graph lacks, rwkv6 GroupNorm, an active rwkv6 decay clamp, non-SiLU MLPs) is refused with one
line (RadladsError) before anything is written. The file is written beside OUT and renamed into
place, so a failure never leaves a partial file.

The tokenizer and chat template come from the teacher: a GGUF teacher's `tokenizer.*` keys are
copied verbatim; otherwise the student folder's Hugging Face tokenizer is written as a GPT-2-style
BPE vocabulary (tokens, types, merges, special ids, chat template) as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from radlads.errors import RadladsError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_ARCH = {"rwkv7": "arwkv7", "rwkv6": "rwkv6qwen2"}
CONTEXT_LENGTH = 1048576  # what llama.cpp's RWKV converters write: an RNN has no context limit
# ggml-cpu's rwkv_wkv7 SIMD loop walks a head GGML_F32_STEP floats at a time (32 with AVX2, 64 with
# AVX-512) with no remainder loop for the state rows: smaller heads read their neighbours' values
# (measured: head size 16 and 32 give wrong logits on this AVX-512 machine, 64 is exact).
WKV7_HEAD_MULTIPLE = 64
RWKV6_CLAMP_TOLERANCE = 1e-3  # relative max |Δlogit| the missing rwkv6 decay clamp may cause


def _qtypes():
    import gguf

    Q = gguf.GGMLQuantizationType
    F = gguf.LlamaFileType
    return {"f32": (Q.F32, F.ALL_F32), "f16": (Q.F16, F.MOSTLY_F16),
            "bf16": (Q.BF16, F.MOSTLY_BF16), "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0)}


# --------------------------------------------------------------------------------------------
# What llama.cpp can represent
# --------------------------------------------------------------------------------------------


def check_exportable(config) -> str:
    """The GGUF architecture for this student config, or RadladsError naming what llama.cpp lacks."""
    kind = config.time_mix
    if kind not in GGUF_ARCH:
        raise RadladsError(f"time_mix {kind!r} has no llama.cpp architecture: export-gguf handles rwkv7 and rwkv6")
    arch = GGUF_ARCH[kind]
    if config.attention_layers:
        raise RadladsError(f"hybrid softmax layers {config.attention_layers} cannot be exported: llama.cpp's {arch} "
                           "graph has recurrent layers only; convert without --attention-layers, or run it in PyTorch")
    if config.use_rope:
        raise RadladsError(f"RoPE on r/k (use_rope) is not in llama.cpp's {arch} graph; convert without --use-rope, "
                           "or run it in PyTorch")
    if config.qk_norm:
        raise RadladsError(f"per-head r/k RMSNorm (qk_norm, from a Qwen3 teacher) is not in llama.cpp's {arch} graph; "
                           "run it in PyTorch")
    width = config.num_attention_heads * config.head_dim
    if width != config.hidden_size:
        raise RadladsError(f"heads x head_dim = {width} differs from hidden_size {config.hidden_size}: llama.cpp's "
                           f"{arch} derives the head count from hidden_size / head size; run it in PyTorch")
    if config.hidden_act != "silu":
        raise RadladsError(f"MLP activation {config.hidden_act!r}: llama.cpp's {arch} graph uses SiLU; run it in PyTorch")
    if config.mlp_bias:
        raise RadladsError(f"MLP biases (mlp_bias) are not in llama.cpp's {arch} graph; run it in PyTorch")
    if config.attention_out_bias:
        raise RadladsError(f"an output-projection bias (attention_out_bias) is not in llama.cpp's {arch} graph; "
                           "run it in PyTorch")
    if kind == "rwkv7" and config.head_dim % WKV7_HEAD_MULTIPLE:
        raise RadladsError(f"head size {config.head_dim}: llama.cpp's CPU wkv7 kernel steps through a head "
                           f"{WKV7_HEAD_MULTIPLE} floats at a time (AVX-512) and reads past smaller or ragged heads, "
                           f"so arwkv7 needs a head size that is a multiple of {WKV7_HEAD_MULTIPLE}; run it in PyTorch")
    if kind == "rwkv7" and config.attention_bias:
        raise RadladsError("r/k/v biases (attention_bias, e.g. from a Qwen2 teacher) are not in llama.cpp's arwkv7 "
                           "graph; convert with --arch rwkv6 (rwkv6qwen2 has them), or run it in PyTorch")
    if kind == "rwkv6" and config.use_groupnorm:
        raise RadladsError("GroupNorm on the rwkv6 time-mix output (use_groupnorm) is not in llama.cpp's rwkv6qwen2 "
                           "graph; convert without --use-groupnorm, or run it in PyTorch")
    return arch


def _rwkv6_clamp_bound(model) -> list[int]:
    """Layers where the rwkv6 decay clamp (log w >= -5) can be active for some input.

    log w = -exp(w0 + tanh(x D1) D2) and |tanh| <= 1, so w0[c] + sum_j |D2[j, c]| bounds the exponent
    of channel c; below ln 5 the clamp never acts and llama.cpp (which has no clamp) is exact.
    """
    from radlads.model.modeling_radlads import RWKV6_MIN_LOG_DECAY

    limit = math.log(-RWKV6_MIN_LOG_DECAY)
    layers = []
    for i, layer in enumerate(model.model.layers):
        tm = layer.time_mix
        bound = tm.w0.detach().float() + tm.w2.detach().float().abs().sum(0)
        if float(bound.max()) > limit:
            layers.append(i)
    return layers


@torch.no_grad()
def _rwkv6_clamp_effect(model, tokens: int = 256) -> float:
    """max |Δlogit| / max |logit| between the student with and without its decay clamp on random ids."""
    import radlads.model.modeling_radlads as modeling

    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    clamped = model(ids, use_cache=False).logits.float()
    saved = modeling.RWKV6_MIN_LOG_DECAY
    modeling.RWKV6_MIN_LOG_DECAY = -math.inf
    try:
        free = model(ids, use_cache=False).logits.float()
    finally:
        modeling.RWKV6_MIN_LOG_DECAY = saved
    return float((clamped - free).abs().max() / clamped.abs().max().clamp(min=1e-30))


def check_rwkv6_clamp(model) -> str | None:
    """None when the missing clamp cannot matter; a note when it can but did not on a probe; else refuse."""
    layers = _rwkv6_clamp_bound(model)
    if not layers:
        return None
    effect = _rwkv6_clamp_effect(model)
    if effect > RWKV6_CLAMP_TOLERANCE:
        raise RadladsError(f"the rwkv6 decay clamp (log w >= -5, layers {layers}) changes this student's logits by "
                           f"{effect:.2g} x their max magnitude (tolerance {RWKV6_CLAMP_TOLERANCE:g}) and llama.cpp's "
                           "rwkv6qwen2 graph has no clamp; run it in PyTorch")
    return (f"note: the rwkv6 decay clamp may act in layers {layers}; on a 256-token random probe it changes "
            f"logits by {effect:.2g} x their max (tolerance {RWKV6_CLAMP_TOLERANCE:g}), so exported without it")


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().contiguous().numpy()


def _expand_heads(weight: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """A [kv_heads*D, d] projection repeated per GQA group to [kv_heads*groups*D, d] (head kv*groups+g)."""
    if groups == 1:
        return weight
    rows, cols = weight.shape
    return weight.view(kv_heads, rows // kv_heads, cols).repeat_interleave(groups, dim=0).reshape(-1, cols)


def _common_tensors(model) -> list[tuple[str, torch.Tensor]]:
    inner = model.model
    return [("token_embd.weight", inner.embed_tokens.weight),
            ("output_norm.weight", inner.norm.weight),
            ("output.weight", model.lm_head.weight)]  # tied: the same values, written out


def _ffn_tensors(i: int, layer) -> list[tuple[str, torch.Tensor]]:
    return [(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight),
            (f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight),
            (f"blk.{i}.ffn_gate.weight", layer.mlp.gate_proj.weight),
            (f"blk.{i}.ffn_up.weight", layer.mlp.up_proj.weight),
            (f"blk.{i}.ffn_down.weight", layer.mlp.down_proj.weight)]


def rwkv7_tensors(model) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor in numpy/row-major order) for an rwkv7 student as llama.cpp's arwkv7 loads it.

    GGUF shapes are ggml's {ne0, ne1, ...} reversed: a LoRA down-projection our code stores as
    [d, rank] (x @ w1) is ggml {d, rank} = numpy [rank, d], i.e. transposed.
    """
    c = model.config
    d, H, D, kv = c.hidden_size, c.num_attention_heads, c.head_dim, c.num_key_value_heads
    out = _common_tensors(model)
    zeros = torch.zeros
    for i, layer in enumerate(model.model.layers):
        tm, p = layer.time_mix, f"blk.{i}"
        out += _ffn_tensors(i, layer)
        out += [(f"{p}.time_mix_w0.weight", tm.w0), (f"{p}.time_mix_w1.weight", tm.w1.T),
                (f"{p}.time_mix_w2.weight", tm.w2.T),
                (f"{p}.time_mix_a0.weight", tm.a0), (f"{p}.time_mix_a1.weight", tm.a1.T),
                (f"{p}.time_mix_a2.weight", tm.a2.T),
                (f"{p}.time_mix_g1.weight", tm.g1.T), (f"{p}.time_mix_g2.weight", tm.g2.T),
                (f"{p}.time_mix_k_k.weight", tm.k_k), (f"{p}.time_mix_k_a.weight", tm.k_a),
                (f"{p}.time_mix_r_k.weight", zeros(H * D)),  # no bonus term
                # r, w, k, v, a, g token-shift lerps: the student has no token shift
                (f"{p}.time_mix_lerp_fused.weight", zeros(6, 1, 1, d)),
                # y = scale · S r: the scale goes into r (r is used nowhere else, r_k being zero)
                (f"{p}.time_mix_receptance.weight", tm.r_proj.weight * tm.scale),
                (f"{p}.time_mix_key.weight", _expand_heads(tm.k_proj.weight, kv, H // kv)),
                (f"{p}.time_mix_value.weight", _expand_heads(tm.v_proj.weight, kv, H // kv)),
                (f"{p}.time_mix_output.weight", tm.o_proj.weight)]
        if tm.is_first:  # llama.cpp requires v0/v1/v2 on layer 0 (at the a-LoRA's rank) and never reads them
            out += [(f"{p}.time_mix_v0.weight", zeros(H * D)), (f"{p}.time_mix_v1.weight", zeros(c.a_lora_rank, d)),
                    (f"{p}.time_mix_v2.weight", zeros(H * D, c.a_lora_rank))]
        else:
            out += [(f"{p}.time_mix_v0.weight", tm.v0), (f"{p}.time_mix_v1.weight", tm.v1.T),
                    (f"{p}.time_mix_v2.weight", tm.v2.T)]
        if tm.ln_x is not None:
            out += [(f"{p}.time_mix_ln.weight", tm.ln_x.weight), (f"{p}.time_mix_ln.bias", tm.ln_x.bias)]
    return out


def rwkv6_tensors(model) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for an rwkv6 student as llama.cpp's rwkv6qwen2 loads it (the "qrwkv" path:
    no time_mix_first, sigmoid gate, k ← k(1 - w), GLA with scale head_size^-0.5)."""
    c = model.config
    D, rank = c.head_dim, c.mix_lora_rank
    out = _common_tensors(model)
    for i, layer in enumerate(model.model.layers):
        tm, p = layer.time_mix, f"blk.{i}"
        ratio = tm.scale / D**-0.5  # llama.cpp's GLA reads out at head_size^-0.5; the rest goes into r
        out += _ffn_tensors(i, layer)
        out += [(f"{p}.time_mix_lerp_x.weight", tm.maa_x.view(1, 1, -1)),
                # w, k, v, r, g: our MIXES order is the graph's view order
                (f"{p}.time_mix_lerp_fused.weight", tm.maa.view(5, 1, 1, -1)),
                (f"{p}.time_mix_w1.weight", tm.maa_w1.T),  # ggml {d, 5·rank}
                (f"{p}.time_mix_w2.weight", tm.maa_w2.transpose(1, 2)),  # ggml {rank, d, 5}
                (f"{p}.time_mix_decay.weight", tm.w0),
                (f"{p}.time_mix_decay_w1.weight", tm.w1.T), (f"{p}.time_mix_decay_w2.weight", tm.w2.T),
                (f"{p}.time_mix_receptance.weight", tm.r_proj.weight * ratio),
                (f"{p}.time_mix_key.weight", tm.k_proj.weight), (f"{p}.time_mix_value.weight", tm.v_proj.weight),
                (f"{p}.time_mix_gate.weight", (tm.g1 @ tm.g2).T),  # σ(x g1 g2) = σ(G x), G = (g1 g2)ᵀ
                (f"{p}.time_mix_output.weight", tm.o_proj.weight)]
        assert tm.maa_w1.shape[1] == 5 * rank
        if tm.r_proj.bias is not None:
            out += [(f"{p}.time_mix_receptance.bias", tm.r_proj.bias * ratio),
                    (f"{p}.time_mix_key.bias", tm.k_proj.bias), (f"{p}.time_mix_value.bias", tm.v_proj.bias)]
    return out


def _keep_f32(name: str, array: np.ndarray, arch: str) -> bool:
    """Tensors llama.cpp's converter never quantises: 1-D ones, norms, and the RWKV LoRAs/lerps it lists."""
    if array.ndim <= 1 or np.prod(array.shape[:-1]) == 1 or name.endswith("_norm.weight") or name.endswith(".bias"):
        return True
    kept = ("time_mix_w1.weight", "time_mix_w2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
            "time_mix_lerp_fused.weight", "time_mix_first.weight")
    return name.endswith(kept)


def encode(name: str, array: np.ndarray, outtype: str, arch: str, keep_f32: tuple[str, ...] = ()):
    """(data, raw ggml type or None) for one tensor at the requested output type."""
    import gguf

    qtype, _ = _qtypes()[outtype]
    if outtype == "f32" or _keep_f32(name, array, arch) or any(k in name for k in keep_f32):
        return array.astype(np.float32), None
    if outtype == "f16":
        return array.astype(np.float16), None
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:  # a row length the block size does not divide: F16, as llama.cpp's converter does
        return array.astype(np.float16), None


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _teacher_gguf(config) -> Path | None:
    """The teacher's GGUF file if the student came from one (a preset or a .gguf path), else None."""
    spec = getattr(config, "teacher", None)
    if not spec:
        return None
    from radlads.teachers import PRESET_SOURCES, preset_gguf, resolve_teacher

    try:
        resolved = resolve_teacher(spec)
    except RadladsError:
        return None
    if resolved.kind == "preset" and spec in PRESET_SOURCES:
        return preset_gguf(spec)
    if resolved.kind == "gguf":
        return resolved.path / resolved.gguf_file
    return None


def copy_gguf_tokenizer(writer, source: Path) -> int:
    """Copy every tokenizer.* key (vocabulary, merges, special ids, chat template) from a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(source)
    n = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
        n += 1
    return n


def write_hf_tokenizer(writer, folder: Path, vocab_size: int) -> None:
    """A Hugging Face tokenizer.json (BPE or WordLevel) as llama.cpp's GPT-2-style vocabulary."""
    import gguf

    spec = json.loads((folder / "tokenizer.json").read_text())
    model = spec["model"]
    if model.get("type") not in ("BPE", "WordLevel"):
        raise RadladsError(f"the teacher's tokenizer is {model.get('type')}: export-gguf writes BPE/byte-level "
                           "vocabularies only; convert from a GGUF teacher to copy its tokenizer")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: tok for tok, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    tokens, types = [], []
    T = gguf.TokenType
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(T.CONTROL if added.get(i, {}).get("special") else
                         T.USER_DEFINED if i in added else T.NORMAL)
    merges = model.get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    if not merges:
        # llama.cpp's BPE loader requires the key; a merge whose result is not a token never applies
        # (pieces not in the vocabulary fall back to their bytes), so tokenisation is unchanged.
        merges = [f"{tokens[j]} {tokens[j]}" for j in range(len(tokens)) if types[j] == T.NORMAL][:1]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)


# --------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------


def find_student(run: str | Path) -> Path:
    """The exported student inside RUN (a run folder after its last stage is a student folder)."""
    from radlads.loading import is_student_dir

    path = Path(run)
    if is_student_dir(path):
        return path
    if not path.exists():
        raise RadladsError(f"{run} does not exist")
    if (path / "run.yaml").is_file():
        finals = sorted(path.glob("checkpoints/stage*/final/config.json"))
        hint = f" (its latest finished stage is {finals[-1].parent})" if finals else ""
        raise RadladsError(f"{run} is a run folder without an exported student yet{hint}: finish the run, "
                           "or pass a student folder")
    raise RadladsError(f"{run} is not a radlads student folder (no config.json with model_type radlads)")


def _temp_beside(out: Path) -> Path:
    """An empty file beside `out` to write into and rename over it, with the usual permissions."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes it private; a model file is meant to be shared
    return Path(name)


def _checked_output(out: str | Path, outtype: str, force: bool) -> Path:
    """OUT as a Path, once the type is known and writing there is allowed."""
    if outtype not in OUTTYPES:
        raise RadladsError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    out = Path(out)
    if out.exists() and not force:
        raise RadladsError(f"{out} exists: pass --force to overwrite it")
    if not out.resolve().parent.is_dir():
        raise RadladsError(f"folder {out.resolve().parent} does not exist")
    return out


def export_gguf(run: str | Path, out: str | Path, outtype: str = "f32", force: bool = False,
                say=print, keep_f32: tuple[str, ...] = ()) -> dict:
    """Write RUN's student to OUT as GGUF; returns a summary (arch, tensors, bytes, notes)."""
    import gguf

    from radlads.loading import load_student

    out = _checked_output(out, outtype, force)
    folder = find_student(run)
    from radlads.model.configuration_radlads import RadladsConfig

    config = RadladsConfig.from_pretrained(folder)
    arch = check_exportable(config)
    model = load_student(folder, torch.float32, exported_code=False)
    notes = []
    if config.time_mix == "rwkv6":
        note = check_rwkv6_clamp(model)
        if note:
            notes.append(note)
    tensors = rwkv7_tensors(model) if config.time_mix == "rwkv7" else rwkv6_tensors(model)
    _, ftype = _qtypes()[outtype]

    tmp = _temp_beside(out)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        c = config
        writer.add_name(Path(folder).resolve().name)
        writer.add_context_length(CONTEXT_LENGTH)
        writer.add_embedding_length(c.hidden_size)
        writer.add_block_count(c.num_hidden_layers)
        writer.add_feed_forward_length(c.intermediate_size)
        writer.add_layer_norm_rms_eps(c.rms_norm_eps)
        writer.add_wkv_head_size(c.head_dim)
        writer.add_token_shift_count(1)
        writer.add_head_count(0)  # required by llama.cpp, unused by the RWKV graphs
        writer.add_file_type(ftype)
        if arch == "arwkv7":
            writer.add_decay_lora_rank(c.decay_lora_rank)
            writer.add_iclr_lora_rank(c.a_lora_rank)
            writer.add_value_residual_mix_lora_rank(c.v_lora_rank)
            writer.add_gate_lora_rank(c.gate_lora_rank)
        else:
            writer.add_time_mix_extra_dim(c.mix_lora_rank)
            writer.add_time_decay_extra_dim(c.decay_lora_rank)
            writer.add_head_count_kv(c.num_key_value_heads)
        source = _teacher_gguf(config)
        if source is not None:
            copy_gguf_tokenizer(writer, source)
            tokenizer_from = f"copied from {source.name}"
        else:
            write_hf_tokenizer(writer, Path(folder), c.vocab_size)
            tokenizer_from = "written from the student folder's tokenizer.json"
        nbytes = 0
        for name, t in tensors:
            data, raw = encode(name, _np(t), outtype, arch, keep_f32)
            writer.add_tensor(name, data, raw_dtype=raw)
            nbytes += data.nbytes
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for note in notes:
        say(note)
    return {"arch": arch, "outtype": outtype, "tensors": len(tensors), "tensor_bytes": nbytes,
            "file_bytes": out.stat().st_size, "tokenizer": tokenizer_from, "student": str(folder), "notes": notes}


def requantize_gguf(source: str | Path, out: str | Path, outtype: str = "q8_0", force: bool = False) -> dict:
    """Re-quantise an existing GGUF (e.g. the teacher's) with llama.cpp's own quantiser.

    This gives a teacher at the student's weight type, so a speed comparison is at equal weight
    bytes. Needs llama-cpp-python (the `gguf` extra). Already-quantised weights are dequantised and
    quantised again (llama.cpp's allow_requantize); the result is no better than the source.
    """
    out = _checked_output(out, outtype, force)
    try:
        import llama_cpp
    except ImportError:
        raise RadladsError("re-quantising a GGUF needs llama-cpp-python: pip install -e '.[gguf]'") from None
    ftype = {"f32": llama_cpp.LLAMA_FTYPE_ALL_F32, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
             "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[outtype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    tmp = _temp_beside(out)
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RadladsError(f"llama.cpp could not re-quantise {source} (code {rc})")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    import gguf

    reader = gguf.GGUFReader(out)
    arch = reader.fields["general.architecture"].contents()
    return {"arch": arch, "outtype": outtype, "tensors": len(reader.tensors), "file_bytes": out.stat().st_size,
            "tokenizer": f"kept from {Path(source).name}"}
