"""What each training stage optimises: an objective module per stage, called by the loop in radlads.train.

An objective is `teacher + student -> scalar loss` (forward(input_ids)). It also carries the
stage's rules, so the loop never asks which stage it is in:
  - `trainable_names()`: the student parameters this stage updates;
  - `uses_teacher`: whether the teacher's context limit bounds the stage's sequence length;
  - `close()`: undo what the objective attached to the models (hooks).
The objective is what DDP or FSDP2 wraps, so the loop does not need to know about distribution.

Stage 1 (`AttentionAlignment`) needs two hooks into the models, kept here rather than in the
exported modeling code: a tap on the teacher's attention inputs and outputs, and
`time_mix_forward`, which runs every student time-mix on the teacher's own inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from radlads.config import StageConfig
from radlads.losses import attention_alignment_loss, distillation_kl, next_token_ce


def _is_time_mix(layer) -> bool:
    """A student layer whose attention was replaced (not a softmax layer kept from the teacher)."""
    return layer.time_mix.__class__.__name__ != "SoftmaxAttention"


def time_mix_parameter_names(student) -> set[str]:
    """Parameters stage 1 trains: every time-mix except the softmax layers kept from the teacher."""
    names = set()
    for i, layer in enumerate(student.model.layers):
        if _is_time_mix(layer):
            names.update(f"model.layers.{i}.time_mix.{n}" for n, _ in layer.time_mix.named_parameters())
    return names


def time_mix_forward(student, layer_inputs: list[torch.Tensor], position_ids=None) -> list[torch.Tensor | None]:
    """Run every student time-mix on the teacher's normalised residual stream of its own layer.

    Layers run independently except for the value residual, which flows from the first time-mix
    layer exactly as in a full forward. Softmax layers (kept from the teacher) give None.
    """
    B, T = layer_inputs[0].shape[:2]
    if position_ids is None:
        position_ids = torch.arange(T, device=layer_inputs[0].device).unsqueeze(0).expand(B, T)
    outputs, v_first = [], None
    for layer, x in zip(student.model.layers, layer_inputs):
        if not _is_time_mix(layer):
            outputs.append(None)
            continue
        out, v_first, _ = layer.time_mix(x, v_first, None, position_ids, None, False)
        outputs.append(out)
    return outputs


class TeacherAttentionTap:
    """Forward hooks that record, per teacher layer, the attention input and output.

    The input is the normalised residual stream the student time-mix will see; the output is the
    attention block's contribution before the residual add: exactly what stage 1 must reproduce.
    """

    def __init__(self, teacher):
        layers = teacher.model.layers
        self.inputs: list[torch.Tensor | None] = [None] * len(layers)
        self.outputs: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [layer.self_attn.register_forward_hook(self._hook(i), with_kwargs=True)
                        for i, layer in enumerate(layers)]

    def _hook(self, i):
        def hook(module, args, kwargs, output):
            self.inputs[i] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The captured tensors; the tap lets go of them so they are freed after the step."""
        inputs, outputs = self.inputs, self.outputs
        self.inputs, self.outputs = [None] * len(inputs), [None] * len(outputs)
        return inputs, outputs

    def remove(self):
        for h in self.handles:
            h.remove()


class AttentionAlignment(nn.Module):
    """Stage 1: per-layer attention-output alignment; the teacher runs without its LM head.

    Only the time-mix parameters train, all layers at once.
    """

    uses_teacher = True

    def __init__(self, teacher, student, stage: StageConfig):
        super().__init__()
        self.teacher, self.student, self.stage = teacher, student, stage
        self.tap = TeacherAttentionTap(teacher)

    def trainable_names(self) -> set[str]:
        return time_mix_parameter_names(self.student)

    def forward(self, input_ids):
        with torch.no_grad():
            self.teacher.model(input_ids=input_ids, use_cache=False)
        inputs, targets = self.tap.take()
        return attention_alignment_loss(time_mix_forward(self.student, inputs), targets)

    def close(self) -> None:
        self.tap.remove()


class Distillation(nn.Module):
    """Stages 2 and 3: kl_weight · KL(teacher ‖ student) + ce_weight · CE on the whole student.

    Everything trains, except the MLPs with `freeze_mlp`. Stage 2 is distillation proper, so its
    sequences must fit the teacher's context; stage 3 (long-context CE) only when it mixes in KL.
    """

    def __init__(self, teacher, student, stage: StageConfig, long_context: bool = False):
        super().__init__()
        self.teacher, self.student, self.stage = teacher, student, stage
        self.uses_teacher = not long_context or stage.kl_weight > 0

    def trainable_names(self) -> set[str]:
        names = {n for n, _ in self.student.named_parameters()}
        if self.stage.freeze_mlp:
            names = {n for n in names if ".mlp." not in n}
        return names

    def forward(self, input_ids):
        s = self.stage
        logits = self.student(input_ids=input_ids, use_cache=False).logits
        loss = logits.new_zeros((), dtype=torch.float32)
        if s.kl_weight:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=input_ids, use_cache=False).logits
            loss = loss + s.kl_weight * distillation_kl(logits, teacher_logits, s.temperature, s.top_k)
        if s.ce_weight:
            loss = loss + s.ce_weight * next_token_ce(logits, input_ids)
        return loss

    def close(self) -> None:
        pass


def objective_for(stage: int, teacher, student, stage_cfg: StageConfig) -> nn.Module:
    """The objective of stage 1, 2 or 3: the one place that maps a stage number to its rules."""
    if stage == 1:
        return AttentionAlignment(teacher, student, stage_cfg)
    return Distillation(teacher, student, stage_cfg, long_context=stage == 3)
