"""Training stages 1, 2 and 3, and `radlads train`.

Each stage is an objective module (teacher + student -> scalar loss) driven by one loop:
next global batch -> this rank's slice -> micro-batches -> backward -> clip -> AdamW step ->
log / validate / checkpoint. The objective is what DDP or FSDP wraps, so the loop never needs to
know about distribution.
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
        self.inputs: list[torch.Tensor | None] = []
        self.outputs: list[torch.Tensor | None] = []
        self.handles = []
        layers = teacher.model.layers
        self.inputs = [None] * len(layers)
        self.outputs = [None] * len(layers)
        for i, layer in enumerate(layers):
            self.handles.append(layer.self_attn.register_forward_hook(self._hook(i), with_kwargs=True))

    def _hook(self, i):
        def hook(module, args, kwargs, output):
            self.inputs[i] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

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
            self.teacher.model(input_ids=input_ids, use_cache=False)  # base model only: no LM head
            inputs, targets = list(self.tap.inputs), list(self.tap.outputs)
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
    names = {n for n, _ in student.named_parameters()}
    if stage == 1:
        return student.time_mix_parameter_names()
    if stage_cfg.freeze_mlp:
        names = {n for n in names if ".mlp." not in n}
    return names


def lr_at(step: int, total: int, s: StageConfig) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    progress = (step - s.warmup_steps) / max(1, total - s.warmup_steps)
    return s.lr_final + 0.5 * (s.lr - s.lr_final) * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _autocast(cfg: RunConfig):
    if cfg.dtype != "bf16":
        return nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16)


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@torch.no_grad()
def validation_loss(objective, batches, cfg: RunConfig) -> float:
    was_training = objective.training
    objective.eval()
    with _autocast(cfg):
        losses = [float(objective(b)) for b in batches]
    objective.train(was_training)
    return sum(losses) / len(losses)


def train_stage(stage: int, cfg: RunConfig, teacher, student, tokenizer, run_dir: Path,
                resume: bool = False, stop_after_steps: int | None = None, stream_factory=None) -> bool:
    """Train `student` in place for one stage. Returns True when the stage's budget is done.

    `stream_factory(seq_len, batch_size, seed)` replaces the data spec (tests feed tokens directly).
    """
    s = cfg.stage(stage)
    rank, world = dist.rank(), dist.world_size()
    if s.batch_size % world:
        raise RadladsError(f"stage{stage}.batch_size {s.batch_size} is not divisible by {world} processes")
    local_batch = s.batch_size // world
    if local_batch % s.grad_accum:
        raise RadladsError(f"stage{stage}: per-rank batch {local_batch} is not divisible by grad_accum {s.grad_accum}")
    check_seq_len(s.seq_len, getattr(teacher.config, "max_position_embeddings", None))
    total_steps = math.ceil(s.tokens / (s.batch_size * s.seq_len))
    ckpt_dir = run_dir / "checkpoints" / f"stage{stage}"
    metrics_path = run_dir / "metrics.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)

    keep = trainable_names(student, stage, s)
    for name, p in student.named_parameters():
        p.requires_grad_(name in keep)
    teacher.requires_grad_(False).eval()
    student.model.gradient_checkpointing = s.gradient_checkpointing  # recompute layers in backward
    student.train()
    objective = Stage1Objective(teacher, student) if stage == 1 else DistillObjective(teacher, student, s)
    wrapped = dist.wrap(objective, cfg.fsdp)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay)

    seed = cfg.seed * 1000 + stage
    if stream_factory is not None:
        stream = stream_factory(s.seq_len, s.batch_size, seed)
        valid = [stream_factory(s.seq_len, 1, seed + 99).__next__() for _ in range(cfg.data.valid_sequences)]
    else:
        stream = PackedStream(cfg.data.spec, tokenizer, s.seq_len, s.batch_size, seed=seed,
                              text_field=cfg.data.text_field, valid_fraction=cfg.data.valid_fraction,
                              shuffle_buffer=cfg.data.shuffle_buffer)
        valid = []
        if cfg.data.valid_sequences:
            valid = validation_batches(cfg.data.valid_spec or cfg.data.spec, tokenizer, s.seq_len,
                                       cfg.data.valid_sequences, cfg.data.text_field,
                                       split="all" if cfg.data.valid_spec else "valid",
                                       valid_fraction=cfg.data.valid_fraction)
    torch.manual_seed(seed)

    step = 0
    checkpoint = latest_checkpoint(ckpt_dir) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, student, optimizer)
        step = state["step"]
        stream.load_state_dict(state["data"])
        if rank == 0:
            print(f"radlads: stage {stage} resumed from {checkpoint} (step {step}/{total_steps})", file=sys.stderr)
    elif ckpt_dir.exists() and any(ckpt_dir.glob("step-*")) and rank == 0 and not resume:
        raise RadladsError(f"{ckpt_dir} already has checkpoints: pass --resume to continue, or use a new --out")
    if step >= total_steps:
        return True

    def checkpoint_now(at_step: int) -> None:
        if rank == 0:
            save_checkpoint(ckpt_dir, at_step, student, optimizer,
                            {"stage": stage, "data": stream.state_dict(), "tokens": at_step * s.batch_size * s.seq_len},
                            keep=cfg.keep_checkpoints)
        dist.barrier()

    bar = tqdm(total=total_steps, initial=step, desc=f"stage {stage}", unit="step", disable=rank != 0,
               dynamic_ncols=True, file=sys.stderr)
    steps_this_run, t_start = 0, time.perf_counter()
    while step < total_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(stream)[rank::world]
        micro_batches = batch.chunk(s.grad_accum)
        total_loss = 0.0
        for i, micro in enumerate(micro_batches):
            sync = dist.no_sync(wrapped) if i < len(micro_batches) - 1 else nullcontext()
            with sync, _autocast(cfg):
                loss = wrapped(micro) / len(micro_batches)
            loss.backward()
            total_loss += float(loss.detach())
        total_loss = dist.mean(total_loss)
        if not math.isfinite(total_loss):
            last = latest_checkpoint(ckpt_dir)
            raise RadladsError(f"stage {stage}: loss is {total_loss} at step {step}; stopped without updating "
                               f"(last good checkpoint: {last or 'none'})")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_run += 1

        dt = time.perf_counter() - t0
        tok_s = s.batch_size * s.seq_len / dt
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss:.4g}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
        record = {"stage": stage, "step": step, "tokens": step * s.batch_size * s.seq_len, "loss": total_loss,
                  "lr": lr, "grad_norm": grad_norm, "tok_s": tok_s, "elapsed_s": time.perf_counter() - t_start}
        if valid and (step % cfg.eval_every == 0 or step == total_steps):
            record["val_loss"] = dist.mean(validation_loss(wrapped, valid, cfg))
        if rank == 0 and (step % cfg.log_every == 0 or "val_loss" in record):
            _log(metrics_path, record)
        if step % cfg.save_every == 0 or step == total_steps:
            checkpoint_now(step)
        if stop_after_steps is not None and steps_this_run >= stop_after_steps and step < total_steps:
            checkpoint_now(step)
            bar.close()
            return False
    bar.close()
    student.model.gradient_checkpointing = False
    if stage == 1:
        objective.tap.remove()
    student.eval()
    return True


# --------------------------------------------------------------------------------------------
# radlads train: one stage on an existing student folder
# --------------------------------------------------------------------------------------------


def add_arguments(p) -> None:
    from radlads.config import add_config_arguments

    p.add_argument("--stage", type=int, required=True, choices=[1, 2, 3], help="which stage to run")
    p.add_argument("--student", required=True, help="student folder (from radlads init or a previous stage)")
    p.add_argument("--teacher", required=True, help="teacher spec the student was made from")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, and the trained student")
    add_config_arguments(p)


def run(args) -> int:
    from radlads.config import load_config, overrides_from_args, save_config
    from radlads.convert import prepare_data, setup_runtime
    from radlads.export import save_model_into
    from radlads.model.modeling_radlads import RadladsForCausalLM
    from radlads.teachers import load_teacher

    overrides = overrides_from_args(args)
    overrides.update({"teacher": args.teacher, "out": args.out, "stages": [args.stage]})
    cfg = load_config(args.preset, args.config, overrides, args.set)
    setup_runtime(cfg)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.rank() == 0:
        save_config(cfg, run_dir / "run.yaml")
    teacher, tokenizer = load_teacher(cfg.teacher)
    if not (Path(args.student) / "config.json").is_file():
        raise RadladsError(f"student folder not found: {args.student}")
    student = RadladsForCausalLM.from_pretrained(args.student)
    prepare_data(cfg, teacher, tokenizer, run_dir)
    done = train_stage(args.stage, cfg, teacher, student, tokenizer, run_dir, resume=args.resume,
                       stop_after_steps=args.stop_after_steps)
    if done and dist.rank() == 0:
        save_model_into(student, tokenizer, run_dir)
        print(f"stage {args.stage} done: student saved in {run_dir}")
    elif not done and dist.rank() == 0:
        print(f"stopped early; continue with the same command plus --resume")
    dist.cleanup()
    return 0
