"""mmlu and arc_challenge in `radlads eval`: prompts equal to lm-eval's built-in tasks, lm-eval's group
aggregation, shards of a group, and the one-forward-per-question path for one-token choices."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import lm_eval  # noqa: E402
from lm_eval.api.task import ConfigurableTask  # noqa: E402

from radlads import eval_lm, eval_results  # noqa: E402
from radlads import evaluate as ev  # noqa: E402
from radlads.cli import main  # noqa: E402
from radlads.eval_tasks import _load_lm_eval_yaml, build_group, build_task  # noqa: E402
from radlads.loading import load_model  # noqa: E402

REAL_EVAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"
MMLU_DIR = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
SUBJECTS = sorted(p.name[len("mmlu_"):-len(".yaml")] for p in MMLU_DIR.glob("mmlu_*.yaml"))


def _mmlu_rows(per_subject: int, tag: str) -> list[dict]:
    rows = []
    for s in SUBJECTS:
        for i in range(per_subject):
            rows.append({"subject": s, "question": f" {tag} {i}: which {s.replace('_', ' ')} fact holds? ",
                         "choices": [f"{s} one", "two", f"three {i}", "four, five"], "answer": (i + len(s)) % 4})
    return rows


ARC_CHALLENGE = [
    {"id": "c1", "question": "Which gas do plants take in?", "choices": ["oxygen", "carbon dioxide", "helium"],
     "gold": 1},
    {"id": "c2", "question": "What makes a day?", "choices": ["Earth's rotation", "the Moon", "tides", "wind",
                                                               "clouds"], "gold": 0},
    {"id": "c3", "question": "Ice is water that is", "choices": ["solid", "gas", "plasma", "hot"], "gold": 0},
]


def write_mmlu_arc(root: Path, per_subject: int = 2) -> Path:
    """Local mmlu (every subject) and arc_challenge files in the shared data's format."""
    (root / "mmlu").mkdir(parents=True, exist_ok=True)
    (root / "arc_challenge").mkdir(parents=True, exist_ok=True)
    for name, rows in [("mmlu/test.jsonl", _mmlu_rows(per_subject, "Q")), ("mmlu/dev.jsonl", _mmlu_rows(1, "Dev")),
                       ("arc_challenge/test.jsonl", ARC_CHALLENGE)]:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mmlu_arc(tmp_path_factory.mktemp("mmlu") / "data")


# --------------------------------------------------------------------------------------------
# lm-eval's built-in tasks, their documents built from the local rows (nothing downloaded)
# --------------------------------------------------------------------------------------------


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _builtin_loader(data_dir: Path):
    """datasets.load_dataset for the hub datasets the built-in tasks name, from the local files:
    cais/mmlu has the local fields; allenai/ai2_arc stores choices as {text, label} and answerKey."""
    real = datasets.load_dataset

    def load_dataset(path=None, name=None, **kwargs):
        if path == "cais/mmlu":
            split = {k: [r for r in _read(data_dir / "mmlu" / f"{k}.jsonl") if r["subject"] == name]
                     for k in ("test", "dev")}
            return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in split.items()})
        if path == "allenai/ai2_arc" and name == "ARC-Challenge":
            rows = []
            for r in _read(data_dir / "arc_challenge" / "test.jsonl"):
                labels = list("ABCDE")[: len(r["choices"])]
                rows.append({"id": r["id"], "question": r["question"],
                             "choices": {"text": r["choices"], "label": labels}, "answerKey": labels[r["gold"]]})
            ds = datasets.Dataset.from_list(rows)
            return datasets.DatasetDict({"train": ds, "validation": ds, "test": ds})
        return real(path=path, name=name, **kwargs)

    return load_dataset


def _builtin_task(relative_yaml: str, data_dir: Path, monkeypatch):
    """lm-eval's own task from its installed YAML, unchanged, over documents from the local rows."""
    monkeypatch.setattr(datasets, "load_dataset", _builtin_loader(data_dir))
    task = ConfigurableTask(config=_load_lm_eval_yaml(relative_yaml))
    monkeypatch.undo()
    task.set_config(key="num_fewshot", value=0)
    return task


def _requests(task) -> list[tuple]:
    """Every request the task makes, as (doc index, context, continuation, target)."""
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return [(inst.doc_id, *inst.args, task.doc_to_target(inst.doc)) for inst in task.instances]


def _prompt_equality(data_dir: Path, monkeypatch):
    ours_arc = build_task("arc_challenge", data_dir)
    ev._prepare(ours_arc)
    theirs_arc = _builtin_task("arc/arc_challenge.yaml", data_dir, monkeypatch)
    arc_ours, arc_theirs = _requests(ours_arc), _requests(theirs_arc)
    assert len(arc_ours) == sum(len(r["choices"]) for r in _read(data_dir / "arc_challenge" / "test.jsonl"))
    assert arc_ours == arc_theirs  # character for character: contexts, continuations, gold indices

    group = ev._build_task("mmlu", data_dir)["mmlu"]
    assert list(group.tasks) == [f"mmlu_{s}" for s in dict.fromkeys(
        r["subject"] for r in _read(data_dir / "mmlu" / "test.jsonl"))]
    n = 0
    for name, ours in group.tasks.items():
        theirs = _builtin_task(f"mmlu/default/{name}.yaml", data_dir, monkeypatch)
        mine, builtin = _requests(ours), _requests(theirs)
        assert mine == builtin, name
        assert [c for _, _, c, _ in mine[:4]] == [" A", " B", " C", " D"]
        n += len(mine)
    assert n == 4 * len(_read(data_dir / "mmlu" / "test.jsonl"))
    return arc_ours, group


def test_prompts_equal_lm_evals_builtin_tasks(data, monkeypatch):
    arc, group = _prompt_equality(data, monkeypatch)
    # What the prompts look like (the built-in YAML's description line, template, delimiter).
    assert arc[0][1] == "Question: Which gas do plants take in?\nAnswer:" and arc[0][2] == " oxygen"
    algebra = _requests(group.tasks["mmlu_abstract_algebra"])
    assert algebra[0][1] == ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                             "Q 0: which abstract algebra fact holds?\nA. abstract_algebra one\nB. two\n"
                             "C. three 0\nD. four, five\nAnswer:")
    assert algebra[0][3] == (0 + len("abstract_algebra")) % 4


@pytest.mark.skipif(not REAL_EVAL_DATA.is_dir(), reason="shared eval data not beside the repository")
def test_prompts_equal_lm_evals_builtin_tasks_on_the_real_files(monkeypatch):
    arc, group = _prompt_equality(REAL_EVAL_DATA, monkeypatch)
    assert len({r[0] for r in arc}) == 1172
    assert group.n_docs() == 14042 and len(group.tasks) == 57


def test_few_shot_draws_the_subjects_dev_rows(data):
    group = ev._build_task("mmlu", data)["mmlu"]
    task = group.tasks["mmlu_anatomy"]
    task.set_config(key="num_fewshot", value=1)
    try:
        context = task.fewshot_context(task.eval_docs[0], num_fewshot=1)
    finally:
        task.set_config(key="num_fewshot", value=0)
    assert "Dev 0: which anatomy fact holds?" in context and context.count("Answer:") == 2


# --------------------------------------------------------------------------------------------
# The group aggregate, as lm-eval computes it
# --------------------------------------------------------------------------------------------


def test_group_aggregate_is_lm_evals(data):
    from lm_eval.api.group import Group

    tree, tasks = build_group("mmlu", data)
    assert [c.name for c in tree.children] == ["mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"]
    assert sorted(tree.leaves()) == sorted(f"mmlu_{s}" for s in SUBJECTS) and len(SUBJECTS) == 57
    # Uneven sizes and accuracies, one subject missing (not scored in this slice), one of size 1.
    leaves = {}
    for k, name in enumerate(tree.leaves()):
        if k == 5:
            continue
        size = 1 if k == 7 else 3 + k % 11
        acc = (k * 7 % size) / size
        err = (acc * (1 - acc) / (size - 1)) ** 0.5 if size > 1 else 0.0
        leaves[name] = {"n": size, "metrics": {"acc": {"value": acc, "stderr": err}}}
    ours = eval_results.aggregate_group(tree, leaves)

    def lm_eval_group(node):
        group = Group.from_config(_load_lm_eval_yaml(f"mmlu/default/_{node.name}.yaml"))
        for child in node.children:
            group.add(tasks[child] if isinstance(child, str) else lm_eval_group(child))
        return group

    flat = {t: {"acc,none": v["metrics"]["acc"]["value"], "acc_stderr,none": v["metrics"]["acc"]["stderr"],
                "sample_len": v["n"]} for t, v in leaves.items()}
    top = lm_eval_group(tree)
    for group in [top, *top.get_all_groups()]:
        theirs = group.aggregate(flat)
        assert ours[group.name]["metrics"]["acc"]["value"] == pytest.approx(theirs["acc,none"], rel=1e-12)
        assert ours[group.name]["metrics"]["acc"]["stderr"] == pytest.approx(theirs["acc_stderr,none"], rel=1e-12)
        assert ours[group.name]["n"] == theirs["sample_len"]
    # lm-eval pools over every leaf of the group, not over the four categories' aggregates.
    plain = sum(v["n"] * v["metrics"]["acc"]["value"] for v in leaves.values()) / sum(v["n"] for v in leaves.values())
    assert ours["mmlu"]["metrics"]["acc"]["value"] == pytest.approx(plain)


# --------------------------------------------------------------------------------------------
# The command: mmlu's per-subject results, slices, shards joined
# --------------------------------------------------------------------------------------------


def test_eval_mmlu_items_subjects_and_joined_shards(tiny_folders, data, capsys, tmp_path):
    common = ["eval", tiny_folders["student"], "--teacher", tiny_folders["teacher"], "--tasks", "mmlu,arc_challenge",
              "--eval-data", str(data)]
    whole = tmp_path / "whole.json"
    assert main([*common, "--json", str(whole)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^\| mmlu \| acc \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \| 0\.2500 \| ", table, re.M)
    assert re.search(r"^\| arc_challenge \| acc_norm \| ", table, re.M)
    assert re.search(r"^\| \*\*mmlu\*\* \| ratio, acc \| ", table, re.M)
    assert re.search(r"^\| \*\*average\*\* \| ratio, other tasks \| ", table, re.M)
    a = json.loads(whole.read_text())
    mmlu = a["models"]["teacher"]["tasks"]["mmlu"]
    assert mmlu["n"] == mmlu["n_total"] == 2 * 57 and mmlu["chance"] == 0.25
    assert set(mmlu["subtasks"]) == {"mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities",
                                     *(f"mmlu_{s}" for s in SUBJECTS)}
    assert mmlu["subtasks"]["mmlu_abstract_algebra"]["n"] == 2 and mmlu["subtasks"]["mmlu_stem"]["n"] == 2 * 19
    arc = a["models"]["teacher"]["tasks"]["arc_challenge"]
    assert arc["n"] == 3 and arc["chance"] == pytest.approx((1 / 3 + 1 / 5 + 1 / 4) / 3)

    # Shards that cut subjects in two join to the whole pass: per subject, then lm-eval's aggregate.
    common[common.index("mmlu,arc_challenge")] = "mmlu"
    shards = []
    for items in ("0:3", "3:50", "50:"):
        shards += ["--reuse", str(tmp_path / f"shard{len(shards)}.json")]
        assert main([*common, "--items", items, "--json", shards[-1]]) == 0
    part = json.loads(Path(shards[3]).read_text())["models"]["student"]["tasks"]["mmlu"]
    # items 3:50 start with anatomy's second question (two per subject, subjects in file order)
    assert part["n"] == 47 and part["subtasks"]["mmlu_anatomy"]["n"] == 1
    assert "mmlu_abstract_algebra" not in part["subtasks"]
    capsys.readouterr()
    joined = tmp_path / "joined.json"
    assert main([*common, *shards, "--json", str(joined)]) == 0
    err = capsys.readouterr().err
    assert "student mmlu: reused, joined from 3 shards (0:3, 3:50, 50:114)" in err
    b = json.loads(joined.read_text())
    for model in ("student", "teacher"):
        one, parts = a["models"][model]["tasks"]["mmlu"], b["models"][model]["tasks"]["mmlu"]
        assert parts["n"] == one["n"] and set(parts["subtasks"]) == set(one["subtasks"])
        for name, sub in one["subtasks"].items():
            assert parts["subtasks"][name]["n"] == sub["n"], name
            for key in ("value", "stderr"):
                assert parts["subtasks"][name]["metrics"]["acc"][key] == \
                    pytest.approx(sub["metrics"]["acc"][key], abs=1e-12), (name, key)
        assert parts["metrics"]["acc"]["stderr"] == pytest.approx(one["metrics"]["acc"]["stderr"], abs=1e-12)


# --------------------------------------------------------------------------------------------
# One forward per question when every choice is one token
# --------------------------------------------------------------------------------------------


def _full_sequence_logprob(model, tokens: list[int]) -> tuple[float, bool]:
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]])).logits[0, -1].float()
    lp = torch.log_softmax(logits, -1)
    return float(lp[tokens[-1]]), int(lp.argmax()) == tokens[-1]


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_one_token_choices_one_padded_forward_last_position_head(tiny_folders, which, one_thread):
    """Questions whose choices are single tokens: one forward per batch of questions (right-padded,
    each row read at its last real token), only those positions through the head, same log-probs
    as each full sequence alone; other requests keep their paths."""
    model, tok = load_model(tiny_folders[which])
    lm = eval_lm.RadladsLM(model, tok, batch_size=3, progress=False)
    lm.single_token_batch_tokens = 10**6  # rows per forward: --batch-size alone
    questions = ["Q: 2+2?\nA. 3\nB. 4\nAnswer:", "Q: the sky is?\nA. blue\nB. green\nC. red\nAnswer:",
                 "Q: x?\nAnswer:", "Q: a much longer question, with padding for the others in its batch?\nAnswer:"]
    requests = []
    for q in questions:
        context = tok.encode(q, add_special_tokens=False)
        requests += [((q, c), context, tok.encode(c, add_special_tokens=False)) for c in "ABCD"]
    multi = (("other", " four"), tok.encode("Q: 2+2, in words?\nAnswer:", add_special_tokens=False),
             tok.encode(" four", add_special_tokens=False))
    requests.append(multi)
    assert all(len(r[2]) == 1 for r in requests[:-1]) and len(multi[2]) > 1

    forwards, head_rows = [], []
    real_forward = lm._next_token_logprobs
    lm._next_token_logprobs = lambda contexts: forwards.append(len(contexts)) or real_forward(contexts)
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: head_rows.append(tuple(out.shape)))
    try:
        got = lm._loglikelihood_tokens(requests)
    finally:
        hook.remove()
    assert forwards == [3, 1]  # four questions in batches of 3: two forwards, not 16
    vocab = model.get_output_embeddings().out_features
    assert head_rows[:2] == [(3, 1, vocab), (1, 1, vocab)]  # the head saw one position per question
    for (_, context, cont), (logprob, greedy) in zip(requests[:-1], got[:-1]):
        want_lp, want_greedy = _full_sequence_logprob(model, list(context) + list(cont))
        assert logprob == pytest.approx(want_lp, abs=1e-4)
        assert greedy == want_greedy
    # A token budget per forward (rows x longest row) caps the rows too.
    forwards.clear()
    lm.single_token_batch_tokens = 2 * max(len(r[1]) for r in requests)
    again = lm._loglikelihood_tokens(requests)
    assert forwards == [2, 2] and [g[0] for g in again] == pytest.approx([g[0] for g in got], abs=1e-5)
    # The multi-token choice went the ordinary way, with the same value as the full sequence.
    with torch.no_grad():
        tokens = list(multi[1]) + list(multi[2])
        lp = torch.log_softmax(model(torch.tensor([tokens[:-1]])).logits[0].float(), -1)
    want = sum(float(lp[p - 1, tokens[p]]) for p in range(len(multi[1]), len(tokens)))
    assert got[-1][0] == pytest.approx(want, abs=1e-4)
