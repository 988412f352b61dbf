"""Training stages 1, 2 and 3, and `radlads train`.

Each stage is an objective module (teacher + student -> scalar loss) driven by one loop:
next global batch -> this rank's slice -> micro-batches -> backward -> clip -> AdamW step ->
log / validate / checkpoint. The objective is what DDP or FSDP2 wraps, so the loop never needs
to know about distribution.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from radlads import distributed as dist
from radlads.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from radlads.config import RunConfig, StageConfig
from radlads.data import PackedStream, check_seq_len, validation_batches
from radlads.errors import RadladsError
from radlads.losses import attention_alignment_loss, distillation_kl, next_token_ce

# --------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------


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


class Stage1Objective(nn.Module):
    """Per-layer attention-output alignment; the teacher runs without its LM head."""

    def __init__(self, teacher, student):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.tap = TeacherAttentionTap(teacher)

    def forward(self, input_ids):
        with torch.no_grad():
            self.teacher.model(input_ids=input_ids, use_cache=False)
        inputs, targets = self.tap.take()
        outputs = self.student.model.time_mix_forward(inputs)
        return attention_alignment_loss(outputs, targets)


class DistillObjective(nn.Module):
    """Stage 2 (and 3): kl_weight · KL(teacher ‖ student) + ce_weight · CE."""

    def __init__(self, teacher, student, stage: StageConfig):
        super().__init__()
        self.teacher, self.student, self.stage = teacher, student, stage

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


def trainable_names(student, stage: int, stage_cfg: StageConfig) -> set[str]:
    """Stage 1 trains only the time-mix; later stages everything (optionally not the MLPs)."""
    if stage == 1:
        return student.time_mix_parameter_names()
    names = {n for n, _ in student.named_parameters()}
    if stage_cfg.freeze_mlp:
        names = {n for n in names if ".mlp." not in n}
    return names


def lr_at(step: int, total: int, s: StageConfig) -> float:
    """Linear warm-up, then cosine from lr to lr_final over the remaining steps (or constant)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    progress = (step - s.warmup_steps) / max(1, total - 1 - s.warmup_steps)
    return s.lr_final + 0.5 * (s.lr - s.lr_final) * (1 + math.cos(math.pi * min(1.0, progress)))


def total_steps(s: StageConfig) -> int:
    return math.ceil(s.tokens / (s.batch_size * s.seq_len))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def make_data(cfg: RunConfig, s: StageConfig, seed: int, tokenizer):
    """(training stream of global batches, fixed validation batches) for one stage."""
    d = cfg.data
    stream = PackedStream(d.spec, tokenizer, s.seq_len, s.batch_size, seed=seed, text_field=d.text_field,
                          valid_fraction=d.valid_fraction, shuffle_buffer=d.shuffle_buffer)
    valid = []
    if d.valid_sequences:
        valid = validation_batches(d.valid_spec or d.spec, tokenizer, s.seq_len, d.valid_sequences, d.text_field,
                                   split="all" if d.valid_spec else "valid", valid_fraction=d.valid_fraction)
    return stream, valid


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _autocast(cfg: RunConfig):
    if cfg.dtype != "bf16":
        return nullcontext()
    return torch.autocast(dist.device().type, dtype=torch.bfloat16)


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _drop_metrics_after(path: Path, stage: int, step: int) -> None:
    """A killed run may have logged steps past its last checkpoint; the resumed run logs them again."""
    if not path.is_file():
        return
    rows = path.read_text().splitlines()
    kept = [r for r in rows if not (json.loads(r)["stage"] == stage and json.loads(r)["step"] > step)]
    if len(kept) != len(rows):
        path.write_text("".join(r + "\n" for r in kept))


@torch.no_grad()
def validation_loss(objective, batches, cfg: RunConfig) -> float:
    was_training = objective.training
    objective.eval()
    with _autocast(cfg):
        losses = [float(objective(b.to(dist.device()))) for b in batches]
    objective.train(was_training)
    return sum(losses) / len(losses)


def train_stage(stage: int, cfg: RunConfig, teacher, student, tokenizer, run_dir: Path,
                resume: bool = False, stop_after_steps: int | None = None, data_factory=None) -> bool:
    """Train `student` in place for one stage. Returns True when the stage's token budget is done.

    `data_factory(stage_cfg, seed) -> (stream, valid_batches)` replaces the configured data
    (tests feed token batches directly). Checkpoints go to run_dir/checkpoints/stageN/.
    """
    s = cfg.stage(stage)
    rank, world = dist.rank(), dist.world_size()
    if s.batch_size % world:
        raise RadladsError(f"stage{stage}.batch_size {s.batch_size} is not divisible by {world} processes")
    if (s.batch_size // world) % s.grad_accum:
        raise RadladsError(f"stage{stage}: per-process batch {s.batch_size // world} is not divisible by "
                           f"grad_accum {s.grad_accum}")
    uses_teacher = stage != 3 or s.kl_weight > 0
    check_seq_len(s.seq_len, getattr(teacher.config, "max_position_embeddings", None) if uses_teacher else None)
    n_steps = total_steps(s)
    step_tokens = s.batch_size * s.seq_len
    ckpt_dir = run_dir / "checkpoints" / f"stage{stage}"
    metrics_path = run_dir / "metrics.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)

    device = dist.device()
    teacher.to(device).requires_grad_(False).eval()
    student.to(device)
    keep = trainable_names(student, stage, s)
    for name, p in student.named_parameters():
        p.requires_grad_(name in keep)
    # The student's own switch (recompute each layer in backward): transformers renames its
    # enable/disable methods between versions, the attribute the model reads stays.
    student.model.gradient_checkpointing = s.gradient_checkpointing
    student.train()
    objective = Stage1Objective(teacher, student) if stage == 1 else DistillObjective(teacher, student, s)
    wrapped = dist.wrap(objective, cfg.fsdp)
    params = [p for p in student.parameters() if p.requires_grad]
    # The fused AdamW kernel is ~3x faster than the multi-tensor one on CPU (a stage 2 step updates
    # every weight); sharded DTensor parameters take the default path.
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay,
                                  fused=not dist.is_sharded(student))

    seed = cfg.seed * 1000 + stage  # each stage sees its own data order
    stream, valid = (data_factory or (lambda s_, seed_: make_data(cfg, s_, seed_, tokenizer)))(s, seed)
    torch.manual_seed(seed)

    step = 0
    checkpoint = latest_checkpoint(ckpt_dir) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, student, optimizer)
        step = state["step"]
        stream.load_state_dict(state["data"])
        if rank == 0:
            _drop_metrics_after(metrics_path, stage, step)
            print(f"radlads: stage {stage} resumed from {checkpoint} (step {step}/{n_steps})", file=sys.stderr)
    elif not resume and any(ckpt_dir.glob("step-*")):
        raise RadladsError(f"{ckpt_dir} already has checkpoints: pass --resume to continue, or use a new --out")

    def checkpoint_now(at_step: int) -> None:
        save_checkpoint(ckpt_dir, at_step, student, optimizer,
                        {"stage": stage, "tokens": at_step * step_tokens, "total_steps": n_steps,
                         "data": stream.state_dict()}, keep=cfg.keep_checkpoints)

    bar = tqdm(total=n_steps, initial=step, desc=f"stage {stage}", unit="step", disable=rank != 0,
               dynamic_ncols=True, file=sys.stderr)
    try:
        steps_this_run, t_start = 0, time.perf_counter()
        while step < n_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, n_steps, s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro_batches = next(stream)[rank::world].to(device).chunk(s.grad_accum)
            loss_sum = 0.0
            for i, micro in enumerate(micro_batches):
                last = i == len(micro_batches) - 1
                with (nullcontext() if last else dist.no_sync(wrapped)), _autocast(cfg):
                    loss = wrapped(micro) / len(micro_batches)
                loss.backward()
                loss_sum += float(loss.detach())
            loss_value = dist.mean(loss_sum)
            grad_norm = dist.full_value(torch.nn.utils.clip_grad_norm_(params, s.grad_clip))
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                what = f"gradient norm is {grad_norm}" if math.isfinite(loss_value) else f"loss is {loss_value}"
                raise RadladsError(f"stage {stage}: {what} at step {step + 1}; stopped before applying it "
                                   f"(last good checkpoint: {latest_checkpoint(ckpt_dir) or 'none'})")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            steps_this_run += 1

            tok_s = step_tokens / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
            record = {"stage": stage, "step": step, "tokens": step * step_tokens, "loss": loss_value, "lr": lr,
                      "tok_s": round(tok_s, 1), "grad_norm": grad_norm,
                      "elapsed_s": round(time.perf_counter() - t_start, 3)}  # in this process
            if valid and (step % cfg.eval_every == 0 or step == n_steps):
                record["val_loss"] = dist.mean(validation_loss(wrapped, valid, cfg))
            if rank == 0 and (step % cfg.log_every == 0 or "val_loss" in record or step == n_steps):
                _log(metrics_path, record)
            stopping = stop_after_steps is not None and steps_this_run >= stop_after_steps
            if step % cfg.save_every == 0 or step == n_steps or stopping:
                checkpoint_now(step)
            if stopping and step < n_steps:
                return False
    finally:  # also when stopped or failed: leave the teacher and student as they came
        bar.close()
        student.model.gradient_checkpointing = False
        if stage == 1:
            objective.tap.remove()
        student.eval()
    return True


# --------------------------------------------------------------------------------------------
# radlads train: one stage on an existing student folder
# --------------------------------------------------------------------------------------------


def load_student_dir(path: str | Path):
    """A student folder (radlads init, a stage's final/, an export) as a trainable model."""
    from radlads.loading import is_student_dir
    from radlads.model.modeling_radlads import RadladsForCausalLM

    if not is_student_dir(str(path)):
        raise RadladsError(f"{path} is not a radlads student folder (make one with radlads init)")
    return RadladsForCausalLM.from_pretrained(path)


def add_arguments(p) -> None:
    from radlads.config import add_config_arguments

    p.add_argument("--stage", type=int, required=True, choices=[1, 2, 3], help="which stage to run")
    p.add_argument("--student", required=True, help="student folder (from radlads init or a previous stage)")
    p.add_argument("--teacher", required=True, help="teacher spec the student was made from")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, and the trained student")
    p.add_argument("--lr", type=float, help="peak learning rate of this stage")
    add_config_arguments(p)


def run(args) -> int:
    from radlads.config import load_config, overrides_from_args, save_config
    from radlads.convert import prepare_data, setup_runtime
    from radlads.export import save_model_into
    from radlads.teachers import load_teacher

    overrides = overrides_from_args(args)
    overrides.update({"teacher": args.teacher, "out": args.out, "stages": [args.stage]})
    if args.lr is not None:
        overrides.setdefault(f"stage{args.stage}", {})["lr"] = args.lr
    cfg = load_config(args.preset, args.config, overrides, args.set)
    student = load_student_dir(args.student)
    setup_runtime(cfg)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.rank() == 0:
        save_config(cfg, run_dir / "run.yaml")
    teacher, tokenizer = load_teacher(cfg.teacher)
    prepare_data(cfg, teacher, tokenizer, run_dir)
    done = train_stage(args.stage, cfg, teacher, student, tokenizer, run_dir, resume=args.resume,
                       stop_after_steps=args.stop_after_steps)
    if done and dist.rank() == 0:
        save_model_into(student, tokenizer, run_dir)
        print(f"stage {args.stage} done: student saved in {run_dir}")
    elif not done and dist.rank() == 0:
        print("stopped early; continue with the same command plus --resume", file=sys.stderr)
    dist.cleanup()
    return 0
