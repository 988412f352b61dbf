"""`radlads generate`: streamed tokens equal model.generate's, chat template, stdin, bad inputs."""

import io
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radlads import generate  # noqa: E402
from radlads.cli import main  # noqa: E402
from radlads.loading import load_model  # noqa: E402
from helpers import cli_error, tiny_tokenizer  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def folders(tiny_folders):
    return tiny_folders


@pytest.fixture(scope="module")
def student(folders):
    return load_model(folders["student"])


def _reference(model, tokenizer, ids, config, seed):
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_p=0.95, top_k=50)])
def test_streamed_tokens_equal_model_generate(student, sampling):
    model, tok = student
    ids = generate.encode_prompt(tok, "Once upon a time")
    config = generate.generation_config(model, tok, 12, **sampling)
    out = io.StringIO()
    streamer = generate.stream_generate(model, tok, ids, config, seed=5, stream=out)
    expected = _reference(model, tok, ids, config, seed=5)
    assert streamer.tokens == expected and len(expected) == 12
    assert out.getvalue() == tok.decode(expected, skip_special_tokens=True) + "\n"
    assert len(streamer.token_times) == 12


def test_sampling_depends_on_the_seed(student):
    model, tok = student
    ids = generate.encode_prompt(tok, "abc")
    config = generate.generation_config(model, tok, 10, temperature=1.0)
    a, b = (generate.stream_generate(model, tok, ids, config, seed=s, stream=io.StringIO()).tokens for s in (1, 2))
    assert a != b


def test_cli_streams_to_stdout_and_speed_to_stderr(folders, capsys):
    rc = main(["generate", folders["teacher"], "--prompt", "Hello", "--max-new-tokens", "6"])
    assert rc == 0
    captured = capsys.readouterr()
    model, tok = load_model(folders["teacher"])
    ids = generate.encode_prompt(tok, "Hello")
    expected = _reference(model, tok, ids, generate.generation_config(model, tok, 6), seed=0)
    assert captured.out == tok.decode(expected, skip_special_tokens=True) + "\n"
    # This random teacher writes EOS as its 3rd token; generation stops there, as model.generate does.
    assert len(expected) == 3 and expected[-1] == tok.eos_token_id
    assert captured.err.strip().startswith("3 tokens in") and "tokens/s" in captured.err


def test_prompt_from_stdin(folders, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello"))
    assert main(["generate", folders["teacher"], "--prompt", "-", "--max-new-tokens", "6"]) == 0
    from_stdin = capsys.readouterr().out
    assert main(["generate", folders["teacher"], "--prompt", "Hello", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == from_stdin


def test_chat_template_is_applied():
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    ids = generate.encode_prompt(tok, "hi", chat=True, system="be brief")
    assert tok.decode(ids[0]) == "<s>system: be brief\n<s>user: hi\n<s>assistant:"


def test_chat_without_template_is_one_line_error(folders, capsys):
    assert main(["generate", folders["student"], "--prompt", "hi", "--chat"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no chat template" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv,message", [
    (["--max-new-tokens", "-3"], "--max-new-tokens must be >= 1"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-k", "-2"], "--top-k must be >= 0"),
    (["--system", "x"], "--system needs --chat"),
])
def test_bad_arguments_are_one_line_errors(folders, capsys, argv, message):
    assert message in cli_error(capsys, ["generate", folders["student"], "--prompt", "hi"] + argv)


def test_missing_model_folder_is_one_line_error(tmp_path, capsys):
    assert "nope" in cli_error(capsys, ["generate", str(tmp_path / "nope"), "--prompt", "hi"])
