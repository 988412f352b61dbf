"""The conversion pipeline: teacher -> attention transfer -> stage 1 -> stage 2 (-> stage 3) -> export.

Three entry points, one per command that runs part of it:
  - `init_student`: attention transfer alone, saved as a student folder (`radlads init`);
  - `train_one_stage`: one stage on an existing student folder (`radlads train`);
  - `convert`: the whole pipeline (`radlads convert`). Each finished stage leaves its student in
    checkpoints/stageN/final/, so `resume` restarts a killed conversion at the first unfinished
    stage, from that stage's last checkpoint. The run folder ends up as a loadable Hugging Face
    model with run.yaml, metrics.jsonl and checkpoints/ beside it (radlads.run_folder).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from radlads import distributed as dist
from radlads.config import RunConfig, save_config, to_dict
from radlads.run_folder import RunFolder
from radlads.runtime import setup_runtime


def init_student(teacher_spec: str, out: str, arch: str = "rwkv7", attention_layers=(), use_rope: bool = False,
                 use_groupnorm: bool = False, dtype: str = "fp32"):
    """Load the teacher, build the attention-transferred student, save it (with the tokenizer) in `out`."""
    from radlads.export import save_model
    from radlads.teachers import load_teacher
    from radlads.transfer import build_student

    teacher, tokenizer = load_teacher(teacher_spec, dtype=dtype)
    student = build_student(teacher, arch, attention_layers, teacher_spec=teacher_spec, use_rope=use_rope,
                            use_groupnorm=use_groupnorm)
    save_model(student, tokenizer, out)
    return student


def prepare_data(cfg: RunConfig, teacher, tokenizer, run: RunFolder) -> None:
    """Resolve the default `teacher` data spec into a cached file of teacher samples."""
    if cfg.data.spec != "teacher":
        return
    path = run.teacher_samples
    if dist.rank() == 0 and not path.exists():
        from radlads.data import sample_teacher_corpus

        print(f"radlads: no --data given: sampling {cfg.data.teacher_samples} documents from the teacher "
              f"into {path}", file=sys.stderr)
        sample_teacher_corpus(teacher, tokenizer, path, cfg.data.teacher_samples, cfg.data.teacher_sample_tokens,
                              seed=cfg.seed)
    dist.barrier()
    cfg.data.spec = str(path)


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


def train_one_stage(cfg: RunConfig, student_dir: str, resume: bool = False,
                    stop_after_steps: int | None = None) -> bool:
    """Train the student in `student_dir` for the one stage in cfg.stages; export it into cfg.out when done."""
    from radlads.export import save_model_into
    from radlads.loading import load_student
    from radlads.teachers import load_teacher
    from radlads.train import train_stage

    (stage,) = cfg.stages
    student = load_student(student_dir, exported_code=False)
    setup_runtime(cfg)
    run = RunFolder(cfg.out)
    run.path.mkdir(parents=True, exist_ok=True)
    if dist.rank() == 0:
        save_config(cfg, run.config_file)
    teacher, tokenizer = load_teacher(cfg.teacher)
    prepare_data(cfg, teacher, tokenizer, run)
    done = train_stage(stage, cfg, teacher, student, tokenizer, run.path, resume=resume,
                       stop_after_steps=stop_after_steps)
    if done and dist.rank() == 0:
        save_model_into(student, tokenizer, run.path)
        print(f"stage {stage} done: student saved in {run.path}")
    elif not done and dist.rank() == 0:
        print("stopped early; continue with the same command plus --resume", file=sys.stderr)
    dist.cleanup()
    return done


def fresh_student(cfg: RunConfig, teacher, tokenizer):
    """Attention transfer, then (student.teacher_init) the new time-mix parameters fitted to the teacher."""
    from radlads.transfer import build_student

    s = cfg.student
    student = build_student(teacher, s.arch, s.attention_layers, teacher_spec=cfg.teacher, seed=cfg.seed,
                            use_rope=s.use_rope, use_groupnorm=s.use_groupnorm)
    if s.teacher_init != "none":
        from radlads.data import validation_batches
        from radlads.teacher_init import initialise_from_teacher, resolve_mode

        # training text, never the held-out split: these sequences also come up in stage 1
        batches = validation_batches(cfg.data.spec, tokenizer, cfg.stage1.seq_len, s.teacher_init_sequences,
                                     cfg.data.text_field, split="train", valid_fraction=cfg.data.valid_fraction)
        initialise_from_teacher(student, teacher, batches, s.teacher_init)
        if dist.rank() == 0:
            print(f"radlads: time-mix initialised from the teacher ({resolve_mode(s.teacher_init, s.arch)}, "
                  f"{len(batches)} sequences)",
                  file=sys.stderr)
    return student


def convert(cfg: RunConfig, resume: bool = False, stop_after_steps: int | None = None,
            data_factory=None, teacher_and_tokenizer=None) -> bool:
    """Run the whole conversion; True when every stage finished and the model was exported.

    `stop_after_steps` ends this invocation (resumably) after that many optimizer steps in total.
    """
    from radlads.export import save_model, save_model_into
    from radlads.loading import load_student
    from radlads.teachers import load_teacher
    from radlads.train import train_stage

    setup_runtime(cfg)
    run = RunFolder(cfg.out)
    run.check_new_or_resume(resume)
    dist.barrier()  # every rank has looked before rank 0 writes run.yaml
    run.path.mkdir(parents=True, exist_ok=True)
    if dist.rank() == 0:
        if resume:
            warn_if_changed(cfg, run.config_file)
        save_config(cfg, run.config_file)

    teacher, tokenizer = teacher_and_tokenizer or load_teacher(cfg.teacher)
    if data_factory is None:
        prepare_data(cfg, teacher, tokenizer, run)

    # The latest finished stage's student, or a fresh attention transfer.
    done = run.finished_stages(cfg.stages)
    if done:
        student = load_student(run.stage_final(done[-1]), exported_code=False)
        if dist.rank() == 0:
            print(f"radlads: resuming after stage {done[-1]}", file=sys.stderr)
    else:
        student = fresh_student(cfg, teacher, tokenizer)

    steps_left = stop_after_steps
    for stage in cfg.stages:
        if stage in done:
            continue
        t0 = time.perf_counter()
        start_step = run.checkpoint_step(stage) if resume else 0
        finished = train_stage(stage, cfg, teacher, student, tokenizer, run.path, resume=resume,
                               stop_after_steps=steps_left, data_factory=data_factory)
        if not finished:
            if dist.rank() == 0:
                print(f"radlads: stopped in stage {stage}; continue with the same command plus --resume",
                      file=sys.stderr)
            dist.cleanup()
            return False
        if steps_left is not None:  # the stage's own count: a time budget may end it before its tokens
            steps_left -= run.checkpoint_step(stage) - start_step
        final = run.stage_final(stage)
        full = dist.unsharded(student)
        if dist.rank() == 0:
            save_model(full, tokenizer, final)
            print(f"radlads: stage {stage} finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        dist.barrier()
        if dist.is_sharded(student):  # FSDP2 shards in place: the next stage starts from a plain copy
            student = load_student(final, exported_code=False)
        resume = True  # later stages may have checkpoints from an earlier interrupted run
        if steps_left is not None and steps_left <= 0 and stage != cfg.stages[-1]:
            dist.cleanup()
            return False

    full = dist.unsharded(student)
    if dist.rank() == 0:
        save_model_into(full, tokenizer, run.path)
        print(f"converted student saved in {run.path}")
    dist.cleanup()
    return True
