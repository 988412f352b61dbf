"""`radlads eval`: lm-eval scoring on local files, hand-checked items, RADLADS ratios, bad inputs."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radlads import eval_lm, eval_results, eval_shards  # noqa: E402
from radlads import evaluate as ev  # noqa: E402
from radlads.cli import main  # noqa: E402
from helpers import cli_error  # noqa: E402
from test_eval_mmlu import write_mmlu_arc  # noqa: E402
from radlads.errors import RadladsError  # noqa: E402
from radlads.eval_tasks import LOCAL_TASKS, build_task, default_eval_data_dir, wikitext_pages  # noqa: E402
from radlads.loading import load_model  # noqa: E402

REAL_EVAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"

WIKI_RAW = """\
 = Alpha Beta = 
 Alpha Beta is a band from the north . It formed in 1990 @-@ 91 .
 = = History = = 
 The band played , sang and left .
 = Gamma = 
 Gamma is a letter . It follows beta .
"""

FIXTURE = {
    "lambada_openai/test.jsonl": [
        {"text": "She put the cup on the table and then drank the tea"},
        {"text": "He opened the door and saw the garden"},
    ],
    "hellaswag/validation.jsonl": [
        {"activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "he",
         "ctx": "A man mixes flour. he", "endings": ["bakes [title] bread.", "[title] swims far.", "sings  loud.", "runs."],
         "label": "0"},
        {"activity_label": "Cooking", "ctx_a": "A woman cuts onions.", "ctx_b": "she",
         "ctx": "A woman cuts onions. she", "endings": ["cries.", "flies.", "jumps up.", "reads a book."],
         "label": "2"},
    ],
    "piqa/validation.jsonl": [
        {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "kick the jar", "label": 0},
        {"goal": "Dry hair", "sol1": "use a towel", "sol2": "use a spoon to dry it", "label": 1},
        {"goal": "Cool tea", "sol1": "wait a bit", "sol2": "boil it again", "label": 0},
    ],
    "arc_easy/test.jsonl": [
        {"id": "a1", "question": "What melts ice?", "choices": ["heat", "cold", "dark"], "gold": 0},
        {"id": "a2", "question": "What do plants need?", "choices": ["light", "rocks", "metal", "plastic"],
         "gold": 0},
    ],
    "winogrande/validation.jsonl": [
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "2"},
        {"sentence": "The cup fell off the shelf because _ was too small.", "option1": "cup",
         "option2": "shelf", "answer": "2"},
    ],
}


def _write_eval_data(root: Path) -> Path:
    for rel, items in FIXTURE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "wikitext2_raw_test").mkdir()
    (root / "wikitext2_raw_test" / "wiki.test.raw").write_text(WIKI_RAW)
    return write_mmlu_arc(root, per_subject=1)


@pytest.fixture(scope="module")
def env(tiny_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return dict(tiny_folders, data=_write_eval_data(root / "data"), root=root)


def _hand_logprob(model, tok, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens) given the context, from one plain forward."""
    ctx = tok.encode(context, add_special_tokens=False)
    whole = tok.encode(context + continuation, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[p - 1, whole[p]]) for p in range(len(ctx), len(whole)))


# --------------------------------------------------------------------------------------------
# The command, end to end, on an exported student and a teacher
# --------------------------------------------------------------------------------------------


def test_eval_cli_student_vs_teacher_table_and_json(env, capsys):
    out_json = env["root"] / "res.json"
    rc = main(["eval", env["student"], "--teacher", env["teacher"], "--eval-data", str(env["data"]),
               "--limit", "2", "--batch-size", "3", "--json", str(out_json)])
    assert rc == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert header == "| task | metric | student | teacher | chance | ratio student |"
    for task, metric in [("lambada_openai", "acc"), ("lambada_openai", "perplexity"), ("mmlu", "acc"),
                         ("arc_challenge", "acc"), ("arc_challenge", "acc_norm"), ("hellaswag", "acc_norm"),
                         ("piqa", "acc"), ("piqa", "acc_norm"), ("arc_easy", "acc"), ("winogrande", "acc"),
                         ("wikitext", "word_perplexity"), ("wikitext", "byte_perplexity"),
                         ("wikitext", "bits_per_byte")]:
        assert re.search(rf"^\| {task} \| {metric} \|", table, re.M), (task, metric)
    assert "**average**" in table
    result = json.loads(out_json.read_text())
    assert result["teacher"] == "teacher" and result["limit"] == 2
    assert set(result["models"]) == {"student", "teacher"}
    assert result["models"]["student"]["recurrent"] is True and result["models"]["teacher"]["recurrent"] is False
    piqa = result["models"]["student"]["tasks"]["piqa"]
    assert {"metrics", "n", "n_total", "limit", "version", "seconds", "items_per_second", "chance"} <= set(piqa)
    assert piqa["n"] == 2 and piqa["n_total"] == 3 and piqa["chance"] == 0.5
    assert piqa["metrics"]["acc"]["stderr"] is not None
    assert result["models"]["student"]["tasks"]["wikitext"]["n"] == 2  # two articles in the fixture
    # arc_easy items have 3 and 4 choices: chance is the mean of 1/3 and 1/4
    assert result["models"]["teacher"]["tasks"]["arc_easy"]["chance"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert "piqa" in result["ratios"]["student"]["per_task"]


def test_reuse_skips_tasks_already_scored_with_the_same_limit(env, capsys, tmp_path):
    first = tmp_path / "first.json"
    common = ["--teacher", env["teacher"], "--eval-data", str(env["data"]), "--limit", "2"]
    assert main(["eval", env["student"], "--tasks", "piqa", *common, "--json", str(first)]) == 0
    capsys.readouterr()
    second = tmp_path / "second.json"
    assert main(["eval", env["student"], "--tasks", "piqa,winogrande", *common, "--reuse", str(first),
                 "--json", str(second)]) == 0
    err = capsys.readouterr().err
    assert "student piqa: reused" in err and "teacher piqa: reused" in err
    assert "student winogrande: 2 items" in err  # only the new task ran
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    for model in ("student", "teacher"):
        assert b["models"][model]["tasks"]["piqa"]["metrics"] == a["models"][model]["tasks"]["piqa"]["metrics"]
        assert list(b["models"][model]["tasks"]) == ["piqa", "winogrande"]
    assert "winogrande" in b["ratios"]["student"]["per_task"]
    # another --limit: other items, so not reused
    assert main(["eval", env["student"], "--tasks", "piqa", "--eval-data", str(env["data"]), "--limit", "1",
                 "--reuse", str(first)]) == 0
    err = capsys.readouterr().err
    assert "reused" not in err and "student piqa: 1 items" in err
    # another dtype: not comparable, so not reused
    assert main(["eval", env["student"], "--tasks", "piqa", "--eval-data", str(env["data"]), "--limit", "2",
                 "--dtype", "bf16", "--reuse", str(first)]) == 0
    err = capsys.readouterr().err
    assert "not reusing" in err and "student piqa: 2 items" in err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["eval", env["student"], "--tasks", "piqa", "--eval-data", str(env["data"]),
                 "--reuse", str(bad)]) == 2
    assert "not a radlads eval --json file" in capsys.readouterr().err


def test_items_score_the_asked_documents(env, monkeypatch):
    """--items A:B goes to lm-eval by document index: the requests are those of items A..B-1 only."""
    seen = []
    original = eval_lm.RadladsLM._loglikelihood_tokens

    def record(self, requests, **kwargs):
        seen.extend(key[1] for key, *_ in requests)
        return original(self, requests, **kwargs)

    monkeypatch.setattr(eval_lm.RadladsLM, "_loglikelihood_tokens", record)
    model, tok = load_model(env["teacher"], torch.float32)
    lm = eval_lm.RadladsLM(model, tok, batch_size=4, progress=False)
    task = ev._build_task("piqa", env["data"])["piqa"]
    res = ev.evaluate_task(lm, "piqa", task, (1, 3), bootstrap_iters=10, source="test")
    assert res.n == 2 and res.items == (1, 3)
    items = FIXTURE["piqa/validation.jsonl"]
    assert sorted(seen) == sorted(" " + item[k] for item in items[1:] for k in ("sol1", "sol2"))


def test_shards_join_to_what_one_pass_reports(env, capsys, tmp_path):
    """Shards scored with --items, joined by --reuse, give one pass's acc/acc_norm and stderrs;
    a perplexity (not a mean of per-item values) is left out of the join, and said to be."""
    common = ["eval", env["student"], "--teacher", env["teacher"], "--tasks", "piqa,lambada_openai",
              "--eval-data", str(env["data"])]
    whole = tmp_path / "whole.json"
    assert main([*common, "--json", str(whole)]) == 0
    shards = []
    for items in ("0:1", "1:"):
        shards += ["--reuse", str(tmp_path / f"shard{len(shards)}.json")]
        assert main([*common, "--items", items, "--json", shards[-1]]) == 0
    capsys.readouterr()
    joined = tmp_path / "joined.json"
    assert main([*common, *shards, "--json", str(joined)]) == 0
    out = capsys.readouterr()
    assert "student piqa: reused, joined from 2 shards (0:1, 1:3)" in out.err
    assert ("student lambada_openai: reused, joined from 2 shards (0:1, 1:2); left out perplexity: "
            "not a mean of per-item values") in out.err
    assert "lambada_openai: 2 items" not in out.err  # nothing scored again
    assert "piqa 3/3 (joined from 2 shards)" in out.out
    a, b = json.loads(whole.read_text()), json.loads(joined.read_text())
    for model in ("student", "teacher"):
        one, parts = a["models"][model]["tasks"]["lambada_openai"], b["models"][model]["tasks"]["lambada_openai"]
        assert set(parts["metrics"]) == {"acc"} and "perplexity" in one["metrics"]
        assert parts["metrics"]["acc"]["value"] == pytest.approx(one["metrics"]["acc"]["value"], abs=1e-12)
    for model in ("student", "teacher"):
        one, parts = a["models"][model]["tasks"]["piqa"], b["models"][model]["tasks"]["piqa"]
        assert parts["n"] == one["n"] == 3 and parts["items"] == [0, 3]
        assert [p["items"] for p in parts["parts"]] == [[0, 1], [1, 3]]
        for metric in ("acc", "acc_norm"):
            assert parts["metrics"][metric]["value"] == pytest.approx(one["metrics"][metric]["value"], abs=1e-12)
            assert parts["metrics"][metric]["stderr"] == pytest.approx(one["metrics"][metric]["stderr"], abs=1e-12)
    assert b["ratios"]["student"]["per_task"]["piqa"] == pytest.approx(a["ratios"]["student"]["per_task"]["piqa"])
    # One --reuse takes several files, as a shell glob passes them.
    assert main([*common, "--reuse", shards[1], shards[3]]) == 0
    assert "student piqa: reused, joined from 2 shards (0:1, 1:3)" in capsys.readouterr().err
    # Shards that leave a gap do not stand in for the whole task.
    assert main([*common, "--tasks", "piqa", "--reuse", shards[3]]) == 0
    assert "student piqa: 3 items" in capsys.readouterr().err


def test_tile_and_pool_mean():
    pieces = [((0, 2), "a"), ((2, 5), "b"), ((0, 5), "whole"), ((5, 9), "c"), ((2, 9), "d")]
    assert eval_shards.tile(pieces, (0, 5)) == ["whole"]
    assert eval_shards.tile(pieces, (0, 9)) == ["whole", "c"]
    assert eval_shards.tile(pieces, (2, 9)) == ["d"]
    assert eval_shards.tile(pieces, (0, 8)) is None and eval_shards.tile(pieces, (1, 5)) is None
    assert eval_shards.tile([((0, 3), "x"), ((3, 4), "y"), ((1, 4), "z")], (0, 4)) == ["x", "y"]
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(40, generator=gen, dtype=torch.float64).tolist()
    values[:10] = [float(v > 0.5) for v in values[:10]]

    def stats(xs):
        m = sum(xs) / len(xs)
        sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else None
        return len(xs), m, None if sd is None else sd / len(xs) ** 0.5

    cuts = [0, 1, 10, 11, 25, 40]
    mean, err = eval_shards.pool_mean([stats(values[a:b]) for a, b in zip(cuts, cuts[1:])])
    _, want_mean, want_err = stats(values)
    assert mean == pytest.approx(want_mean, abs=1e-12) and err == pytest.approx(want_err, abs=1e-12)


@pytest.mark.parametrize("text,error", [("5:3", r"--items 5:3: need 0 <= START < END"),
                                        ("abc", r"--items must look like START:END"),
                                        ("7", r"--items must look like START:END"),
                                        ("9:", r"--items 9: starts past the end of piqa \(3 items\)")])
def test_bad_items(env, capsys, text, error):
    _fails(capsys, ["eval", env["teacher"], "--tasks", "piqa", "--eval-data", str(env["data"]), "--items", text],
           error)


def test_items_and_limit_exclude_each_other(env, capsys):
    _fails(capsys, ["eval", env["teacher"], "--tasks", "piqa", "--eval-data", str(env["data"]), "--items", "0:1",
                    "--limit", "1"], r"--limit and --items both choose items")


# --------------------------------------------------------------------------------------------
# Scoring is lm-eval's: hand-computed items
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_piqa_and_arc_match_hand_computed_loglikelihoods(env, which):
    from lm_eval.evaluator import evaluate

    model, tok = load_model(env[which])
    lm = eval_lm.RadladsLM(model, tok, batch_size=2, progress=False)
    for name, prompt, choices, gold in [
        ("piqa", lambda d: f"Question: {d['goal']}\nAnswer:", lambda d: [d["sol1"], d["sol2"]], "label"),
        ("arc_easy", lambda d: f"Question: {d['question']}\nAnswer:", lambda d: d["choices"], "gold"),
    ]:
        docs = FIXTURE[f"{name}/{'validation' if name == 'piqa' else 'test'}.jsonl"]
        out = evaluate(lm=lm, task_dict={name: build_task(name, env["data"])}, bootstrap_iters=10, log_samples=True)
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        acc, acc_norm = [], []
        for doc, sample in zip(docs, samples):
            lls = [_hand_logprob(model, tok, prompt(doc), " " + c) for c in choices(doc)]
            got = [r[0][0] for r in sample["resps"]]
            assert got == pytest.approx(lls, abs=1e-4)
            acc.append(float(max(range(len(lls)), key=lls.__getitem__) == doc[gold]))
            norm = [ll / len(c) for ll, c in zip(lls, choices(doc))]
            acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == doc[gold]))
        assert out["results"][name]["acc,none"] == pytest.approx(sum(acc) / len(acc))
        assert out["results"][name]["acc_norm,none"] == pytest.approx(sum(acc_norm) / len(acc_norm))


def test_requests_lambada_split_winogrande_partial_hellaswag_preprocess(env):
    """The exact (context, continuation) pairs lm-eval asks for on known items."""
    from lm_eval.evaluator import evaluate

    model, tok = load_model(env["teacher"])
    lm = eval_lm.RadladsLM(model, tok, progress=False)

    def arguments(name):
        out = evaluate(lm=lm, task_dict={name: build_task(name, env["data"])}, limit=1, bootstrap_iters=10,
                       log_samples=True)
        return [tuple(a) for a in out["samples"][name][0]["arguments"]]

    assert arguments("lambada_openai") == [("She put the cup on the table and then drank the", " tea")]
    assert arguments("winogrande") == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]
    # lm-eval's preprocess: " [title]" -> ". ", other [tags] dropped, one double space collapsed;
    # ctx_b capitalised.
    assert arguments("hellaswag") == [("Baking: A man mixes flour. He", f" {e}")
                                      for e in ["bakes. bread.", " swims far.", "sings loud.", "runs."]]


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_rolling_loglikelihood_and_chunked_scoring(env, which):
    model, tok = load_model(env[which])
    lm = eval_lm.RadladsLM(model, tok, batch_size=4, progress=False)
    page = wikitext_pages_from_text(WIKI_RAW)[0]
    tokens = tok.encode(page, add_special_tokens=False)
    seq = torch.tensor([lm.prefix_token_id] + tokens)
    with torch.no_grad():
        lp = torch.log_softmax(model(seq[None, :-1]).logits[0].float(), -1)
    hand = float(lp.gather(-1, seq[1:, None]).sum())

    class Req:
        args = (page,)

    assert lm.loglikelihood_rolling([Req()])[0] == pytest.approx(hand, rel=1e-5)
    lm.chunk = 16  # now every request is long: runs through the cache chunk by chunk
    assert lm.loglikelihood_rolling([Req()])[0] == pytest.approx(hand, rel=1e-5)
    pairs = [(("", ""), tokens[:10], tokens[10:40]), (("", ""), tokens[:5], tokens[5:8])]
    lm.chunk = 16
    chunked = lm._loglikelihood_tokens(pairs)
    lm.chunk = 512
    batched = lm._loglikelihood_tokens(pairs)
    assert [c[0] for c in chunked] == pytest.approx([b[0] for b in batched], abs=1e-4)
    assert [c[1] for c in chunked] == [b[1] for b in batched]


def wikitext_pages_from_text(text: str) -> list[str]:
    import datasets

    return wikitext_pages(datasets.Dataset.from_dict({"text": text.splitlines()}))["page"]


def test_wikitext_pages_split_at_top_level_headings_only():
    pages = wikitext_pages_from_text(WIKI_RAW)
    assert len(pages) == 2
    assert pages[0].startswith(" = Alpha Beta = \n") and " = = History = = " in pages[0]
    assert pages[1] == " = Gamma = \n Gamma is a letter . It follows beta ."


@pytest.mark.skipif(not REAL_EVAL_DATA.is_dir(), reason="shared eval data not beside the repository")
def test_real_files_load_offline_with_official_counts():
    counts = {name: len(list(build_task(name, REAL_EVAL_DATA).eval_docs))
              for name in ["piqa", "arc_easy", "winogrande", "wikitext"]}
    # wikitext: the 62 articles of EleutherAI/wikitext_document_level's wikitext-2 test split
    assert counts == {"piqa": 1838, "arc_easy": 2376, "winogrande": 1267, "wikitext": 62}


# --------------------------------------------------------------------------------------------
# RADLADS ratios
# --------------------------------------------------------------------------------------------


def _result(task, chance, **metrics):
    return eval_results.TaskResult(task=task, metrics={k: {"value": v[0], "stderr": v[1]} for k, v in metrics.items()},
                         n=100, n_total=100, version=1.0, chance=chance, seconds=1.0, source="test")


def test_ratios_average_and_near_chance_exclusion():
    teacher = {
        "piqa": _result("piqa", 0.5, acc=(0.70, 0.01), acc_norm=(0.72, 0.01)),
        "hellaswag": _result("hellaswag", 0.25, acc=(0.40, 0.01), acc_norm=(0.45, 0.01)),
        "winogrande": _result("winogrande", 0.5, acc=(0.52, 0.014)),  # 0.02 < 3 * 0.014: near chance
        "lambada_openai": _result("lambada_openai", 0.0, acc=(0.40, 0.01), perplexity=(20.0, 1.0)),
        "wikitext": _result("wikitext", None, word_perplexity=(30.0, None)),
    }
    student = {
        "piqa": _result("piqa", 0.5, acc=(0.65, 0.01), acc_norm=(0.62, 0.01)),
        "hellaswag": _result("hellaswag", 0.25, acc=(0.35, 0.01), acc_norm=(0.40, 0.01)),
        "winogrande": _result("winogrande", 0.5, acc=(0.51, 0.014)),
        "lambada_openai": _result("lambada_openai", 0.0, acc=(0.30, 0.01), perplexity=(30.0, 1.0)),
        "wikitext": _result("wikitext", None, word_perplexity=(40.0, None)),
    }
    r = eval_results.compute_ratios(student, teacher)
    assert r["per_task"]["piqa"]["acc"] == pytest.approx(0.75)
    assert r["per_task"]["piqa"]["acc_norm"] == pytest.approx(0.12 / 0.22)
    assert r["per_task"]["hellaswag"]["acc_norm"] == pytest.approx(0.15 / 0.20)
    assert r["per_task"]["lambada_openai"]["acc"] == pytest.approx(0.75)
    assert r["per_task"]["winogrande"]["acc"] == pytest.approx(0.5)
    assert "wikitext" not in r["per_task"]
    assert r["excluded_near_chance"] == ["winogrande"]
    # piqa acc and hellaswag acc_norm only: not LAMBADA, not the near-chance winogrande
    assert r["average"] == pytest.approx((0.75 + 0.75) / 2)

    table = eval_results.format_table({"s": student, "t": teacher}, "t", {"s": r})
    assert re.search(r"^\| winogrande \| acc \| .* \| 0\.500 ¹ \|$", table, re.M)
    assert re.search(r"^\| \*\*average\*\* .*\*\*0\.750\*\* \|$", table, re.M)
    assert "¹ Teacher within 3 standard errors of chance on winogrande" in table
    assert re.search(r"^\| wikitext \| word_perplexity \| 40\.0000 \| 30\.0000 \|  \| — \|$", table, re.M)


def test_radlads_summary_lambada_and_mmlu_apart_average_of_the_rest():
    teacher = {
        "lambada_openai": _result("lambada_openai", 0.0, acc=(0.40, 0.01)),
        "mmlu": _result("mmlu", 0.25, acc=(0.26, 0.004)),  # 0.01 < 3 * 0.004: near chance
        "arc_challenge": _result("arc_challenge", 0.25, acc=(0.30, 0.01), acc_norm=(0.35, 0.01)),
        "piqa": _result("piqa", 0.5, acc=(0.70, 0.01)),
    }
    student = {
        "lambada_openai": _result("lambada_openai", 0.0, acc=(0.10, 0.01)),
        "mmlu": _result("mmlu", 0.25, acc=(0.255, 0.004)),
        "arc_challenge": _result("arc_challenge", 0.25, acc=(0.28, 0.01), acc_norm=(0.30, 0.01)),
        "piqa": _result("piqa", 0.5, acc=(0.60, 0.01)),
    }
    r = eval_results.compute_ratios(student, teacher)
    assert r["separate"] == {"lambada_openai": pytest.approx(0.25), "mmlu": pytest.approx(0.5)}
    assert r["excluded_near_chance"] == ["mmlu"]
    # arc_challenge by acc_norm (0.05 / 0.10), piqa by acc (0.1 / 0.2); neither LAMBADA nor MMLU
    assert r["averaged_tasks"] == {"arc_challenge": pytest.approx(0.5), "piqa": pytest.approx(0.5)}
    assert r["average"] == pytest.approx(0.5)
    table = eval_results.format_table({"s": student, "t": teacher}, "t", {"s": r})
    rows = [line for line in table.splitlines() if line.startswith("| **")]
    assert rows == ["| **lambada_openai** | ratio, acc |  |  |  | **0.250** |",
                    "| **mmlu** | ratio, acc |  |  |  | **0.500** ¹ |",
                    "| **average** | ratio, other tasks |  |  |  | **0.500** |"]
    assert "¹ Teacher within 3 standard errors of chance on mmlu" in table


def test_ratio_undefined_when_teacher_exactly_at_chance():
    assert eval_results.ratio(0.6, 0.5, 0.5) is None
    assert eval_results.near_chance({"value": 0.5, "stderr": None}, 0.5)
    assert not eval_results.near_chance({"value": 0.6, "stderr": 0.01}, 0.5)


# --------------------------------------------------------------------------------------------
# Bad inputs: one clear line, exit code 2
# --------------------------------------------------------------------------------------------


def _fails(capsys, argv, pattern):
    # Loading bars may precede it; the error itself is one line.
    assert re.search(pattern, cli_error(capsys, argv, alone=False))


def test_bad_inputs(env, capsys, tmp_path, monkeypatch):
    data = str(env["data"])
    _fails(capsys, ["eval", env["teacher"], "--limit", "0", "--eval-data", data], r"--limit must be >= 1")
    _fails(capsys, ["eval", env["teacher"], "--eval-data", str(tmp_path / "nope")], r"--eval-data folder not found")
    _fails(capsys, ["eval", env["teacher"], "--tasks", "piqa", "--eval-data", str(tmp_path)],
           r"eval file for piqa not found: .*piqa/validation.jsonl")
    no_weights = tmp_path / "empty_student"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "radlads"}))
    _fails(capsys, ["eval", str(no_weights), "--tasks", "piqa", "--eval-data", data], r"no \*\.safetensors")
    _fails(capsys, ["eval", env["teacher"], "--tasks", " , ", "--eval-data", data], r"--tasks is empty")
    _fails(capsys, ["eval", env["teacher"], "--threads", "0", "--eval-data", data], r"--threads must be >= 1, got 0")

    # A name lm-eval does not know either (the full lm-eval index is slow to build: stand it in).
    class FakeManager:
        all_tasks = ["sciq", "openbookqa"]

    monkeypatch.setattr(ev, "_task_manager", lambda: FakeManager())
    _fails(capsys, ["eval", env["teacher"], "--tasks", "piqa,hellaswagg", "--eval-data", data],
           r"unknown task hellaswagg; local tasks: lambada_openai, hellaswag, piqa, arc_easy, arc_challenge, "
           r"winogrande, wikitext, mmlu")
    assert ev.parse_tasks("piqa,sciq,mmlu") == ["piqa", "sciq", "mmlu"]  # hub names pass through


def test_default_eval_data_dir(tmp_path):
    (tmp_path / "shared" / "data" / "eval").mkdir(parents=True)
    (tmp_path / "proj").mkdir()
    assert default_eval_data_dir(cwd=tmp_path / "proj", repo_root=tmp_path / "x") == \
        (tmp_path / "shared" / "data" / "eval").resolve()
    assert default_eval_data_dir(cwd=tmp_path / "x" / "y", repo_root=tmp_path / "proj") == \
        (tmp_path / "shared" / "data" / "eval").resolve()
    with pytest.raises(RadladsError, match="no eval data folder at .*; pass --eval-data DIR"):
        default_eval_data_dir(cwd=tmp_path / "a" / "b", repo_root=tmp_path / "c" / "d")
    assert set(LOCAL_TASKS) == {"lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande",
                                "wikitext"}


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_generate_until_is_greedy_and_stops(env, which):
    """Hub tasks that generate get greedy text, cut at the first stop string."""
    model, tok = load_model(env[which])
    lm = eval_lm.RadladsLM(model, tok, progress=False)

    class Req:
        args = ("The cat", {"until": ["e"], "max_gen_toks": 6})

    text = lm.generate_until([Req()])[0]
    ids = torch.tensor([tok.encode("The cat", add_special_tokens=False)])
    full = tok.decode(model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[0, ids.shape[1]:],
                      skip_special_tokens=True)
    assert text == full.split("e")[0]


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_shared_context_path_equals_full_sequences(env, which):
    """Choices that read their context once, from copies of its cache, score as full sequences do."""
    model, tok = load_model(env[which])
    lm = eval_lm.RadladsLM(model, tok, batch_size=2, progress=False)
    context = tok.encode("Question: which of these is a fruit?\nAnswer:", add_special_tokens=False)
    conts = [tok.encode(c, add_special_tokens=False) for c in [" apple", " a red brick", " x"]]
    requests = [(("q", ""), context, c) for c in conts] + [(("r", ""), context[:9], conts[1])]
    lm.share_context_from = 10**9
    full = lm._loglikelihood_tokens(requests)
    lm.share_context_from = 1
    calls = []
    real = lm._score_shared_context
    lm._score_shared_context = lambda ctx, cs: calls.append(len(cs)) or real(ctx, cs)
    shared = lm._loglikelihood_tokens(requests)
    assert calls == [3]  # the three choices of the one shared context; the fourth stands alone
    assert [s[0] for s in shared] == pytest.approx([f[0] for f in full], abs=1e-4)
    assert [s[1] for s in shared] == [f[1] for f in full]


def test_a_task_with_no_mean_metric_is_not_joined():
    from types import SimpleNamespace

    task = SimpleNamespace(aggregation=lambda: {"word_perplexity": lambda items: 0.0})  # not lm-eval's mean
    shards = [_result("wikitext", None, word_perplexity=(30.0, None)) for _ in range(2)]
    for s, items in zip(shards, [(0, 100), (100, 200)]):
        s.items = items
    with pytest.raises(eval_shards.RadladsError, match="none of word_perplexity is a mean of per-item values"):
        eval_shards.join_shards("wikitext", task, shards)
