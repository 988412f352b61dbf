"""`radlads convert`: teacher -> attention transfer -> stage 1 -> stage 2 (-> stage 3) -> export.

The run folder OUT ends up as a loadable Hugging Face model (safetensors, config, tokenizer,
modeling code) with run.yaml (the full resolved config), metrics.jsonl and checkpoints/ beside
it. Each finished stage leaves its student in checkpoints/stageN/final/, so `--resume` restarts
a killed conversion at the first unfinished stage, from that stage's last checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import yaml

from radlads import distributed as dist
from radlads.config import RunConfig, add_config_arguments, load_config, overrides_from_args, save_config, to_dict
from radlads.errors import RadladsError


def setup_runtime(cfg: RunConfig) -> None:
    dist.init()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)


def prepare_data(cfg: RunConfig, teacher, tokenizer, run_dir: Path) -> None:
    """Resolve the default `teacher` data spec into a cached file of teacher samples."""
    if cfg.data.spec != "teacher":
        return
    path = run_dir / "teacher_samples.jsonl"
    if dist.rank() == 0 and not path.exists():
        from radlads.data import sample_teacher_corpus

        print(f"radlads: no --data given: sampling {cfg.data.teacher_samples} documents from the teacher "
              f"into {path}", file=sys.stderr)
        sample_teacher_corpus(teacher, tokenizer, path, cfg.data.teacher_samples, cfg.data.teacher_sample_tokens,
                              seed=cfg.seed)
    dist.barrier()
    cfg.data.spec = str(path)


def stage_final_dir(run_dir: Path, stage: int) -> Path:
    return run_dir / "checkpoints" / f"stage{stage}" / "final"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "run.yaml").is_file():
            raise RadladsError(f"nothing to resume in {run_dir}: no run.yaml there")
        return
    if (run_dir / "run.yaml").exists():
        raise RadladsError(f"{run_dir} already holds a run: pass --resume to continue it, or use a new --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RadladsError(f"{run_dir} exists and is not empty; choose a new --out")


def convert(cfg: RunConfig, resume: bool = False, stop_after_steps: int | None = None,
            data_factory=None, teacher_and_tokenizer=None) -> bool:
    """Run the whole conversion; True when every stage finished and the model was exported.

    `stop_after_steps` ends this invocation (resumably) after that many optimizer steps in total.
    """
    from radlads.export import save_model, save_model_into
    from radlads.teachers import load_teacher
    from radlads.train import load_student_dir, total_steps, train_stage
    from radlads.transfer import build_student

    setup_runtime(cfg)
    run_dir = Path(cfg.out)
    check_run_dir(run_dir, resume)
    dist.barrier()  # every rank has looked before rank 0 writes run.yaml
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.rank() == 0:
        if resume:
            warn_if_changed(cfg, run_dir / "run.yaml")
        save_config(cfg, run_dir / "run.yaml")

    teacher, tokenizer = teacher_and_tokenizer or load_teacher(cfg.teacher)
    if data_factory is None:
        prepare_data(cfg, teacher, tokenizer, run_dir)

    # The latest finished stage's student, or a fresh attention transfer.
    done = [n for n in cfg.stages if (stage_final_dir(run_dir, n) / "config.json").exists()]
    if done:
        student = load_student_dir(stage_final_dir(run_dir, done[-1]))
        if dist.rank() == 0:
            print(f"radlads: resuming after stage {done[-1]}", file=sys.stderr)
    else:
        s = cfg.student
        student = build_student(teacher, s.arch, s.attention_layers, teacher_spec=cfg.teacher, seed=cfg.seed,
                                use_rope=s.use_rope, use_groupnorm=s.use_groupnorm)

    steps_left = stop_after_steps
    for stage in cfg.stages:
        if stage in done:
            continue
        t0 = time.perf_counter()
        start_step = _checkpoint_step(run_dir, stage) if resume else 0
        finished = train_stage(stage, cfg, teacher, student, tokenizer, run_dir, resume=resume,
                               stop_after_steps=steps_left, data_factory=data_factory)
        if not finished:
            if dist.rank() == 0:
                print(f"radlads: stopped in stage {stage}; continue with the same command plus --resume",
                      file=sys.stderr)
            dist.cleanup()
            return False
        if steps_left is not None:
            steps_left -= total_steps(cfg.stage(stage)) - start_step
        final = stage_final_dir(run_dir, stage)
        full = dist.unsharded(student)
        if dist.rank() == 0:
            save_model(full, tokenizer, final)
            print(f"radlads: stage {stage} finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        dist.barrier()
        if dist.is_sharded(student):  # FSDP2 shards in place: the next stage starts from a plain copy
            student = load_student_dir(final)
        resume = True  # later stages may have checkpoints from an earlier interrupted run
        if steps_left is not None and steps_left <= 0 and stage != cfg.stages[-1]:
            dist.cleanup()
            return False

    full = dist.unsharded(student)
    if dist.rank() == 0:
        save_model_into(full, tokenizer, run_dir)
        print(f"converted student saved in {run_dir}")
    dist.cleanup()
    return True


def _checkpoint_step(run_dir: Path, stage: int) -> int:
    from radlads.checkpoint import latest_checkpoint

    path = latest_checkpoint(run_dir / "checkpoints" / f"stage{stage}")
    return json.loads((path / "state.json").read_text())["step"] if path else 0


def warn_if_changed(cfg: RunConfig, saved: Path) -> None:
    """A resumed run normally repeats its first command; say so when the config differs."""
    old = yaml.safe_load(saved.read_text()) or {}
    new = to_dict(cfg)

    def diff(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                yield from diff(a[key], b[key], f"{prefix}{key}.")
            elif a.get(key) != b.get(key):
                yield f"{prefix}{key}"

    changed = list(diff(old, new))
    if changed:
        print(f"radlads: resuming with changed config keys: {', '.join(changed)}", file=sys.stderr)


def add_arguments(p) -> None:
    from radlads.transfer import add_student_arguments

    p.add_argument("--teacher", required=True, help="teacher: HF folder, .gguf file, preset or hub id")
    p.add_argument("--out", required=True, help="run folder; ends up as the converted Hugging Face model")
    p.add_argument("--stages", help="which stages to run, e.g. 1,2 (default) or 1,2,3")
    add_student_arguments(p)
    for action in p._actions:  # student options default to None here so YAML and presets can set them
        if action.dest in ("arch", "attention_layers", "use_rope", "use_groupnorm"):
            action.default = None
    add_config_arguments(p)


def run(args) -> int:
    overrides = overrides_from_args(args)
    overrides.update({"teacher": args.teacher, "out": args.out})
    if args.stages:
        overrides["stages"] = args.stages
    student = {k: v for k, v in {"arch": args.arch, "attention_layers": args.attention_layers,
                                  "use_rope": args.use_rope, "use_groupnorm": args.use_groupnorm}.items()
               if v is not None}
    if student:
        overrides["student"] = student
    cfg = load_config(args.preset, args.config, overrides, args.set)
    convert(cfg, resume=args.resume, stop_after_steps=args.stop_after_steps)
    return 0
