"""`radlads ppl`: windows cover every token once, chunked = one pass, byte-level numbers by hand."""

import gzip
import json
import math
import os
import re

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radlads import ppl, scoring  # noqa: E402
from radlads.cli import main  # noqa: E402
from radlads.data import read_texts  # noqa: E402
from radlads.errors import RadladsError  # noqa: E402
from helpers import cli_error, save_tiny_teacher, tiny_teacher, tiny_tokenizer  # noqa: E402
from radlads.transfer import build_student  # noqa: E402

DOCS = ["The river runs past the old mill and into the sea.", "Über den Wolken: naïve café — 東京 is a city.",
        "Short one."]


@pytest.fixture(scope="module")
def env(tiny_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl")
    data = root / "valid.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as f:
        for i, d in enumerate(DOCS):
            f.write(json.dumps({"id": i, "title": f"t{i}", "text": d}) + "\n")
    return dict(tiny_folders, data=str(data), root=root)


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (100, 16, 5), (7, 8, 4), (33, 32, 31)])
def test_sliding_windows_score_every_target_once_with_context(n, window, stride):
    scored = []
    for begin, end, first in ppl.sliding_windows(n, window, stride):
        assert end - begin <= window and begin < first <= end
        if scored:
            assert first - begin >= window - stride or begin == 0  # overlap gives context
        scored += range(first, end)
    assert scored == list(range(1, n))


@pytest.mark.parametrize("family", ["teacher", "student"])
def test_chunked_through_cache_equals_one_pass(family):
    torch.manual_seed(0)
    model = tiny_teacher("llama") if family == "teacher" else build_student(tiny_teacher("llama"), "rwkv7",
                                                                             attention_layers=[1])
    ids = torch.randint(3, 300, (150,))
    with torch.no_grad():
        full = torch.log_softmax(model(ids[None, :-1]).logits[0].float(), -1)
    expected = full.gather(-1, ids[1:, None]).squeeze(-1)[9:]
    lp, greedy = scoring.target_logprobs(model, ids, 10, chunk=23)
    torch.testing.assert_close(lp, expected, rtol=1e-4, atol=1e-4)
    assert greedy.tolist() == (full.argmax(-1) == ids[1:])[9:].tolist()


def test_window_as_long_as_the_text_equals_no_window():
    model = tiny_teacher("llama")
    ids = list(range(5, 85))
    whole = ppl.sequence_nll(model, ids, 1, None, None)
    assert ppl.sequence_nll(model, ids, 1, 200, 100) == pytest.approx(whole, rel=1e-5)
    windowed = ppl.sequence_nll(model, ids, 1, 16, 8)
    assert math.isfinite(windowed) and windowed != pytest.approx(whole, rel=1e-7)


def test_cli_byte_level_by_hand_and_same_text_for_every_model(env, capsys):
    out_json = env["root"] / "ppl.json"
    rc = main(["ppl", env["teacher"], env["student"], "--data", env["data"], "--window", "32", "--stride", "8",
               "--json", str(out_json)])
    assert rc == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| metric | teacher | student |"
    for row in ["token perplexity", "byte perplexity", "bits per byte", "tokens", "bytes"]:
        assert re.search(rf"^\| {row} \|", table, re.M)
    assert "window 32, stride 8" in table and "| recurrent |" in table
    res = json.loads(out_json.read_text())["models"]
    n_bytes = sum(len(d.encode()) for d in DOCS)
    assert res["teacher"]["bytes"] == res["student"]["bytes"] == n_bytes
    assert res["student"]["mode"] == "recurrent" and res["student"]["window"] is None

    # The student by hand: one pass per document after the BOS, NLL summed over bytes.
    from radlads.loading import load_model

    model, tok = load_model(env["student"])
    nll = 0.0
    for d in DOCS:
        ids = torch.tensor([tok.bos_token_id] + tok.encode(d, add_special_tokens=False))
        with torch.no_grad():
            lp = torch.log_softmax(model(ids[None, :-1]).logits[0].float(), -1)
        nll -= float(lp.gather(-1, ids[1:, None]).sum())
    s = res["student"]
    assert s["nll"] == pytest.approx(nll, rel=1e-5)
    assert s["byte_perplexity"] == pytest.approx(math.exp(nll / n_bytes), rel=1e-5)
    assert s["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-5)
    assert s["token_perplexity"] == pytest.approx(math.exp(nll / s["tokens"]), rel=1e-5)


def test_max_tokens_cuts_the_same_text_for_all(env, capsys):
    tok = tiny_tokenizer()  # one token per byte: the cut is easy to predict
    docs = list(read_texts(env["data"]))
    kept = ppl.budget_documents(docs, tok, 60)
    assert kept[0] == DOCS[0] and len(kept) == 2
    assert len(tok.encode(kept[0] + kept[1], add_special_tokens=False)) == 60
    assert DOCS[1].startswith(kept[1])
    out_json = env["root"] / "cut.json"
    assert main(["ppl", env["teacher"], env["student"], "--data", env["data"], "--max-tokens", "60",
                 "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())["models"]
    assert res["teacher"]["tokens"] == res["student"]["tokens"] == 60
    assert res["teacher"]["bytes"] == res["student"]["bytes"] == len((kept[0] + kept[1]).encode())


def test_documents_are_the_ones_training_reads(tmp_path, capsys):
    """One reader for ppl and training: a .txt file's documents are its blank-line blocks for both."""
    from radlads.data import PackedStream

    f = tmp_path / "a.txt"
    f.write_text("line one\nstill one\n\nline two\n")
    assert list(read_texts(str(f))) == ["line one\nstill one", "line two"]
    tok = tiny_tokenizer()
    seq = len(tok.encode("line one\nstill one", add_special_tokens=False)) + 1  # the first document and its EOS
    stream = PackedStream(str(f), tok, seq, 1, split="all", shuffle=False, loop=False)
    assert tok.decode(next(stream)[0]) == "line one\nstill one</s>"
    out_json = tmp_path / "txt.json"
    assert main(["ppl", save_tiny_teacher(tmp_path / "t"), "--data", str(f), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["models"]["t"]["documents"] == 2


def _fails(capsys, argv, pattern):
    # Loading bars may precede it; the error itself is one line.
    assert re.search(pattern, cli_error(capsys, argv, alone=False))


def test_bad_inputs(env, capsys, tmp_path):
    t = env["teacher"]
    _fails(capsys, ["ppl", t, "--data", str(tmp_path / "missing.jsonl")], r"data not found")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "   "}\n\n')
    _fails(capsys, ["ppl", t, "--data", str(empty)], r"holds no text")
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n")
    _fails(capsys, ["ppl", t, "--data", str(bad)], r"unsupported data file .*x\.csv")
    nofield = tmp_path / "n.jsonl"
    nofield.write_text('{"body": "hello"}\n')
    _fails(capsys, ["ppl", t, "--data", str(nofield)], r"no line of n\.jsonl has the field 'text' \(keys: body\)")
    assert main(["ppl", t, "--data", str(nofield), "--text-field", "body"]) == 0
    _fails(capsys, ["ppl", t, "--data", env["data"], "--max-tokens", "0"], r"--max-tokens must be >= 1")
    _fails(capsys, ["ppl", t, "--data", env["data"], "--window", "8", "--stride", "8"], r"must be smaller than --window")
    _fails(capsys, ["ppl", t, "--data", env["data"], "--window", "100000"], r"exceeds teacher's context")
    with pytest.raises(RadladsError):
        list(ppl.sliding_windows(10, 1, 1))
