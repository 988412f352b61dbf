"""lm-eval task definitions that read the local benchmark files instead of the Hugging Face hub.

Each task starts from lm-eval's own installed YAML (prompt templates, `process_docs`,
`process_results`, metrics, version), loaded with lm-eval's own loader so that `!function`
references resolve to the functions shipped in lm-eval. Only where the documents come from is
replaced: `dataset_path` becomes the `datasets` json/text builder over one local file, which needs
no network. Scoring is therefore lm-eval's, item for item.

Two tasks need more than a new path:
- arc_easy: the local file stores `question`, `choices` (a list of strings) and `gold` (an index)
  instead of the hub's `choices.text` / `answerKey`; the prompt stays lm-eval's
  "Question: ...\\nAnswer:".
- wikitext: lm-eval reads `EleutherAI/wikitext_document_level`, whose builder cuts the raw
  WikiText-2 test file into articles at top-level headings (` = Title = `). `wikitext_pages` applies
  the same rule to the local raw file. That file has its blank lines removed, so each page is its
  non-blank lines joined with "\\n": word counts (split on whitespace) are identical to lm-eval's,
  byte counts are slightly smaller (the blank separator lines are missing, ~0.1-0.2% of the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radlads.errors import RadladsError


@dataclass(frozen=True)
class LocalTask:
    lm_eval_yaml: str  # relative to lm_eval/tasks/
    data_file: str  # relative to the eval data folder
    split: str  # "validation" or "test": the split lm-eval evaluates for this task
    builder: str = "json"  # `datasets` builder that reads the file
    overrides: dict[str, Any] = field(default_factory=dict)


def wikitext_pages(dataset):
    """Group raw WikiText lines into articles, as the wikitext_document_level builder does."""
    import datasets

    pages: list[str] = []
    lines: list[str] = []
    for line in dataset["text"]:
        if not line.strip():
            continue
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" =") and lines:
            pages.append("\n".join(lines))
            lines = []
        lines.append(line)
    if lines:
        pages.append("\n".join(lines))
    return datasets.Dataset.from_dict({"page": pages})


LOCAL_TASKS: dict[str, LocalTask] = {
    "lambada_openai": LocalTask("lambada/lambada_openai.yaml", "lambada_openai/test.jsonl", "test"),
    "hellaswag": LocalTask("hellaswag/hellaswag.yaml", "hellaswag/validation.jsonl", "validation"),
    "piqa": LocalTask("piqa/piqa.yaml", "piqa/validation.jsonl", "validation"),
    "arc_easy": LocalTask(
        "arc/arc_easy.yaml",
        "arc_easy/test.jsonl",
        "test",
        overrides={"doc_to_target": "gold", "doc_to_choice": "choices"},
    ),
    "winogrande": LocalTask("winogrande/default.yaml", "winogrande/validation.jsonl", "validation"),
    "wikitext": LocalTask(
        "wikitext/wikitext.yaml",
        "wikitext2_raw_test/wiki.test.raw",
        "test",
        builder="text",
        overrides={"process_docs": wikitext_pages},
    ),
}


def default_eval_data_dir(cwd: Path | None = None, repo_root: Path | None = None) -> Path:
    """`../shared/data/eval` from the current directory, else from the repository root.

    Raises when neither exists: there is deliberately no machine-specific fallback.
    """
    cwd = Path.cwd() if cwd is None else cwd
    repo_root = Path(__file__).resolve().parents[2] if repo_root is None else repo_root
    candidates = [cwd / ".." / "shared" / "data" / "eval", repo_root / ".." / "shared" / "data" / "eval"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = " or ".join(str(c.resolve()) for c in dict.fromkeys(candidates))
    raise RadladsError(f"no eval data folder at {tried}; pass --eval-data DIR")


def _load_lm_eval_yaml(relative: str) -> dict[str, Any]:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / relative
    if not path.is_file():
        raise RadladsError(f"installed lm-eval has no {relative}; radlads needs lm-eval 0.4.x task configs")
    try:
        from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval >= 0.4.10
    except ImportError:
        from lm_eval.utils import load_yaml_config as load_yaml  # older 0.4.x
    return dict(load_yaml(path))


def task_config(name: str, data_dir: Path) -> dict[str, Any]:
    """lm-eval's config for `name`, reading its documents from `data_dir`."""
    spec = LOCAL_TASKS[name]
    data_file = Path(data_dir) / spec.data_file
    if not data_file.is_file():
        raise RadladsError(f"eval file for {name} not found: {data_file}")
    cfg = _load_lm_eval_yaml(spec.lm_eval_yaml)
    cfg.pop("tag", None)  # tags would tie our copy to lm-eval's hub-backed groups
    cfg.update(
        dataset_path=spec.builder,
        dataset_name=None,
        dataset_kwargs={"data_files": {spec.split: str(data_file)}},
        training_split=None,
        validation_split=spec.split if spec.split == "validation" else None,
        test_split=spec.split if spec.split == "test" else None,
        fewshot_split=None,
    )
    cfg.update(spec.overrides)
    cfg["metadata"] = dict(cfg.get("metadata") or {}, data_file=str(data_file))
    return cfg


def build_task(name: str, data_dir: Path):
    """A ready lm-eval Task for one of LOCAL_TASKS (loads its documents)."""
    from lm_eval.api.task import ConfigurableTask

    return ConfigurableTask(config=task_config(name, data_dir))
