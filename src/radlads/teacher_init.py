"""Fit a fresh student's new time-mix parameters to the teacher's attention before stage 1.

Attention transfer copies q/k/v/o, but the RWKV-only parameters start from generic values, and
with them the student's time-mix output is not yet the attention it replaces. Measured on
smollm2-135m (benchmarks/teacher_init_l2.py): the RAD-RWKV7 output is nearly orthogonal to the
teacher's (the LoRA gate σ(x·0)·G2 has random signs per channel), so stage 1 starts at the L2
of outputting zero; the RAD-RWKV6 output correlates with it but is ~2.5x too large (no softmax
normalisation), so stage 1 starts 7x above zero. Two corrections from a few teacher forward
passes over training text (never held-out text):

- decay: each head's mean attention distance d (softmax weights over keys at distance >= 1;
  the first position, where "sink" attention collects, is left out) gives the head's central
  per-step decay w = d / (1 + d): an exponential window with the same mean distance. The head's
  channels keep RWKV's spread of decays around that centre.
- gain: the gate starts as a positive constant (RWKV-7: σ(0)·G2 with G2's columns summing to 2,
  plus the usual small orthogonal part that breaks symmetry), and a per-head least-squares gain
  (teacher attention output ≈ Σ_h α_h · o_proj(head h's output)) is folded into o_proj's columns.

Both only move parameters stage 1 trains anyway; `student.teacher_init` turns them on.
"""

from __future__ import annotations

import math

import torch

from radlads.objectives import TeacherAttentionTap, time_mix_forward
from radlads.model.modeling_radlads import DECAY_SCALE, RWKV6TimeMix, RWKV7TimeMix, apply_rope, rope_cos_sin

MODES = ("none", "gain", "decay", "decay+gain", "auto")
# `auto` is the mode with the lowest held-out stage-1 L2 at initialisation for each architecture
# without GroupNorm (docs/recipe.md, "Initialisation from the teacher"): RWKV-7 3.17 with
# decay+gain against 3.89 with gain alone; RWKV-6 3.46 with gain against 3.96 with decay+gain.
AUTO_MODE = {"rwkv7": "decay+gain", "rwkv6": "gain"}


def resolve_mode(mode: str, arch: str) -> str:
    """The concrete mode `mode` stands for on `arch` (only `auto` depends on the architecture)."""
    return AUTO_MODE[arch] if mode == "auto" else mode
# Queries this early have too little history for a mean distance; their rows are not averaged.
MIN_HISTORY = 64
# Per-channel spread of the decay around a head's centre: RWKV-7 in logit space (its decay is
# exp(-0.606531·σ(w0))), RWKV-6 in log space (its decay is exp(-exp(w0))).
RWKV7_SPREAD, RWKV6_SPREAD = 2.0, 1.5


@torch.no_grad()
def attention_distances(attn, x: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int,
                        rope_theta: float) -> torch.Tensor:
    """Per query head: the mean distance to the keys it attends to (first position excluded)."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, num_heads, head_dim)
    k = attn.k_proj(x).view(B, T, num_kv_heads, head_dim)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = rope_cos_sin(torch.arange(T).unsqueeze(0).expand(B, T), head_dim, rope_theta, q.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k = k.repeat_interleave(num_heads // num_kv_heads, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) / math.sqrt(head_dim)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    start = min(MIN_HISTORY, T - 1)
    probs = probs[:, :, start:, 1:]  # queries with history; keys after the sink position
    distance = (torch.arange(start, T)[:, None] - torch.arange(1, T)[None, :]).clamp(min=0).float()
    probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
    return (probs * distance).sum(-1).mean(dim=(0, 2))


@torch.no_grad()
def set_decays(time_mix, distances: torch.Tensor) -> None:
    """Centre each head's channel decays on the per-step decay whose window has that mean distance."""
    H, D = time_mix.num_heads, time_mix.head_dim
    w = (distances / (1 + distances)).clamp(1e-4, 1 - 1e-6)
    if isinstance(time_mix, RWKV7TimeMix):
        # -log w = 0.606531·σ(w0): the decay cannot go below 0.545, so fast heads saturate there.
        s = (-torch.log(w) / DECAY_SCALE).clamp(1e-4, 1 - 1e-3)
        centre, spread = torch.log(s / (1 - s)), RWKV7_SPREAD
    elif isinstance(time_mix, RWKV6TimeMix):
        centre, spread = torch.log(-torch.log(w)), RWKV6_SPREAD  # -log w = exp(w0)
    else:
        return
    offsets = torch.linspace(-spread, spread, D)
    time_mix.w0.copy_((centre[:, None] + offsets[None, :]).reshape(H * D).to(time_mix.w0.dtype))


@torch.no_grad()
def set_positive_gate(time_mix) -> None:
    """RWKV-7's gate σ(x G1) G2 starts at ~1 in every channel instead of random-signed ~0.02."""
    if isinstance(time_mix, RWKV7TimeMix):
        time_mix.g2.add_(2.0 / time_mix.g2.shape[0])


@torch.no_grad()
def fit_gains(student, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
    """Per head, the least-squares gain of its share of o_proj's output, folded into o_proj."""
    captured: dict[int, torch.Tensor] = {}
    layers = student.model.layers
    hooks = [layer.time_mix.o_proj.register_forward_pre_hook(
        lambda module, args, i=i: captured.__setitem__(i, args[0].detach()))
        for i, layer in enumerate(layers) if isinstance(layer.time_mix, (RWKV7TimeMix, RWKV6TimeMix))]
    try:
        time_mix_forward(student, inputs)
    finally:
        for h in hooks:
            h.remove()
    for i, y in captured.items():
        tm = layers[i].time_mix
        H, D = tm.num_heads, tm.head_dim
        weight = tm.o_proj.weight  # [out, H * D]
        per_head = torch.einsum("nhd,ohd->nho", y.reshape(-1, H, D).float(), weight.view(-1, H, D).float())
        target = targets[i].reshape(-1, weight.shape[0]).float()
        if tm.o_proj.bias is not None:
            target = target - tm.o_proj.bias.float()
        gram = torch.einsum("nho,ngo->hg", per_head, per_head)
        ridge = 1e-6 * gram.diagonal().mean().clamp_min(1e-12)
        gains = torch.linalg.solve(gram + ridge * torch.eye(H), torch.einsum("nho,no->h", per_head, target))
        weight.view(-1, H, D).mul_(gains.view(1, H, 1).to(weight.dtype))


@torch.no_grad()
def initialise_from_teacher(student, teacher, batches: list[torch.Tensor], mode: str) -> None:
    """Apply `mode` (see MODES) to every time-mix layer, from the teacher's run over `batches`."""
    mode = resolve_mode(mode, student.config.time_mix)
    if mode == "none":
        return
    cfg = student.config
    tap = TeacherAttentionTap(teacher)
    try:
        teacher.model(input_ids=torch.cat(batches), use_cache=False)
        inputs, targets = tap.take()
    finally:
        tap.remove()
    time_mixes = [(i, layer.time_mix) for i, layer in enumerate(student.model.layers)
                  if isinstance(layer.time_mix, (RWKV7TimeMix, RWKV6TimeMix))]
    if "decay" in mode:
        for i, tm in time_mixes:
            distances = attention_distances(teacher.model.layers[i].self_attn, inputs[i], cfg.num_attention_heads,
                                            cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta)
            set_decays(tm, distances)
    if "gain" in mode:
        for _, tm in time_mixes:
            set_positive_gate(tm)
        fit_gains(student, inputs, targets)
