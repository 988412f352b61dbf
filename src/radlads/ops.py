"""Linear-attention kernels, public API.

    chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False)
    recurrent_rwkv7(...)          same signature, step-by-step reference
    chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False)
    recurrent_gla(...)

Conventions are flash-linear-attention's: [B, T, H, K] inputs, [B, T, H, V] values, log-decays
(<= 0), [B, H, K, V] states, `(output, final_state or None)` returns; on CUDA with `fla`
installed its Triton kernels run, otherwise the PyTorch forms (autograd, any T, fp32
accumulation, bf16 accepted). The implementations live in radlads/model/ because that folder is
copied into every exported model.
"""

from radlads.model.ops import chunk_gla, chunk_rwkv7, recurrent_gla, recurrent_rwkv7

__all__ = ["chunk_rwkv7", "recurrent_rwkv7", "chunk_gla", "recurrent_gla"]
