"""Where everything of a run lives: the one module that knows the run folder's layout.

    RUN/run.yaml                          the full resolved config (radlads.config)
    RUN/metrics.jsonl                     one line per logged step: stage, step, loss, lr, tok/s, ...
    RUN/teacher_samples.jsonl             the corpus sampled from the teacher when no --data is given
    RUN/checkpoints/stageN/step-XXXXXXX/  resumable checkpoints, latest.json points at the newest
                                          (their content: radlads.checkpoint)
    RUN/checkpoints/stageN/final/         the student as that stage left it (a Hugging Face folder)
    RUN/*                                 after the last stage, the exported model (radlads.export)
"""

from __future__ import annotations

import json
from pathlib import Path

from radlads.checkpoint import latest_checkpoint
from radlads.errors import RadladsError


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "run.yaml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.teacher_samples = self.path / "teacher_samples.jsonl"

    def checkpoints(self, stage: int) -> Path:
        return self.path / "checkpoints" / f"stage{stage}"

    def stage_final(self, stage: int) -> Path:
        return self.checkpoints(stage) / "final"

    def finished_stages(self, stages: list[int]) -> list[int]:
        return [n for n in stages if (self.stage_final(n) / "config.json").exists()]

    def latest_checkpoint(self, stage: int) -> Path | None:
        return latest_checkpoint(self.checkpoints(stage))

    def checkpoint_step(self, stage: int) -> int:
        """The step of the stage's latest checkpoint (0 without one)."""
        path = self.latest_checkpoint(stage)
        return json.loads((path / "state.json").read_text())["step"] if path else 0

    def check_new_or_resume(self, resume: bool) -> None:
        """A new run needs an empty folder; a resumed one needs the run.yaml it started with."""
        if resume:
            if not self.config_file.is_file():
                raise RadladsError(f"nothing to resume in {self.path}: no run.yaml there")
            return
        if self.config_file.exists():
            raise RadladsError(f"{self.path} already holds a run: pass --resume to continue it, or use a new --out")
        if self.path.exists() and any(self.path.iterdir()):
            raise RadladsError(f"{self.path} exists and is not empty; choose a new --out")

    def check_no_checkpoints(self, stage: int) -> None:
        """Before a stage starts afresh: refuse to mix its steps with an earlier run's."""
        folder = self.checkpoints(stage)
        if any(folder.glob("step-*")):
            raise RadladsError(f"{folder} already has checkpoints: pass --resume to continue, or use a new --out")

    def log(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def drop_metrics_after(self, stage: int, step: int) -> None:
        """A killed run may have logged steps past its last checkpoint; the resumed run logs them again."""
        if not self.metrics_file.is_file():
            return
        rows = self.metrics_file.read_text().splitlines()
        kept = [r for r in rows if not (json.loads(r)["stage"] == stage and json.loads(r)["step"] > step)]
        if len(kept) != len(rows):
            self.metrics_file.write_text("".join(r + "\n" for r in kept))
