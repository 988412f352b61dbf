"""lm-eval task definitions that read the local benchmark files instead of the Hugging Face hub.

Each task starts from lm-eval's own installed YAML (prompt templates, `process_docs`,
`process_results`, metrics, version), loaded with lm-eval's own loader so that `!function`
references resolve to the functions shipped in lm-eval. Only where the documents come from is
replaced: `dataset_path` becomes the `datasets` json/text builder over one local file, which needs
no network. Scoring is therefore lm-eval's, item for item.

Some tasks need more than a new path:
- arc_easy, arc_challenge: the local files store `question`, `choices` (a list of strings) and
  `gold` (an index) instead of the hub's `choices.text` / `answerKey`; the prompt stays lm-eval's
  "Question: ...\\nAnswer:".
- mmlu: a group, as lm-eval's `mmlu` (0-shot `mmlu/default`): one task per subject from lm-eval's
  own per-subject YAML (its description line, template and A/B/C/D choices), each reading its
  subject's rows of the one local file (`dev.jsonl` as its few-shot split), grouped into
  lm-eval's four categories and aggregated as lm-eval's group configs say (`LocalGroup`).
- wikitext: lm-eval reads `EleutherAI/wikitext_document_level`, whose builder cuts the raw
  WikiText-2 test file into articles at top-level headings (` = Title = `). `wikitext_pages` applies
  the same rule to the local raw file. That file has its blank lines removed, so each page is its
  non-blank lines joined with "\\n": word counts (split on whitespace) are identical to lm-eval's,
  byte counts are slightly smaller (the blank separator lines are missing, ~0.1-0.2% of the bytes).
"""

from __future__ import annotations

import functools
import json
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
    "arc_challenge": LocalTask(
        "arc/arc_challenge.yaml",
        "arc_challenge/test.jsonl",
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


@dataclass(frozen=True)
class LocalGroup:
    """An lm-eval group over local files: its folder of lm-eval YAMLs, its top group config."""

    lm_eval_dir: str  # relative to lm_eval/tasks/
    group_yaml: str  # the top group's config, in lm_eval_dir
    data_file: str  # relative to the eval data folder: every subtask's rows, with a `subject` field
    fewshot_file: str  # same fields: the few-shot split
    subject_prefix: str  # subtask name = prefix + subject


LOCAL_GROUPS: dict[str, LocalGroup] = {
    "mmlu": LocalGroup("mmlu/default", "_mmlu.yaml", "mmlu/test.jsonl", "mmlu/dev.jsonl", "mmlu_"),
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


# --------------------------------------------------------------------------------------------
# Groups (mmlu)
# --------------------------------------------------------------------------------------------


@dataclass
class GroupNode:
    """One level of an lm-eval group: subgroups or leaf task names, and how its metrics aggregate."""

    name: str
    children: list[GroupNode | str]
    aggregate: dict[str, bool]  # metric -> weight_by_size
    version: Any = None  # the group config's metadata version

    def leaves(self) -> list[str]:
        return [leaf for c in self.children for leaf in ([c] if isinstance(c, str) else c.leaves())]


@functools.lru_cache(maxsize=8)
def _read_rows(path: str) -> tuple[dict, ...]:
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def subject_dataset(test_file: str, fewshot_file: str, subject: str, **_metadata):
    """The `datasets` splits of one subject: its rows of the test and few-shot files, in file order."""
    import datasets

    def split(path: str) -> datasets.Dataset:
        rows = [r for r in _read_rows(path) if r["subject"] == subject]
        return datasets.Dataset.from_list(rows)

    return datasets.DatasetDict({"test": split(test_file), "dev": split(fewshot_file)})


def group_configs(name: str, data_dir: Path) -> tuple[GroupNode, dict[str, dict[str, Any]]]:
    """lm-eval's group tree for `name` and each subtask's config, reading the local files.

    The tree is lm-eval's: the top group's YAML lists subgroups, each subgroup gathers the subject
    tasks tagged with its tag. Subtasks are returned in the local file's order of subjects, which
    is the order `--items` counts the group's documents in.
    """
    import lm_eval

    spec = LOCAL_GROUPS[name]
    test_file, fewshot_file = Path(data_dir) / spec.data_file, Path(data_dir) / spec.fewshot_file
    for f in (test_file, fewshot_file):
        if not f.is_file():
            raise RadladsError(f"eval file for {name} not found: {f}")
    folder = Path(lm_eval.__file__).parent / "tasks" / spec.lm_eval_dir
    top = _load_lm_eval_yaml(f"{spec.lm_eval_dir}/{spec.group_yaml}")
    # Each subject YAML (a task with a tag) and each subgroup YAML (a group over a tag), by name.
    by_tag: dict[str, list[str]] = {}
    subject_cfgs: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        cfg = _load_lm_eval_yaml(f"{spec.lm_eval_dir}/{path.name}")
        if "group" in cfg:
            groups[cfg["group"]] = cfg
        elif "task" in cfg:
            subject_cfgs[cfg["task"]] = cfg
            tags = cfg.get("tag") or []
            for tag in [tags] if isinstance(tags, str) else tags:
                by_tag.setdefault(tag, []).append(cfg["task"])

    def node(cfg: dict[str, Any]) -> GroupNode:
        children: list[GroupNode | str] = []
        for entry in cfg["task"]:
            if entry in groups:
                children.append(node(groups[entry]))
            elif entry in by_tag:
                children += by_tag[entry]
            elif entry in subject_cfgs:
                children.append(entry)
            else:
                raise RadladsError(f"lm-eval group {cfg['group']} lists {entry}, which radlads cannot resolve")
        aggregate = {m["metric"]: bool(m.get("weight_by_size", True)) for m in cfg.get("aggregate_metric_list", [])}
        return GroupNode(cfg["group"], children, aggregate, (cfg.get("metadata") or {}).get("version"))

    tree = node(top)
    subjects = list(dict.fromkeys(r["subject"] for r in _read_rows(str(test_file))))
    unknown = [s for s in subjects if spec.subject_prefix + s not in subject_cfgs]
    if unknown:
        raise RadladsError(f"{test_file}: subjects lm-eval's {name} does not have: {', '.join(unknown[:5])}")
    configs = {}
    for subject in subjects:
        cfg = dict(subject_cfgs[spec.subject_prefix + subject])
        cfg.pop("tag", None)
        cfg.update(
            dataset_path=None,
            dataset_name=None,
            dataset_kwargs=None,
            custom_dataset=functools.partial(subject_dataset, str(test_file), str(fewshot_file), subject),
            training_split=None,
            validation_split=None,
            test_split="test",
            fewshot_split="dev",
        )
        cfg["metadata"] = dict(cfg.get("metadata") or {}, data_file=str(test_file))
        configs[cfg["task"]] = cfg
    return tree, configs


def build_group(name: str, data_dir: Path):
    """(lm-eval's group tree, {subtask name: ready lm-eval Task}) for one of LOCAL_GROUPS."""
    from lm_eval.api.task import ConfigurableTask

    tree, configs = group_configs(name, data_dir)
    return tree, {task: ConfigurableTask(config=cfg) for task, cfg in configs.items()}
