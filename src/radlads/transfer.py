"""Attention transfer: build a student from a teacher and copy every weight it can keep.

Embeddings, norms, MLPs, final norm and head are copied as they are. Each attention block's
q/k/v/o (with biases, and Qwen3's q/k norms) initialise the time-mix r/k/v/o: the receptance
asks the question the query asked, so the student starts from the teacher's notion of relevance.
K/V stay at the teacher's KV width and are repeated per group inside the time-mix (GQA).

radlads.convert.init_student runs it for `radlads init`.
"""

from __future__ import annotations

import re

import torch

from radlads.errors import RadladsError
from radlads.teachers import check_supported
from radlads.model.configuration_radlads import TIME_MIX_KINDS, RadladsConfig
from radlads.model.modeling_radlads import RadladsForCausalLM

# teacher parameter name (after "model.layers.N.") -> student name
_ATTN_RENAMES = {
    "self_attn.q_proj.": "time_mix.r_proj.",
    "self_attn.k_proj.": "time_mix.k_proj.",
    "self_attn.v_proj.": "time_mix.v_proj.",
    "self_attn.o_proj.": "time_mix.o_proj.",
    "self_attn.q_norm.": "time_mix.r_norm.",
    "self_attn.k_norm.": "time_mix.k_norm.",
}


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise RadladsError(f"teacher uses rope scaling {rope_type!r}; radlads supports only default RoPE so far")
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def student_config(teacher, arch: str = "rwkv7", attention_layers=(), teacher_spec: str | None = None,
                   **overrides) -> RadladsConfig:
    """The student's config: the teacher's shapes (read from its modules, so biases are exact)."""
    cfg = teacher.config.get_text_config() if hasattr(teacher.config, "get_text_config") else teacher.config
    check_supported(cfg)
    if arch not in TIME_MIX_KINDS:
        raise RadladsError(f"unknown --arch {arch!r}: choose one of {', '.join(TIME_MIX_KINDS)}")
    attn = teacher.model.layers[0].self_attn
    mlp = teacher.model.layers[0].mlp
    n_layers = cfg.num_hidden_layers
    bad = [i for i in attention_layers if not 0 <= int(i) < n_layers]
    if bad:
        raise RadladsError(f"attention layer indices {bad} out of range: the teacher has layers 0..{n_layers - 1}")
    values = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=n_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        head_dim=attn.q_proj.out_features // cfg.num_attention_heads,
        hidden_act=cfg.hidden_act,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=_rope_theta(cfg),
        attention_bias=attn.q_proj.bias is not None,
        attention_out_bias=attn.o_proj.bias is not None,
        mlp_bias=mlp.gate_proj.bias is not None,
        qk_norm=hasattr(attn, "q_norm"),
        tie_word_embeddings=bool(getattr(teacher.config, "tie_word_embeddings", False)),
        time_mix=arch,
        attention_layers=list(attention_layers),
        teacher=teacher_spec,
        teacher_model_type=cfg.model_type,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=getattr(cfg, "pad_token_id", None),
    )
    unknown = set(overrides) - set(RadladsConfig().to_dict())
    if unknown:
        raise RadladsError(f"unknown student option(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    try:
        return RadladsConfig(**values)
    except ValueError as e:
        raise RadladsError(str(e)) from e


def student_name(teacher_name: str) -> str:
    """Teacher parameter name -> student parameter name (the identity except attention)."""
    m = re.match(r"(model\.layers\.\d+\.)(.*)", teacher_name)
    if m:
        for old, new in _ATTN_RENAMES.items():
            if m.group(2).startswith(old):
                return m.group(1) + new + m.group(2)[len(old) :]
    return teacher_name


@torch.no_grad()
def transfer_weights(teacher, student: RadladsForCausalLM) -> list[str]:
    """Copy every teacher tensor into the student; returns the student names that were filled."""
    target = dict(student.named_parameters())
    filled = []
    for name, tensor in teacher.state_dict().items():
        if name == "lm_head.weight" and student.config.tie_word_embeddings:
            continue  # tied to the embedding, copied through it
        dest = student_name(name)
        if dest not in target:
            raise RadladsError(f"teacher tensor {name} has no place in the student (expected {dest})")
        if target[dest].shape != tensor.shape:
            raise RadladsError(f"shape mismatch for {name}: teacher {tuple(tensor.shape)}, student {tuple(target[dest].shape)}")
        target[dest].copy_(tensor)
        filled.append(dest)
    return filled


def build_student(teacher, arch: str = "rwkv7", attention_layers=(), teacher_spec: str | None = None,
                  seed: int = 0, **overrides) -> RadladsForCausalLM:
    """An attention-transferred student in the teacher's dtype, ready for stage 1.

    The new time-mix parameters' random initial values depend only on `seed`.
    """
    config = student_config(teacher, arch, attention_layers, teacher_spec, **overrides)
    dtype = next(teacher.parameters()).dtype
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        student = RadladsForCausalLM(config).to(dtype)
    transfer_weights(teacher, student)
    if config.tie_word_embeddings:
        student.tie_weights()
    return student.eval()
