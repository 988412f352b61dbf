"""Data pipeline: packing, determinism, exact resume, hold-out, formats, bad inputs."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from radlads.data import PackedStream, check_seq_len, sample_teacher_corpus, validation_batches
from radlads.errors import RadladsError
from radlads.testing import tiny_teacher, tiny_tokenizer

TOK = tiny_tokenizer()
EOS = TOK.eos_token_id


def write_jsonl(path, docs, field="text", gz=False):
    lines = "".join(json.dumps({field: d, "title": "t"}) + "\n" for d in docs)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


DOCS = [f"document number {i} " + "abc " * (i % 7) for i in range(300)]


def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_packing_appends_eos_between_documents(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ["ab", "cd"])
    stream = PackedStream(str(f), TOK, seq_len=3, batch_size=1, shuffle_buffer=1, valid_fraction=0)
    seqs = [next(stream)[0].tolist() for _ in range(2)]
    a, b, c, d = (TOK.convert_tokens_to_ids(ch) for ch in "abcd")
    assert seqs == [[a, b, EOS], [c, d, EOS]]


def test_same_seed_same_batches_different_seed_different(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", DOCS)
    one = take(PackedStream(str(f), TOK, 16, 4, seed=1), 5)
    two = take(PackedStream(str(f), TOK, 16, 4, seed=1), 5)
    other = take(PackedStream(str(f), TOK, 16, 4, seed=2), 5)
    assert all(torch.equal(x, y) for x, y in zip(one, two))
    assert not all(torch.equal(x, y) for x, y in zip(one, other))


def test_resume_continues_exactly_including_across_epochs(tmp_path):
    f1 = write_jsonl(tmp_path / "a.jsonl", DOCS[:40])
    write_jsonl(tmp_path / "b.jsonl.gz", DOCS[40:80], gz=True)
    spec = str(tmp_path)
    full = take(PackedStream(spec, TOK, 16, 3, seed=7, shuffle_buffer=8), 80)
    first = PackedStream(spec, TOK, 16, 3, seed=7, shuffle_buffer=8)
    take(first, 30)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON, as in a checkpoint
    resumed = PackedStream(spec, TOK, 16, 3, seed=7, shuffle_buffer=8)
    resumed.load_state_dict(state)
    rest = take(resumed, 50)
    assert all(torch.equal(x, y) for x, y in zip(full[30:], rest))
    assert resumed.epoch >= 1  # the corpus was small enough to wrap around
    assert f1.exists()


def test_train_and_valid_documents_are_disjoint(tmp_path):
    docs = [f"u{i:07d}" for i in range(400)]  # 8 bytes + EOS = one 9-token sequence per document
    f = write_jsonl(tmp_path / "d.jsonl", docs)

    def seen(split):
        stream = PackedStream(str(f), TOK, 9, 1, split=split, valid_fraction=0.1, shuffle_buffer=1, loop=False)
        return {TOK.decode(b[0][:8]) for b in stream}

    train, valid = seen("train"), seen("valid")
    assert valid and train and not (train & valid)
    assert 10 < len(valid) < 80 and len(train) + len(valid) == 400  # about 10% held out


def test_validation_batches_are_fixed(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", DOCS)
    a = validation_batches(str(f), TOK, 8, 5, valid_fraction=0.2)
    b = validation_batches(str(f), TOK, 8, 5, valid_fraction=0.2)
    assert len(a) == 5 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_formats_txt_parquet_glob_and_text_field(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\nsecond doc\n", encoding="utf-8")
    pq.write_table(pa.table({"body": ["parquet doc one", "parquet doc two"]}), tmp_path / "b.parquet")
    write_jsonl(tmp_path / "c.jsonl", ["json doc"], field="body")
    txt = PackedStream(str(tmp_path / "a.txt"), TOK, 4, 1, valid_fraction=0, shuffle_buffer=1, loop=False)
    assert TOK.decode(torch.cat(list(txt), 1)[0]).startswith("first doc\nstill first</s>second")
    par = PackedStream(str(tmp_path / "*.parquet"), TOK, 4, 1, text_field="body", valid_fraction=0, shuffle_buffer=1,
                       loop=False)
    assert "parquet doc two" in TOK.decode(torch.cat(list(par), 1)[0])
    js = PackedStream(str(tmp_path / "c.jsonl"), TOK, 4, 1, text_field="body", valid_fraction=0, shuffle_buffer=1,
                      loop=False)
    assert "json doc" in TOK.decode(torch.cat(list(js), 1)[0])


def test_memory_stays_bounded_on_a_large_corpus(tmp_path):
    f = write_jsonl(tmp_path / "big.jsonl", ["word " * 200] * 2000)  # ~2M characters
    stream = PackedStream(str(f), TOK, 32, 4, shuffle_buffer=16)
    for _ in range(200):
        next(stream)
        held = len(stream.tokens) + sum(len(s) for s in stream.buffer)
        held += sum(len(s) for s in stream.pending)
        assert held <= 16 * 32 + 64 * 1100  # shuffle buffer + one tokenisation batch
    assert stream.doc_pos < 2000  # never read ahead to the end of the file


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: str(p / "missing.jsonl"), "data not found"),
        (lambda p: str(p / "*.nothing"), "no files match"),
        (lambda p: (p / "x.csv").write_text("a") and str(p / "x.csv"), "unsupported data file"),
        (lambda p: (p / "e.jsonl").write_text("") is not None and str(p / "e.jsonl"), "no usable train text"),
        (lambda p: (p / "u.jsonl").write_bytes(b'{"text": "\xff\xfe bad"}\n' * 5) and str(p / "u.jsonl"),
         "no usable train text"),
        (lambda p: write_jsonl(p / "f.jsonl", ["x"] * 5, field="body") and str(p / "f.jsonl"),
         "no usable train text"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, setup, message):
    with pytest.raises(RadladsError, match=message):
        next(PackedStream(setup(tmp_path), TOK, 8, 1, valid_fraction=0))


def test_skipped_lines_are_counted_and_named(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    good = "".join(json.dumps({"text": d}) + "\n" for d in DOCS[:50])
    path.write_bytes(good.encode() + b'{"text": "\xff"}\n' + b"not json\n" + b'{"body": "x"}\n')
    stream = PackedStream(str(path), TOK, 8, 1, valid_fraction=0, loop=False)
    list(stream)
    assert stream.skipped == {"not UTF-8": 1, "invalid JSON": 1, "missing field 'text'": 1}
    err = capsys.readouterr().err
    assert "skipped 3 documents in m.jsonl" in err and "keys seen: body" in err


def test_seq_len_checks():
    with pytest.raises(RadladsError, match="above the teacher's context of 2048"):
        check_seq_len(4096, 2048)
    with pytest.raises(RadladsError, match="at least 2"):
        check_seq_len(1, 2048)


def test_teacher_samples_make_a_usable_corpus(tmp_path):
    path = sample_teacher_corpus(tiny_teacher("llama"), TOK, tmp_path / "samples.jsonl", n_docs=3, max_new_tokens=12)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all("text" in json.loads(line) for line in lines)
    assert next(PackedStream(str(path), TOK, 8, 2, valid_fraction=0)).shape == (2, 8)
    mtime = path.stat().st_mtime
    sample_teacher_corpus(None, TOK, path, n_docs=3)  # cached: not regenerated
    assert path.stat().st_mtime == mtime
