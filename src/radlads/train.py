"""The training loop: one stage of `student` against `teacher`, resumable, on one or many processes.

    every step:  lr from the schedule -> next global batch -> this rank's rows -> micro-batches
                 -> objective loss, backward -> clip -> stop on a NaN/inf -> AdamW step
                 -> log to metrics.jsonl, validate every eval_every, checkpoint every save_every

A stage with a time budget (`minutes`) fixes its step count once its first steps are timed.

What a stage optimises and which parameters it trains is its objective (radlads.objectives); where
its checkpoints and metrics go is the run folder (radlads.run_folder); a checkpoint's content is
radlads.checkpoint. The global batch is the same on every rank and each takes `batch[rank::world]`
(radlads.distributed), so results do not depend on the number of processes.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from radlads import distributed as dist
from radlads.checkpoint import load_checkpoint, save_checkpoint
from radlads.config import RunConfig, StageConfig
from radlads.cpu_matmul import with_onednn_matmul
from radlads.data import PackedStream, check_seq_len, validation_batches
from radlads.errors import RadladsError
from radlads.objectives import objective_for
from radlads.run_folder import RunFolder


def total_steps(s: StageConfig) -> int:
    """The stage's step count from its token budget (with `minutes`, the most it may run)."""
    return math.ceil(s.tokens / (s.batch_size * s.seq_len))


def calibration_steps(s: StageConfig) -> int:
    """With a time budget, the step after which the step count is fixed from the measured speed.

    The warm-up's lr does not depend on the step count, so fixing the count by the end of the
    warm-up (of at least 3 steps) leaves the schedule what a token budget of as many steps gives.
    """
    return max(3, s.warmup_steps)


def steps_within(minutes: float, spent_s: float, step_s: float, step: int, cap: int) -> int:
    """The step count that ends a stage `minutes` after it began, `step` steps and `spent_s`
    seconds in, at `step_s` seconds per further step: at least one more step, at most `cap`."""
    more = int(max(0.0, minutes * 60 - spent_s) // step_s)
    return min(cap, step + max(1, more))


def lr_at(step: int, total: int, s: StageConfig) -> float:
    """Linear warm-up, then cosine from lr to lr_final over the remaining steps (or constant)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    progress = (step - s.warmup_steps) / max(1, total - 1 - s.warmup_steps)
    return s.lr_final + 0.5 * (s.lr - s.lr_final) * (1 + math.cos(math.pi * min(1.0, progress)))


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


def _autocast(cfg: RunConfig):
    if cfg.dtype != "bf16":
        return nullcontext()
    return torch.autocast(dist.device().type, dtype=torch.bfloat16)


@torch.no_grad()
def validation_loss(objective, batches, cfg: RunConfig) -> float:
    was_training = objective.training
    objective.eval()
    with _autocast(cfg):
        losses = [float(objective(b.to(dist.device()))) for b in batches]
    objective.train(was_training)
    return sum(losses) / len(losses)


def _check_batch(stage: int, s: StageConfig, world: int) -> None:
    if s.batch_size % world:
        raise RadladsError(f"stage{stage}.batch_size {s.batch_size} is not divisible by {world} processes")
    if (s.batch_size // world) % s.grad_accum:
        raise RadladsError(f"stage{stage}: per-process batch {s.batch_size // world} is not divisible by "
                           f"grad_accum {s.grad_accum}")


def _prepare_student(student, objective, s: StageConfig, fsdp: bool):
    """Freeze what the objective does not train, switch training mode on, wrap for DDP/FSDP2, and
    make the optimizer: (wrapped objective, trained parameters, AdamW)."""
    keep = objective.trainable_names()
    for name, p in student.named_parameters():
        p.requires_grad_(name in keep)
    # The student's own switch (recompute each layer in backward): transformers renames its
    # enable/disable methods between versions, the attribute the model reads stays.
    student.model.gradient_checkpointing = s.gradient_checkpointing
    student.train()
    wrapped = dist.wrap(objective, fsdp)
    params = [p for p in student.parameters() if p.requires_grad]
    # The fused AdamW kernel is ~3x faster than the multi-tensor one on CPU (a stage 2 step updates
    # every weight); sharded DTensor parameters take the default path.
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay,
                                  fused=not dist.is_sharded(student))
    return wrapped, params, optimizer


@with_onednn_matmul  # fp32 Linear layers 2-4x faster on CPUs where MKL runs AVX2 code (cpu_matmul.py)
def train_stage(stage: int, cfg: RunConfig, teacher, student, tokenizer, run_dir: Path,
                resume: bool = False, stop_after_steps: int | None = None, data_factory=None) -> bool:
    """Train `student` in place for one stage. Returns True when the stage's token budget is done.

    `data_factory(stage_cfg, seed) -> (stream, valid_batches)` replaces the configured data
    (tests feed token batches directly). Checkpoints go to run_dir/checkpoints/stageN/.
    """
    s = cfg.stage(stage)
    rank, world = dist.rank(), dist.world_size()
    _check_batch(stage, s, world)
    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    n_steps, step_tokens = total_steps(s), s.batch_size * s.seq_len

    # The models, what trains, and the optimizer.
    device = dist.device()
    teacher.to(device).requires_grad_(False).eval()
    student.to(device)
    objective, bar = objective_for(stage, teacher, student, s), None
    try:
        check_seq_len(s.seq_len, getattr(teacher.config, "max_position_embeddings", None)
                      if objective.uses_teacher else None)
        wrapped, params, optimizer = _prepare_student(student, objective, s, cfg.fsdp)

        # The data, and where a resumed run left it.
        seed = cfg.seed * 1000 + stage  # each stage sees its own data order
        stream, valid = (data_factory or (lambda s_, seed_: make_data(cfg, s_, seed_, tokenizer)))(s, seed)
        torch.manual_seed(seed)
        step, spent_before = 0, 0.0  # spent_before: training seconds of earlier invocations
        calibrate_at = calibration_steps(s) if s.minutes else None
        checkpoint = run.latest_checkpoint(stage) if resume else None
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, student, optimizer)
            step, spent_before = state["step"], state.get("seconds", 0.0)
            if s.minutes and state.get("budgeted"):  # the step count was fixed before the run stopped
                n_steps, calibrate_at = state["total_steps"], None
            stream.load_state_dict(state["data"])
            if rank == 0:
                run.drop_metrics_after(stage, step)
                print(f"radlads: stage {stage} resumed from {checkpoint} (step {step}/{n_steps})", file=sys.stderr)
        elif not resume:
            run.check_no_checkpoints(stage)

        def checkpoint_now(at_step: int) -> None:
            save_checkpoint(run.checkpoints(stage), at_step, student, optimizer,
                            {"stage": stage, "tokens": at_step * step_tokens, "total_steps": n_steps,
                             "budgeted": bool(s.minutes) and calibrate_at is None,
                             "seconds": round(spent_before + time.perf_counter() - t_start, 3),
                             "data": stream.state_dict()}, keep=cfg.keep_checkpoints)

        bar = tqdm(total=n_steps, initial=step, desc=f"stage {stage}", unit="step", disable=rank != 0,
                   dynamic_ncols=True, file=sys.stderr)
        steps_this_run, t_start, step_times = 0, time.perf_counter(), []
        while step < n_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, n_steps, s)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # Forward and backward over this rank's micro-batches; gradients reduced on the last.
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
                                   f"(last good checkpoint: {run.latest_checkpoint(stage) or 'none'})")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            steps_this_run += 1

            # Log, validate, checkpoint.
            step_s = time.perf_counter() - t0
            tok_s = step_tokens / step_s
            if calibrate_at is not None:
                step_times.append(step_s)
            if calibrate_at is not None and step >= calibrate_at:
                # The first step of a process pays one-off costs (allocation, kernel choice): left out.
                measured = step_times[1:] or step_times
                mean_step_s, cap = sum(measured) / len(measured), n_steps
                total = steps_within(s.minutes, spent_before + time.perf_counter() - t_start, mean_step_s, step, cap)
                n_steps, calibrate_at = int(round(dist.mean(float(total)))), None  # one count on every rank
                bar.total = n_steps
                if rank == 0:
                    why = "its token budget" if n_steps == cap else f"{s.minutes:g} min"
                    tqdm.write(f"radlads: stage {stage} runs {n_steps} steps ({n_steps * step_tokens:,} tokens, "
                               f"{why}) at {step_tokens / mean_step_s:.0f} tok/s", file=sys.stderr)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
            record = {"stage": stage, "step": step, "tokens": step * step_tokens, "loss": loss_value, "lr": lr,
                      "tok_s": round(tok_s, 1), "grad_norm": grad_norm,
                      "elapsed_s": round(time.perf_counter() - t_start, 3)}  # in this process
            if valid and (step % cfg.eval_every == 0 or step == n_steps):
                record["val_loss"] = dist.mean(validation_loss(wrapped, valid, cfg))
            if rank == 0 and (step % cfg.log_every == 0 or "val_loss" in record or step == n_steps):
                run.log(record)
            stopping = stop_after_steps is not None and steps_this_run >= stop_after_steps
            if step % cfg.save_every == 0 or step == n_steps or stopping:
                checkpoint_now(step)
            if stopping and step < n_steps:
                return False
    finally:  # also when stopped or failed: leave the teacher and student as they came
        if bar is not None:
            bar.close()
        student.model.gradient_checkpointing = False
        objective.close()
        student.eval()
    return True
