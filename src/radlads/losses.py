"""The three RADLADS objectives.

Stage 1: per-layer L2 between each student time-mix output and the teacher attention output it
replaces, averaged over layers. Stage 2: KL(teacher ‖ student) on next-token distributions.
Stage 3: cross-entropy, optionally mixed with the stage 2 KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_alignment_loss(student_outputs, teacher_outputs) -> torch.Tensor:
    """Mean over aligned layers of the mean squared error (None entries are kept softmax layers)."""
    losses = [
        F.mse_loss(s.float(), t.float())
        for s, t in zip(student_outputs, teacher_outputs)
        if s is not None
    ]
    return torch.stack(losses).mean()


def distillation_kl(student_logits, teacher_logits, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """KL(teacher ‖ student) per token, averaged, times T² so gradients keep their scale across T.

    With top_k > 0 only the teacher's k most likely tokens count: the teacher's distribution is
    renormalised over them and compared with the student's full-vocabulary log-probabilities
    there, which saves the memory of a second full-vocabulary softmax.
    """
    s = student_logits.float().flatten(0, -2)
    t = teacher_logits.float().flatten(0, -2)
    if temperature != 1.0:  # each division is a full pass over tokens x vocabulary
        s, t = s / temperature, t / temperature
    log_q = F.log_softmax(s, dim=-1)
    if top_k:
        t, idx = t.topk(top_k, dim=-1)
        log_q = log_q.gather(-1, idx)
    log_p = F.log_softmax(t, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True) / s.shape[0]
    return kl * temperature**2


def next_token_ce(logits, input_ids) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten())
