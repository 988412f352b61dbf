"""Configuration of a radlads student: the teacher's shape plus the time-mix hyperparameters.

This folder (configuration, modeling, ops) is copied verbatim into every exported model, so it
imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

TIME_MIX_KINDS = ("rwkv7", "rwkv6")


def _lora_rank(width: int, factor: float, power: float) -> int:
    # RWKV-7's rule of thumb for LoRA widths: grows sub-linearly with the channel count,
    # rounded to a multiple of 32 and never below 32.
    return max(32, int(round(factor * width**power / 32) * 32))


class RadladsConfig(PretrainedConfig):
    r"""Every hyperparameter of a radlads student: the teacher's shape plus the time-mix's own.

    `radlads.transfer.student_config` fills the teacher-shaped fields from the teacher, so a student
    built by `radlads init` / `radlads convert` matches its teacher exactly; the defaults below are
    SmolLM2-135M's shape. Like every `PretrainedConfig`, it is saved as config.json and accepts the
    base class's keyword arguments (`**kwargs`).

    Args:
        vocab_size (`int`, *optional*, defaults to 32000):
            Number of tokens in the vocabulary: rows of the embedding and of the LM head.
        hidden_size (`int`, *optional*, defaults to 576):
            Width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 1536):
            Width of the MLP's gate and up projections.
        num_hidden_layers (`int`, *optional*, defaults to 30):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 9):
            Heads of each time-mix (the teacher's query heads): r and the recurrent state have this many.
        num_key_value_heads (`int`, *optional*, defaults to 3):
            The teacher's key/value heads (GQA): k and v are projected at this width and repeated
            per group inside the time-mix. None means num_attention_heads. num_attention_heads must be
            a multiple of it.
        head_dim (`int`, *optional*):
            Width of one head; None means hidden_size // num_attention_heads (Qwen3 sets it apart).
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            The MLP's activation (a key of transformers' ACT2FN).
        rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every RMSNorm (and of Qwen3's q/k norms).
        max_position_embeddings (`int`, *optional*, defaults to 8192):
            The teacher's trained context, kept for reference and for softmax layers of a hybrid;
            the recurrent time-mix itself has no context limit.
        rope_theta (`float`, *optional*, defaults to 10000.0):
            RoPE base of the teacher, used by kept softmax layers and, with use_rope, by the time-mix.
        attention_bias (`bool`, *optional*, defaults to `False`):
            Whether the r/k/v projections have biases (the teacher's q/k/v do, e.g. Qwen2).
        attention_out_bias (`bool`, *optional*, defaults to `False`):
            Whether the output projection has a bias (the teacher's o_proj does).
        mlp_bias (`bool`, *optional*, defaults to `False`):
            Whether the MLP's projections have biases.
        qk_norm (`bool`, *optional*, defaults to `False`):
            Per-head RMSNorm on r and k before RoPE, as Qwen3 normalises q and k.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Whether the LM head shares the embedding's weights.
        time_mix (`str`, *optional*, defaults to `"rwkv7"`):
            What replaces softmax attention: `"rwkv7"` (RAD-RWKV7, generalised delta rule) or
            `"rwkv6"` (RAD-RWKV6, data-dependent token shift and decay, GLA state).
        attention_layers (`list[int]`, *optional*, defaults to `()`):
            Indices of layers that keep the teacher's softmax attention (a hybrid student).
        use_rope (`bool`, *optional*, defaults to `False`):
            Apply the teacher's RoPE to r and k in the time-mix.
        use_groupnorm (`bool`, *optional*, defaults to `False`):
            Per-head GroupNorm on the time-mix output before the gate.
        attn_scale (`float`, *optional*):
            Multiplier on the recurrent read-out; None means head_dim ** -0.5, the teacher's softmax
            temperature, so transferred q/k keep their meaning.
        decay_lora_rank (`int`, *optional*):
            Rank of the data-dependent decay's LoRA (w1/w2, both time-mixes); None means RWKV-7's
            width-based default (see `_lora_rank`).
        a_lora_rank (`int`, *optional*):
            Rank of RWKV-7's in-context learning-rate LoRA (a1/a2); None: width-based default.
        v_lora_rank (`int`, *optional*):
            Rank of RWKV-7's value-residual mix LoRA (v1/v2); None: width-based default.
        gate_lora_rank (`int`, *optional*):
            Rank of the output gate's LoRA (g1/g2, both time-mixes); None: width-based default.
        mix_lora_rank (`int`, *optional*, defaults to 32):
            Rank of RWKV-6's data-dependent token-shift LoRA (maa_w1/maa_w2), per mixed input.
        chunk_size (`int`, *optional*, defaults to 16):
            Tokens per chunk of the chunked (prefill and training) kernels; the step-by-step forms
            decode one token at a time.
        teacher (`str`, *optional*):
            The teacher spec the student was converted from (a record; not used by the model).
        teacher_model_type (`str`, *optional*):
            The teacher's `model_type` (llama, mistral, qwen2, qwen3), also a record.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal init of plain Linear and Embedding weights; attention
            transfer overwrites those, the time-mix parameters have their own initial values.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether an eval-mode forward returns the recurrent cache (RadladsCache) by default.
        bos_token_id (`int`, *optional*):
            Beginning-of-sequence token id (the teacher's).
        eos_token_id (`int` or `list[int]`, *optional*):
            End-of-sequence token id(s) (the teacher's).
        pad_token_id (`int`, *optional*):
            Padding token id (the teacher's); also the embedding's padding_idx.
    """

    model_type = "radlads"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 576,
        intermediate_size: int = 1536,
        num_hidden_layers: int = 30,
        num_attention_heads: int = 9,
        num_key_value_heads: int = 3,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-5,
        max_position_embeddings: int = 8192,
        rope_theta: float = 10000.0,
        attention_bias: bool = False,
        attention_out_bias: bool = False,
        mlp_bias: bool = False,
        qk_norm: bool = False,
        tie_word_embeddings: bool = False,
        time_mix: str = "rwkv7",
        attention_layers: list[int] | tuple[int, ...] = (),
        use_rope: bool = False,
        use_groupnorm: bool = False,
        attn_scale: float | None = None,
        decay_lora_rank: int | None = None,
        a_lora_rank: int | None = None,
        v_lora_rank: int | None = None,
        gate_lora_rank: int | None = None,
        mix_lora_rank: int = 32,
        chunk_size: int = 16,
        teacher: str | None = None,
        teacher_model_type: str | None = None,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        if time_mix not in TIME_MIX_KINDS:
            raise ValueError(f"time_mix must be one of {TIME_MIX_KINDS}, got {time_mix!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        self.attention_bias = attention_bias
        self.attention_out_bias = attention_out_bias
        self.mlp_bias = mlp_bias
        self.qk_norm = qk_norm
        self.time_mix = time_mix
        self.attention_layers = sorted({int(i) for i in attention_layers})
        bad = [i for i in self.attention_layers if not 0 <= i < num_hidden_layers]
        if bad:
            raise ValueError(f"attention_layers {bad} out of range 0..{num_hidden_layers - 1}")
        self.use_rope = use_rope
        self.use_groupnorm = use_groupnorm
        self.attn_scale = attn_scale
        width = self.num_attention_heads * self.head_dim
        self.decay_lora_rank = decay_lora_rank or _lora_rank(width, 1.8, 0.5)
        self.a_lora_rank = a_lora_rank or _lora_rank(width, 1.8, 0.5)
        self.v_lora_rank = v_lora_rank or _lora_rank(width, 1.3, 0.5)
        self.gate_lora_rank = gate_lora_rank or _lora_rank(width, 0.6, 0.8)
        self.mix_lora_rank = mix_lora_rank
        self.chunk_size = chunk_size
        self.teacher = teacher
        self.teacher_model_type = teacher_model_type
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def read_scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def layer_kind(self, layer_idx: int) -> str:
        return "attention" if layer_idx in self.attention_layers else self.time_mix
