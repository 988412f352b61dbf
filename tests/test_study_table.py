"""benchmarks/study_table.py counts a resumed run's wall time once per step, not per invocation."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("study_table", Path(__file__).parents[1] / "benchmarks/study_table.py")
study_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_table)


def summary_of(tmp_path, lines):
    """stage_summary of a metrics.jsonl holding (stage, step, tokens, elapsed_s) rows."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"stage": st, "step": s, "tokens": t, "elapsed_s": e}) + "\n"
                            for st, s, t, e in lines))
    return study_table.stage_summary(path)


def test_resumed_stage_adds_each_invocation_up_to_the_step_the_next_resumed_from(tmp_path):
    # First invocation: steps 1-4 at 10 s each, killed after step 4, last checkpoint at step 2.
    # Second: resumes at step 3, its clock restarting, and ends at step 5; stage 2 runs once.
    lines = [(1, s, 1000 * s, 10.0 * s) for s in (1, 2, 3, 4)] + [(1, s, 1000 * s, 12.0 * (s - 2)) for s in (3, 4, 5)]
    lines += [(2, s, 500 * s, 7.0 * s) for s in (1, 2)]
    summary = summary_of(tmp_path, lines)
    assert summary[1] == {"tokens": 5000, "seconds": 20.0 + 36.0, "steps": 5}
    assert summary[2] == {"tokens": 1000, "seconds": 14.0, "steps": 2}


def test_resumed_stage_whose_rows_after_the_checkpoint_were_dropped(tmp_path):
    # `--resume` drops the killed invocation's rows after its checkpoint (step 2): only the clock
    # restarting shows where the second invocation begins.
    lines = [(1, s, 1000 * s, 10.0 * s) for s in (1, 2)] + [(1, s, 1000 * s, 12.0 * (s - 2)) for s in (3, 4, 5)]
    assert summary_of(tmp_path, lines)[1]["seconds"] == 20.0 + 36.0
