"""`radlads passkey`: prompt length and key depth, scoring, table shape, skips, bad inputs."""

import json
import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radlads import passkey  # noqa: E402
from radlads.cli import main  # noqa: E402
from helpers import cli_error, tiny_teacher, tiny_tokenizer  # noqa: E402
from radlads.transfer import build_student  # noqa: E402

LENGTHS = [300, 600]
DEPTHS = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def student_dir(tiny_folders):
    return tiny_folders["student"]


def _key_in_prompt(tokenizer, input_ids) -> str:
    return re.search(r"The pass key is (\d+)\.", tokenizer.decode(input_ids[0])).group(1)


def oracle(model, tokenizer, input_ids, max_new_tokens):
    """A model that always answers with the key hidden in its prompt."""
    return " " + _key_in_prompt(tokenizer, input_ids) + ". Remember"


def test_prompt_is_about_the_requested_length_with_the_key_at_its_depth():
    tok = tiny_tokenizer()
    for length in (500, 2000):
        repeats = passkey.filler_repeats(tok, length)
        for depth in DEPTHS:
            text = passkey.build_prompt(12345, repeats, depth)
            n = len(tok(text)["input_ids"])
            assert abs(n - length) <= len(passkey.FILLER)  # within one filler block
            assert text.startswith(passkey.TASK) and text.endswith(passkey.QUESTION)
            # Where the key line starts within the room it can move in (filler without the key line).
            key_line = passkey.KEY_LINE.format(key=12345)
            room = len(text) - len(passkey.TASK) - len(passkey.QUESTION) - len(key_line) - 2
            at = (text.index(key_line) - len(passkey.TASK) - 1) / room
            assert at == pytest.approx(depth, abs=0.5 * (len(passkey.FILLER) + 1) / room + 1e-9)


def test_scoring_takes_the_first_number():
    assert passkey.is_correct(52817, " 52817. Remember it.")
    assert not passkey.is_correct(52817, " 5281 7")
    assert not passkey.is_correct(52817, " the key")
    assert not passkey.is_correct(52817, " 12345 52817")


def test_model_that_answers_the_key_scores_one(student_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(passkey, "answer", oracle)
    out = tmp_path / "p.json"
    rc = main(["passkey", student_dir, "--lengths", ",".join(map(str, LENGTHS)), "--depths", "0,0.5,1",
               "--trials", "2", "--seed", "3", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["accuracy"] == 1.0
    assert [(c["length"], c["depth"]) for c in data["cells"]] == [(n, d) for n in LENGTHS for d in DEPTHS]
    keys = [t["key"] for c in data["cells"] for t in c["trials"]]
    assert len(keys) == len(LENGTHS) * len(DEPTHS) * 2 and len(set(keys)) > 1
    assert all(10000 <= k <= 99999 for k in keys)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(LENGTHS)  # header, rule, one row per length
    assert all(line.count("|") == len(DEPTHS) + 3 for line in table)
    assert table[2].split("|")[-2].strip() == "1.00"


def test_wrong_answers_score_zero_and_keys_follow_the_seed(monkeypatch):
    monkeypatch.setattr(passkey, "answer", lambda *a: " 00000")
    model = build_student(tiny_teacher("llama"), "rwkv7")
    tok = tiny_tokenizer()
    first = passkey.run_passkey(model, tok, [300], [0.5], trials=3, seed=7)
    again = passkey.run_passkey(model, tok, [300], [0.5], trials=3, seed=7)
    other = passkey.run_passkey(model, tok, [300], [0.5], trials=3, seed=8)
    assert first["accuracy"] == 0.0
    keys = [[t["key"] for t in r["cells"][0]["trials"]] for r in (first, again, other)]
    assert keys[0] == keys[1] != keys[2]


def test_real_greedy_answer_runs_on_a_tiny_model():
    model, tok = build_student(tiny_teacher("llama"), "rwkv7"), tiny_tokenizer()
    result = passkey.run_passkey(model, tok, [250], [0.0], trials=1, max_new_tokens=4)
    cell = result["cells"][0]
    (trial,) = cell["trials"]
    assert 0 < len(trial["reply"]) <= 4  # one byte token per character at most
    prompt = passkey.build_prompt(trial["key"], passkey.filler_repeats(tok, 250), 0.0)
    assert cell["tokens"] == len(tok(prompt)["input_ids"])
    assert trial["correct"] == passkey.is_correct(trial["key"], trial["reply"])


def test_teacher_lengths_beyond_its_context_are_skipped(monkeypatch):
    monkeypatch.setattr(passkey, "answer", oracle)
    teacher = tiny_teacher("llama", max_position_embeddings=512)
    result = passkey.run_passkey(teacher, tiny_tokenizer(), [300, 1000], [0.0, 1.0])
    cells = {(c["length"], c["depth"]): c for c in result["cells"]}
    assert cells[(300, 0.0)]["accuracy"] == 1.0
    assert cells[(1000, 1.0)]["accuracy"] is None and "512" in cells[(1000, 1.0)]["skipped"]
    assert result["accuracy"] == 1.0  # over the measured cells only
    assert "skipped" in passkey.markdown_table(result)


@pytest.mark.parametrize("argv,message", [
    (["--lengths", "1024,4k"], "--lengths takes comma-separated"),
    (["--lengths", "-5"], "--lengths must be positive"),
    (["--depths", "0,1.5"], "--depths must lie in [0, 1]"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(student_dir, capsys, argv, message):
    assert message in cli_error(capsys, ["passkey", student_dir] + argv)


def test_missing_model_folder_is_one_line_error(tmp_path, capsys):
    assert "nope" in cli_error(capsys, ["passkey", str(tmp_path / "nope"), "--lengths", "100"])
