"""The one map from dtype names to torch dtypes, for `--dtype`, the run config and the loaders.

torch is imported only when a name is resolved, so command-line parsing can offer the choices
without loading it.
"""

from __future__ import annotations

from radlads.errors import RadladsError

# What `--dtype` offers on every command (fp16 is for library callers on GPUs: CPUs have no fast fp16).
DTYPE_CHOICES = ("bf16", "fp32")

# name -> attribute of torch
_TORCH_NAMES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
}


def torch_dtype(dtype):
    """A torch dtype from a name ("fp32", "bf16", "float16", ...) or a torch dtype itself."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _TORCH_NAMES.get(str(dtype).lower())
    if name is None:
        raise RadladsError(f"unknown dtype {dtype!r}: use one of {', '.join(_TORCH_NAMES)}")
    return getattr(torch, name)
