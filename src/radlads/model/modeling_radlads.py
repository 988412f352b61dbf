"""A radlads student: the teacher's decoder with each softmax attention replaced by an RWKV time-mix.

Embeddings, RMSNorms, MLPs, final norm and head are the teacher's, under the teacher's names, so
attention transfer is a plain state-dict copy. Each layer's `time_mix` is one of
  - RWKV7TimeMix  (RAD-RWKV7: generalised delta rule, value residual, LoRA gate, no token shift)
  - RWKV6TimeMix  (RAD-RWKV6: data-dependent token shift and decay, GLA state, sigmoid gate)
  - SoftmaxAttention (the teacher's own attention, kept for hybrid models)

Decoding carries a RadladsCache: a fixed-size recurrent state per time-mix layer (plus a KV cache
for any softmax layer), so memory and time per token do not grow with the context.

This folder is copied verbatim into every exported model; it imports only torch, transformers and
its sibling files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .configuration_radlads import RadladsConfig
from .ops import chunk_gla, chunk_rwkv7, recurrent_gla, recurrent_rwkv7

# exp(-0.606531 * sigmoid(x)) keeps every per-step decay in (0.545, 1): RAD-RWKV7's bounded decay.
DECAY_SCALE = 0.606531
# RAD-RWKV6 clamps the log-decay so a single step never forgets more than e^-5.
RWKV6_MIN_LOG_DECAY = -5.0
# A hybrid's KV buffers grow by at least this many positions at a time (see append_kv).
KV_CACHE_MIN_ROOM = 128


# --------------------------------------------------------------------------------------------
# Recurrent state
# --------------------------------------------------------------------------------------------


class RadladsCache:
    """Per-layer decoding state. Time-mix layers hold a constant-size state; softmax layers a KV cache.

    Layer entries are dicts: rwkv7 {"state"}, rwkv6 {"state", "shift"}, attention {"k", "v",
    "length"}, where k/v are buffers with room to grow and the int "length" counts their filled
    positions. `seen_tokens` counts the tokens already folded in.
    """

    is_compileable = False

    def __init__(self, num_layers: int):
        self.layers: list[dict[str, torch.Tensor] | None] = [None] * num_layers
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        # Tells transformers' generate() not to slice inputs itself; prepare_inputs_for_generation does.
        return [True] * len(self.layers)

    def nbytes(self) -> int:
        """Bytes held, a KV buffer's unfilled room included: that memory is allocated."""
        return sum(t.numel() * t.element_size() for layer in self.layers if layer
                   for t in layer.values() if isinstance(t, torch.Tensor))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            if layer:
                for key, t in layer.items():
                    if isinstance(t, torch.Tensor):
                        layer[key] = t.index_select(0, beam_idx.to(t.device))

    def __len__(self) -> int:
        return len(self.layers)


@dataclass
class RadladsOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: RadladsCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


# --------------------------------------------------------------------------------------------
# Building blocks shared with the teacher
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    def __init__(self, config: RadladsConfig):
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, :, None, :], emb.sin().to(dtype)[:, :, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; rotate-half convention, as in Llama/Qwen."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, T, Hkv, D] -> [B, T, Hkv * groups, D], each KV head serving `groups` query heads.

    expand + reshape is one copy; repeat_interleave builds an index tensor first (several ops,
    which a decode step pays in every layer).
    """
    if groups == 1:
        return x
    B, T, Hkv, D = x.shape
    return x.unsqueeze(3).expand(B, T, Hkv, groups, D).reshape(B, T, Hkv * groups, D)


def _lora(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None = None, inner=None):
    """bias + inner(x @ down) @ up, the bias added inside the second matmul (addmm)."""
    h = x @ down
    if inner is not None:
        h = inner(h)
    if bias is None:
        return h @ up
    return torch.addmm(bias, h.reshape(-1, h.shape[-1]), up).view(*h.shape[:-1], up.shape[-1])


def _orthogonal(rows: int, cols: int, gain: float) -> torch.Tensor:
    w = torch.empty(rows, cols)
    nn.init.orthogonal_(w, gain=gain)
    return w


class _Projections(nn.Module):
    """r/k/v/o shaped exactly like the teacher's q/k/v/o, so attention transfer is a weight copy."""

    def __init__(self, config: RadladsConfig):
        super().__init__()
        d, h, kv, hd = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.r_proj = nn.Linear(d, h * hd, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, kv * hd, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, kv * hd, bias=config.attention_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=config.attention_out_bias)
        if config.qk_norm:  # Qwen3 normalises q and k per head before RoPE
            self.r_norm = RMSNorm(hd, config.rms_norm_eps)
            self.k_norm = RMSNorm(hd, config.rms_norm_eps)
        self.qk_norm = config.qk_norm

    def rkv(self, xr: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor):
        B, T, _ = xr.shape
        r = self.r_proj(xr).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(xk).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(xv).view(B, T, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            r, k = self.r_norm(r), self.k_norm(k)
        return r, k, v


def _mask_padding(mask: torch.Tensor | None, *tensors: torch.Tensor):
    """Zero k/v (and shift inputs) at padded positions so padding never enters the state.

    A zero key and value leave a zero state zero, which makes left padding exact for a recurrence.
    """
    if mask is None:
        return tensors
    m = mask[:, -tensors[0].shape[1] :].to(tensors[0].dtype)
    return tuple(t * m.view(*m.shape, *([1] * (t.dim() - 2))) for t in tensors)


# --------------------------------------------------------------------------------------------
# Time-mix layers
# --------------------------------------------------------------------------------------------


class RWKV7TimeMix(_Projections):
    """RAD-RWKV7 time-mix.

    S_t = S_{t-1} (diag(w_t) - κ̂_tᵀ (a_t ⊙ κ̂_t)) + v_tᵀ k̃_t,   y_t = S_t r_t
    with w = exp(-0.606531 σ(w0 + tanh(x W1) W2)), a = σ(a0 + x A1 A2), κ̂ = normalize(k ⊙ k_k),
    k̃ = k ⊙ (1 + (a - 1) ⊙ k_a), value residual to the first time-mix layer's v, gate σ(x G1) G2.
    """

    def __init__(self, config: RadladsConfig, layer_idx: int, is_first: bool):
        super().__init__(config)
        self.layer_idx, self.is_first = layer_idx, is_first
        d, width = config.hidden_size, config.num_attention_heads * config.head_dim
        self.scale, self.chunk_size = config.read_scale, config.chunk_size
        self.use_rope, self.rope_theta = config.use_rope, config.rope_theta

        # Initial values follow RWKV-7 / RADLADS: decay speeds spread across channels and deepen
        # with depth; a = σ(0) = 0.5; removal-key scale 0.85; LoRA down-projections start at zero
        # so every data-dependent term starts constant, up-projections orthogonal × 0.1.
        depth = layer_idx / max(config.num_hidden_layers - 1, 1)
        n = torch.arange(width) / max(width - 1, 1)
        decay_speed = -7 + 5 * n ** (0.85 + 1.0 * depth**0.5)
        self.w0 = nn.Parameter(decay_speed + 0.5)
        self.w1 = nn.Parameter(torch.zeros(d, config.decay_lora_rank))
        self.w2 = nn.Parameter(_orthogonal(config.decay_lora_rank, width, 0.1))
        self.a0 = nn.Parameter(torch.zeros(width))
        self.a1 = nn.Parameter(torch.zeros(d, config.a_lora_rank))
        self.a2 = nn.Parameter(_orthogonal(config.a_lora_rank, width, 0.1))
        if not is_first:
            self.v0 = nn.Parameter(torch.ones(width))
            self.v1 = nn.Parameter(torch.zeros(d, config.v_lora_rank))
            self.v2 = nn.Parameter(_orthogonal(config.v_lora_rank, width, 0.1))
        self.g1 = nn.Parameter(torch.zeros(d, config.gate_lora_rank))
        self.g2 = nn.Parameter(_orthogonal(config.gate_lora_rank, width, 0.1))
        self.k_k = nn.Parameter(torch.full((width,), 0.85))
        self.k_a = nn.Parameter(torch.ones(width))
        self.ln_x = nn.GroupNorm(config.num_attention_heads, width, eps=64e-5) if config.use_groupnorm else None

    def forward(self, x, v_first=None, layer_state=None, position_ids=None, attention_mask=None, use_cache=False):
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        r, k, v = self.rkv(x, x, x)
        if self.use_rope:
            cos, sin = rope_cos_sin(position_ids, D, self.rope_theta, r.dtype)
            r, k = apply_rope(r, cos, sin), apply_rope(k, cos, sin)
        groups = H // self.num_kv_heads
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)

        w = -DECAY_SCALE * torch.sigmoid(_lora(x, self.w1, self.w2, self.w0, torch.tanh))
        a = torch.sigmoid(_lora(x, self.a1, self.a2, self.a0))
        g = _lora(x, self.g1, self.g2, inner=torch.sigmoid)
        if self.is_first:
            v_first = v
        else:
            mix = torch.sigmoid(_lora(x, self.v1, self.v2, self.v0)).view(B, T, H, D)
            v = torch.lerp(v, v_first, mix)  # v + (v_first - v)·mix

        w, a = w.view(B, T, H, D), a.view(B, T, H, D)
        kk = F.normalize(k * self.k_k.view(H, D), dim=-1)
        k = k * (1 + (a - 1) * self.k_a.view(H, D))
        k, v = _mask_padding(attention_mask, k, v)

        state = layer_state["state"] if layer_state else None
        if T == 1:
            y, state = recurrent_rwkv7(r, w, k, v, -kk, kk * a, self.scale, state, use_cache)
        else:
            y, state = chunk_rwkv7(r, w, k, v, -kk, kk * a, self.scale, state, use_cache, self.chunk_size)
        y = y.reshape(B, T, H * D)
        if self.ln_x is not None:
            y = self.ln_x(y.reshape(B * T, H * D)).view(B, T, H * D)
        out = self.o_proj((y * g).to(x.dtype))
        return out, v_first, ({"state": state} if use_cache else None)


class RWKV6TimeMix(_Projections):
    """RAD-RWKV6 time-mix: data-dependent token shift, data-dependent decay, GLA state, sigmoid gate.

    log w = max(-exp(w0 + tanh(x_w D1) D2), -5);  k ← k ⊙ (1 - w);  S_t = diag(w_t) S_{t-1} + k_tᵀ v_t.
    """

    MIXES = ("w", "k", "v", "r", "g")

    def __init__(self, config: RadladsConfig, layer_idx: int, is_first: bool):
        super().__init__(config)
        self.layer_idx = layer_idx
        d, width = config.hidden_size, config.num_attention_heads * config.head_dim
        self.scale, self.chunk_size = config.read_scale, config.chunk_size
        self.use_rope, self.rope_theta = config.use_rope, config.rope_theta
        rank = config.mix_lora_rank

        # Token-shift mixes start at zero so r/k/v at step 0 are exactly the transferred
        # teacher projections of the current token; the LoRA lets training open the shift.
        self.maa_x = nn.Parameter(torch.zeros(d))
        self.maa = nn.Parameter(torch.zeros(len(self.MIXES), d))
        self.maa_w1 = nn.Parameter(torch.zeros(d, len(self.MIXES) * rank))
        self.maa_w2 = nn.Parameter(torch.empty(len(self.MIXES), rank, d).uniform_(-0.01, 0.01))
        depth = layer_idx / max(config.num_hidden_layers - 1, 1)
        n = torch.arange(width) / max(width - 1, 1)
        self.w0 = nn.Parameter(-6 + 5 * n ** (0.7 + 1.3 * depth))
        self.w1 = nn.Parameter(torch.zeros(d, config.decay_lora_rank))
        self.w2 = nn.Parameter(torch.empty(config.decay_lora_rank, width).uniform_(-0.01, 0.01))
        self.g1 = nn.Parameter(torch.zeros(d, config.gate_lora_rank))
        self.g2 = nn.Parameter(_orthogonal(config.gate_lora_rank, width, 0.1))
        self.ln_x = nn.GroupNorm(config.num_attention_heads, width, eps=64e-5) if config.use_groupnorm else None

    def forward(self, x, v_first=None, layer_state=None, position_ids=None, attention_mask=None, use_cache=False):
        B, T, C = x.shape
        H, D = self.num_heads, self.head_dim
        (x,) = _mask_padding(attention_mask, x)
        prev = layer_state["shift"].unsqueeze(1) if layer_state else x.new_zeros(B, 1, C)
        shifted = torch.cat([prev, x[:, :-1]], dim=1)
        dx = shifted - x
        xxx = x + dx * self.maa_x
        lora = torch.tanh(xxx @ self.maa_w1).view(B, T, len(self.MIXES), -1)
        lora = torch.einsum("btmr,mrd->btmd", lora, self.maa_w2)
        xw, xk, xv, xr, xg = (x + dx * (self.maa[i] + lora[:, :, i]) for i in range(len(self.MIXES)))

        r, k, v = self.rkv(xr, xk, xv)
        if self.use_rope:
            cos, sin = rope_cos_sin(position_ids, D, self.rope_theta, r.dtype)
            r, k = apply_rope(r, cos, sin), apply_rope(k, cos, sin)
        groups = H // self.num_kv_heads
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
        log_w = -torch.exp(_lora(xw, self.w1, self.w2, self.w0, torch.tanh))
        log_w = log_w.clamp(min=RWKV6_MIN_LOG_DECAY).view(B, T, H, D)
        k = k * (1 - torch.exp(log_w))
        g = torch.sigmoid((xg @ self.g1) @ self.g2)

        state = layer_state["state"] if layer_state else None
        if T == 1:
            y, state = recurrent_gla(r, k, v, log_w, self.scale, state, use_cache)
        else:
            y, state = chunk_gla(r, k, v, log_w, self.scale, state, use_cache, self.chunk_size)
        y = y.reshape(B, T, H * D)
        if self.ln_x is not None:
            y = self.ln_x(y.reshape(B * T, H * D)).view(B, T, H * D)
        out = self.o_proj((y * g).to(x.dtype))
        new_state = {"state": state, "shift": x[:, -1].detach().clone()} if use_cache else None
        return out, v_first, new_state


def append_kv(layer_state: dict | None, k: torch.Tensor, v: torch.Tensor) -> dict:
    """Write k/v [B, kv_heads, T, D] after the cached positions, growing the buffers only now and then.

    Decoding one token must not copy the whole cache (a torch.cat per step is O(context)); the
    buffers grow by an eighth (at least KV_CACHE_MIN_ROOM positions), so a copy happens once every
    context/8 steps and at most an eighth of the memory is unused room.
    """
    past = layer_state["length"] if layer_state else 0
    need = past + k.shape[2]
    if layer_state is None or layer_state["k"].shape[2] < need:
        capacity = need + max(KV_CACHE_MIN_ROOM, need // 8)
        grown = {}
        for name, new in (("k", k), ("v", v)):
            buf = new.new_empty(new.shape[0], new.shape[1], capacity, new.shape[3])
            if past:
                buf[:, :, :past] = layer_state[name][:, :, :past]
            grown[name] = buf
        layer_state = grown
    layer_state["k"][:, :, past:need] = k
    layer_state["v"][:, :, past:need] = v
    layer_state["length"] = need
    return layer_state


def filled_kv(layer_state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the cached k/v positions, without the buffers' unfilled room."""
    n = layer_state["length"]
    return layer_state["k"][:, :, :n], layer_state["v"][:, :, :n]


class SoftmaxAttention(_Projections):
    """The teacher's own causal softmax attention (GQA, RoPE), kept in hybrid students."""

    def __init__(self, config: RadladsConfig, layer_idx: int, is_first: bool = False):
        super().__init__(config)
        self.layer_idx = layer_idx
        self.rope_theta = config.rope_theta

    def forward(self, x, v_first=None, layer_state=None, position_ids=None, attention_mask=None, use_cache=False):
        B, T, _ = x.shape
        q, k, v = self.rkv(x, x, x)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, T, D]
        if use_cache:
            k, v = filled_kv(layer_state := append_kv(layer_state, k, v))
        elif layer_state:  # read the past without writing to it, as the time-mix layers do
            past_k, past_v = filled_kv(layer_state)
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        S = k.shape[2]
        # Without padding, no mask tensor: SDPA then takes its fused kernels (an explicit mask sends
        # it down the slow math path). One query sees every cached key; a fresh prompt is causal.
        mask, causal = None, False
        if attention_mask is not None or (T > 1 and S > T):
            # Query i sits at absolute position S - T + i and may see keys 0..S - T + i.
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)[None, None]
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, -S:].bool()
        elif T > 1:
            causal = True
        # enable_gqa reads each KV head once for its group of query heads, instead of copying the
        # whole cache `groups` times with repeat_interleave at every step.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        out = self.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        return out, v_first, (layer_state if use_cache else None)


TIME_MIX_CLASSES = {"rwkv7": RWKV7TimeMix, "rwkv6": RWKV6TimeMix, "attention": SoftmaxAttention}


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------


class RadladsDecoderLayer(nn.Module):
    def __init__(self, config: RadladsConfig, layer_idx: int, is_first_time_mix: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.time_mix = TIME_MIX_CLASSES[config.layer_kind(layer_idx)](config, layer_idx, is_first_time_mix)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, v_first, layer_state, position_ids, attention_mask, use_cache):
        mixed, v_first, layer_state = self.time_mix(
            self.input_layernorm(x), v_first, layer_state, position_ids, attention_mask, use_cache
        )
        x = x + mixed
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, v_first, layer_state


class RadladsPreTrainedModel(PreTrainedModel):
    config_class = RadladsConfig
    config: RadladsConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RadladsDecoderLayer"]
    _is_stateful = True

    def _init_weights(self, module):
        # Real students are initialised by attention transfer and hand-set time-mix values in
        # their constructors; only plain Linear/Embedding weights get the usual normal init here.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)


class RadladsModel(RadladsPreTrainedModel):
    def __init__(self, config: RadladsConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        first = next((i for i in range(config.num_hidden_layers) if config.layer_kind(i) != "attention"), -1)
        self.layers = nn.ModuleList(
            RadladsDecoderLayer(config, i, is_first_time_mix=(i == first)) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                cache: RadladsCache | None = None, use_cache: bool = False, output_hidden_states: bool = False):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if use_cache and not isinstance(cache, RadladsCache):
            cache = RadladsCache(len(self.layers))
        past = cache.seen_tokens if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device).unsqueeze(0).expand(B, T)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: skip the masking work entirely

        hidden_states = [x] if output_hidden_states else None
        v_first = None
        for i, layer in enumerate(self.layers):
            layer_state = cache.layers[i] if cache is not None else None
            if self.gradient_checkpointing and self.training:
                x, v_first, layer_state = torch.utils.checkpoint.checkpoint(
                    layer, x, v_first, layer_state, position_ids, attention_mask, use_cache, use_reentrant=False
                )
            else:
                x, v_first, layer_state = layer(x, v_first, layer_state, position_ids, attention_mask, use_cache)
            if use_cache:
                cache.layers[i] = layer_state
            if output_hidden_states:
                hidden_states.append(x)
        if use_cache:
            cache.seen_tokens += T
        return self.norm(x), cache, hidden_states


class RadladsForCausalLM(RadladsPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RadladsConfig):
        super().__init__(config)
        self.model = RadladsModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state is our own RadladsCache, made in forward

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, output_hidden_states=False,
                return_dict=True, **kwargs):
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        hidden, cache, hidden_states = self.model(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, output_hidden_states
        )
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        cache = cache if use_cache else None
        return RadladsOutput(loss=loss, logits=logits, cache=cache,
                             hidden_states=tuple(hidden_states) if hidden_states else None)

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, use_cache=True, **kwargs):
        cache = cache if cache is not None else past_key_values
        if not isinstance(cache, RadladsCache):
            cache = None  # e.g. a DynamicCache some transformers versions create by default
        inputs = {"cache": cache, "attention_mask": attention_mask, "use_cache": use_cache}
        if cache is not None and cache.seen_tokens > 0:
            inputs["input_ids"] = input_ids[:, cache.seen_tokens :]  # the state already holds the rest
        elif inputs_embeds is not None:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def _reorder_cache(self, cache, beam_idx):
        cache.reorder_cache(beam_idx)
        return cache


__all__ = ["RadladsCache", "RadladsForCausalLM", "RadladsModel", "RadladsPreTrainedModel", "RadladsOutput"]
