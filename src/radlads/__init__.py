"""radlads: turn a softmax-attention LLM into an RWKV-family linear-attention RNN by distillation."""

__version__ = "0.1.0"
