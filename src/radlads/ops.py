"""Linear-attention kernels, public API.

    chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, chunk_size=16)
    recurrent_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False)
        S_t = diag(exp(w_t)) S_{t-1} + b_t (a_tᵀ S_{t-1}) + k_t v_tᵀ,   o_t = scale · S_tᵀ r_t
    chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, chunk_size=16)
    recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False)
        S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ,                        o_t = scale · S_tᵀ q_t
        (scale=None means K^-½)

Conventions are flash-linear-attention's: r/q, w/g, k, a, b are [B, T, H, K] and v is
[B, T, H, V]; w and g are log-decays (<= 0); states are [B, H, K, V]; every function returns
`(o, final_state)` with o [B, T, H, V] in the input dtype and final_state in fp32 (None unless
output_final_state). A state returned by one call can be passed as initial_state to the next to
continue the sequence.

On CUDA with `fla` installed its Triton kernels run. Otherwise the PyTorch forms run: the chunked
ones take any T, accumulate in fp32 (bf16 inputs are fine; fp64 stays fp64), support autograd
(gradients for every input and the initial state), stay finite for log-decays down to -5 per step
(steeper decays get smaller chunks), and equal the step-by-step recurrent forms to rounding. Use
the chunked forms for prefill and training, the recurrent ones for one-token decoding steps.

The implementations live in radlads/model/ because that folder is copied into every exported
model and must work there without radlads installed.
"""

from radlads.model.ops import chunk_gla, chunk_rwkv7, recurrent_gla, recurrent_rwkv7

__all__ = ["chunk_rwkv7", "recurrent_rwkv7", "chunk_gla", "recurrent_gla"]
