"""Data pipeline: packing, determinism, exact resume, hold-out, formats, bounded memory, bad inputs."""

import gzip
import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import radlads.data as data
from radlads.data import PackedStream, check_seq_len, sample_teacher_corpus, validation_batches
from radlads.errors import RadladsError
from helpers import tiny_teacher, tiny_tokenizer

TOK = tiny_tokenizer()  # one token per byte, so token counts are byte counts
EOS = TOK.eos_token_id
WIKI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "corpus" / "wikipedia_en_2015"


def write_jsonl(path, docs, field="text", gz=False):
    lines = "".join(json.dumps({field: d, "title": "t"}) + "\n" for d in docs)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def ids(text):
    return TOK(text, add_special_tokens=False)["input_ids"]


def take(stream, n):
    return [next(stream) for _ in range(n)]


def texts_of(stream):
    """All documents a one-pass, unshuffled stream yields, split at EOS."""
    flat = torch.cat(list(stream), 1)[0].tolist() + stream.tokens  # plus the unfinished last sequence
    docs, current = [], []
    for t in flat:
        if t == EOS:
            docs.append(TOK.decode(current))
            current = []
        else:
            current.append(t)
    return docs


def one_pass(spec, **kw):
    kw = {"valid_fraction": 0, "shuffle": False, "loop": False, **kw}
    return PackedStream(str(spec), TOK, 4, 1, **kw)


DOCS = [f"document number {i} " + "abc " * (i % 7) for i in range(300)]


# -- packing --------------------------------------------------------------------------------


def test_packing_appends_eos_after_each_document_and_adds_no_bos(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ["ab", "cd", "efghij"])
    stream = PackedStream(str(f), TOK, seq_len=3, batch_size=1, valid_fraction=0, shuffle=False)
    a, b, c, d, e, f_, g, h, i, j = (ids(ch)[0] for ch in "abcdefghij")
    seqs = [next(stream)[0].tolist() for _ in range(5)]
    # a document longer than what is left of a sequence runs on into the next one
    assert seqs == [[a, b, EOS], [c, d, EOS], [e, f_, g], [h, i, j], [EOS, a, b]]
    assert TOK.bos_token_id not in sum(seqs, [])


def test_batches_are_long_tensors_and_counters_advance(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", DOCS)  # ~8,900 tokens
    stream = PackedStream(str(f), TOK, 16, 4, valid_fraction=0)
    batch = next(stream)
    assert batch.dtype == torch.long and batch.shape == (4, 16)
    assert stream.tokens_emitted == 64 and stream.epoch == 0
    take(stream, 199)
    assert stream.tokens_emitted == 200 * 64 and stream.epoch == 1


def test_same_seed_same_batches_different_seed_different(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", DOCS)
    one = take(PackedStream(str(f), TOK, 16, 4, seed=1), 5)
    two = take(PackedStream(str(f), TOK, 16, 4, seed=1), 5)
    other = take(PackedStream(str(f), TOK, 16, 4, seed=2), 5)
    assert all(torch.equal(x, y) for x, y in zip(one, two))
    assert not all(torch.equal(x, y) for x, y in zip(one, other))


def test_shuffling_reorders_documents_but_keeps_each_once_per_epoch(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", DOCS)
    stream = PackedStream(str(f), TOK, 512, 1, valid_fraction=0, seed=3, shuffle_buffer=4)
    # short of one epoch by more than the shuffle buffer, so the next epoch cannot have started
    almost_one_epoch = sum(len(ids(d)) + 1 for d in DOCS) // 512 - 5
    whole = []  # the documents lying wholly inside one sequence, in the order they come
    for _ in range(almost_one_epoch):
        whole += TOK.decode(next(stream)[0]).split("</s>")[1:-1]
    assert len(whole) > 150 and len(set(whole)) == len(whole) and set(whole) <= set(DOCS)
    assert whole != sorted(whole, key=DOCS.index)


# -- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [1, 7, 30, 61])
def test_resume_continues_exactly_including_across_epochs(tmp_path, stop):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:40])
    write_jsonl(tmp_path / "b.jsonl.gz", DOCS[40:130], gz=True)
    (tmp_path / "c.txt").write_text("\n\n".join(DOCS[130:160]), encoding="utf-8")
    spec = str(tmp_path)

    def make():
        return PackedStream(spec, TOK, 16, 3, seed=7, shuffle_buffer=8, valid_fraction=0.05)

    full = take(make(), stop + 40)
    first = make()
    take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON, as in a checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    rest = take(resumed, 40)
    assert all(torch.equal(x, y) for x, y in zip(full[stop:], rest))
    assert resumed.tokens_emitted == (stop + 40) * 3 * 16
    if stop == 61:
        assert resumed.epoch >= 1  # the corpus is small enough to wrap around
    # small enough for a checkpoint: the RNG (~7 KB) and the shuffle buffer; the chunk is not stored
    assert len(json.dumps(state)) < 10_000


def test_resume_refuses_other_seed_or_changed_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    stream = PackedStream(str(tmp_path), TOK, 16, 2, seed=1)
    next(stream)
    state = stream.state_dict()
    with pytest.raises(RadladsError, match="for seed 1, not 2"):
        PackedStream(str(tmp_path), TOK, 16, 2, seed=2).load_state_dict(state)
    write_jsonl(tmp_path / "b.jsonl", DOCS)
    with pytest.raises(RadladsError, match=r"data files changed since the checkpoint \(1 files then, 2 now\)"):
        PackedStream(str(tmp_path), TOK, 16, 2, seed=1).load_state_dict(state)


# -- hold-out -------------------------------------------------------------------------------


def seen(spec, split, shuffle=False, **kw):
    stream = PackedStream(str(spec), TOK, 9, 1, split=split, loop=False, shuffle=shuffle, **kw)
    return [TOK.decode(b[0][:8]) for b in stream]


def test_train_and_valid_documents_are_disjoint(tmp_path):
    docs = [f"u{i:07d}" for i in range(400)]  # 8 bytes + EOS = exactly one 9-token sequence each
    f = write_jsonl(tmp_path / "d.jsonl", docs + docs[:50])  # duplicates must land on one side only
    train, valid = seen(f, "train", valid_fraction=0.1), seen(f, "valid", valid_fraction=0.1)
    assert valid and train and not (set(train) & set(valid))
    assert set(train) | set(valid) == set(docs) and len(train) + len(valid) == 450
    assert 15 < len(set(valid)) < 70  # about 10% held out
    # the split does not depend on the training seed: each stage has its own seed
    assert sorted(seen(f, "train", valid_fraction=0.1, seed=5, shuffle=True)) == sorted(train)


def test_small_corpus_still_holds_out_one_document(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ["aaaaaaa1", "bbbbbbb2", "ccccccc3"])
    assert seen(f, "valid", valid_fraction=0.005) == ["aaaaaaa1"]
    assert seen(f, "train", valid_fraction=0.005) == ["bbbbbbb2", "ccccccc3"]
    assert seen(f, "train", valid_fraction=0) == ["aaaaaaa1", "bbbbbbb2", "ccccccc3"]
    single = write_jsonl(tmp_path / "one.jsonl", ["aaaaaaa1"] * 3)  # nothing distinct to spare
    assert seen(single, "train", valid_fraction=0.005) == ["aaaaaaa1"] * 3


def test_validation_batches_are_the_first_held_out_sequences(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", DOCS)
    a = validation_batches(str(f), TOK, 8, 5, valid_fraction=0.2)
    b = validation_batches(str(f), TOK, 8, 5, valid_fraction=0.2)
    assert len(a) == 5 and all(x.shape == (1, 8) for x in a) and all(torch.equal(x, y) for x, y in zip(a, b))
    held_out = texts_of(one_pass(f, split="valid", valid_fraction=0.2))
    assert 20 < len(held_out) < 100 and held_out == [d for d in DOCS if d in held_out]  # corpus order
    assert torch.cat(a, 1)[0].tolist() == sum((ids(d) + [EOS] for d in held_out), [])[:40]
    # a separate validation file is read whole (split="all"); it has fewer sequences than asked for
    other = write_jsonl(tmp_path / "valid.jsonl", ["held out text number one", "and two"])
    c = validation_batches(str(other), TOK, 8, 100, split="all")
    assert torch.cat(c, 1)[0].tolist() == (ids("held out text number one") + [EOS] + ids("and two") + [EOS])[:32]


def test_validation_of_a_tiny_held_out_set_fills_one_sequence(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ["ab", "cdefghijklmnop"])
    (batch,) = validation_batches(str(f), TOK, 8, 4, valid_fraction=0.005)
    assert TOK.decode(batch[0]) == "ab</s>ab</s>ab"  # repeated rather than nothing to validate on


# -- formats --------------------------------------------------------------------------------


def test_txt_documents_are_blank_line_blocks(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\n\nsecond doc\n  \nthird", encoding="utf-8")
    assert texts_of(one_pass(tmp_path / "a.txt")) == ["first doc\nstill first", "second doc", "third"]
    # long blocks and long lines are cut, never held whole; multi-byte characters stay intact
    monkeypatch.setattr(data, "TXT_DOC_CHARS", 10)
    monkeypatch.setattr(data, "TXT_LINE_BYTES", 8)
    (tmp_path / "b.txt").write_text("ééééééééé\nshort\n\nx\n", encoding="utf-8")
    docs = texts_of(one_pass(tmp_path / "b.txt"))
    assert "".join(docs).replace("\n", "") == "éééééééééshortx" and len(docs) >= 3


def test_formats_jsonl_gz_parquet_folder_glob_and_text_field(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["json one", "json two"])
    write_jsonl(tmp_path / "b.jsonl.gz", ["gz one"], gz=True)
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("txt gz one\n\ntxt gz two\n")
    (tmp_path / "sub").mkdir()
    pq.write_table(pa.table({"text": ["parquet one", None, "parquet two"]}), tmp_path / "sub" / "d.parquet")
    (tmp_path / "notes.md").write_text("not data")  # ignored inside a folder
    everything = ["json one", "json two", "gz one", "txt gz one", "txt gz two", "parquet one", "parquet two"]
    assert texts_of(one_pass(tmp_path)) == everything  # sorted file order when not shuffled
    assert texts_of(one_pass(tmp_path / "*.jsonl*")) == everything[:3]
    assert texts_of(one_pass(f"{tmp_path}/**/*.parquet")) == everything[-2:]
    assert texts_of(one_pass(tmp_path / "c.txt.gz")) == ["txt gz one", "txt gz two"]
    write_jsonl(tmp_path / "body.jsonl", ["in body"], field="body")
    pq.write_table(pa.table({"body": ["parquet body"]}), tmp_path / "body.parquet")
    assert texts_of(one_pass(tmp_path / "body.jsonl", text_field="body")) == ["in body"]
    assert texts_of(one_pass(tmp_path / "body.parquet", text_field="body")) == ["parquet body"]


def test_large_parquet_resumes_inside_later_row_groups(tmp_path):
    docs = [f"row {i:04d}" for i in range(3000)]
    pq.write_table(pa.table({"text": docs}), tmp_path / "p.parquet", row_group_size=500)
    stats = data._Stats()
    assert [t for _, t in data.read_documents(tmp_path / "p.parquet", "text", 1234, stats)] == docs[1234:]


def test_lone_surrogates_from_json_escapes_are_repaired(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text": "ok \\ud800 text \\ud83d\\ude00"}\n{"text": "fine"}\n',
                                      encoding="utf-8")
    assert texts_of(one_pass(tmp_path / "s.jsonl")) == ["ok \ufffd text \U0001f600", "fine"]  # pairs stay


# -- memory ---------------------------------------------------------------------------------


def test_memory_stays_bounded_on_a_large_corpus(tmp_path):
    doc_bytes = 1000
    docs = [f"{i:06d} " + "word " * ((doc_bytes - 7) // 5) for i in range(4000)]  # ~4 MB of text
    f = write_jsonl(tmp_path / "big.jsonl.gz", docs, gz=True)
    stream = PackedStream(str(f), TOK, 32, 4, shuffle_buffer=16)
    bound = 16 * 32 + 32 + data.TOKENIZE_DOCS * (doc_bytes + 1)  # buffer + partial sequence + one chunk
    for _ in range(1000):  # 128K tokens: an eighth of the corpus
        next(stream)
        assert stream.buffered_tokens <= bound
    assert stream.doc_pos < 4000 / 4  # reading only as far as needed, never ahead to the end


# -- bad input ------------------------------------------------------------------------------


def corrupt_gzip(p):
    (p / "x.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return str(p / "x.jsonl.gz")


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: str(p / "missing.jsonl"), r"data not found: .*missing\.jsonl"),
        (lambda p: str(p / "*.nothing"), r"no files match .*\*\.nothing"),
        (lambda p: (p / "x.csv").write_text("a") and str(p / "x.csv"), r"unsupported data file .*x\.csv"),
        (lambda p: (p / "x.parquet.gz").write_text("a") and str(p / "*.gz"), r"unsupported data file .*parquet\.gz"),
        (lambda p: (p / "sub").mkdir() or str(p / "sub"), r"no \.txt, .* files in"),
        (lambda p: (p / "e.jsonl").write_text("\n\n") is not None and str(p / "e.jsonl"), "no non-empty document in"),
        (lambda p: write_jsonl(p / "w.jsonl", ["", "   "]) and str(p / "w.jsonl"),
         r"no non-empty document in .*w\.jsonl \(skipped: 2 empty text\)"),
        (lambda p: (p / "u.jsonl").write_bytes(b'{"text": "\xff\xfe bad"}\n' * 5) and str(p / "u.jsonl"),
         r"^u\.jsonl is not UTF-8 text$"),
        (lambda p: (p / "u.txt").write_bytes(b"\xff\xfe\n" * 5) and str(p / "u.txt"), r"^u\.txt is not UTF-8 text$"),
        (lambda p: write_jsonl(p / "f.jsonl", ["x"] * 5, field="body") and str(p / "f.jsonl"),
         r"^no line of f\.jsonl has the field 'text' \(keys: body, title\); set --text-field$"),
        (lambda p: write_jsonl(p / "g.jsonl", ["x"] * 500, field="body") and str(p / "g.jsonl"),
         r"^none of the first 100 lines of g\.jsonl has the field 'text' \(keys: body, title\)"),
        (lambda p: pq.write_table(pa.table({"body": ["x"]}), p / "b.parquet") or str(p / "b.parquet"),
         r"b\.parquet has no column 'text' \(columns: body\)"),
        (lambda p: (p / "n.jsonl").write_text("not json\n[1]\n") and str(p / "n.jsonl"),
         r"no line of n\.jsonl is a JSON object: is it JSON Lines\?"),
        (corrupt_gzip, r"^cannot read .*x\.jsonl\.gz: "),
        (lambda p: "teacher", "must first be sampled into a file"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, setup, message):
    with pytest.raises(RadladsError, match=message) as e:
        next(PackedStream(setup(tmp_path), TOK, 8, 1))
    assert "\n" not in str(e.value)


def test_bad_arguments(tmp_path):
    f = str(write_jsonl(tmp_path / "d.jsonl", DOCS))
    with pytest.raises(RadladsError, match="batch size must be at least 1, got 0"):
        PackedStream(f, TOK, 8, 0)
    with pytest.raises(RadladsError, match="sequence length must be at least 2, got 1"):
        PackedStream(f, TOK, 1, 1)
    with pytest.raises(RadladsError, match=r"valid_fraction must be in \[0, 1\), got 1.5"):
        PackedStream(f, TOK, 8, 1, valid_fraction=1.5)
    with pytest.raises(RadladsError, match="no held-out documents in .*: pass --valid-data"):
        next(PackedStream(f, TOK, 8, 1, split="valid", valid_fraction=0))


def test_seq_len_checks():
    with pytest.raises(RadladsError, match="^sequence length 4096 is above the teacher's context of 2048 tokens$"):
        check_seq_len(4096, 2048)
    with pytest.raises(RadladsError, match="at least 2"):
        check_seq_len(1, 2048)
    check_seq_len(2048, 2048)
    check_seq_len(100_000, None)  # unknown context: no limit


def test_hf_spec_fails_with_one_line_offline(monkeypatch):
    class Offline(ConnectionError):
        pass

    def load_dataset(*args, **kwargs):
        raise Offline("Couldn't reach 'nope/none' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(RadladsError, match=r"^cannot stream hf:nope/none:cfg: Couldn't reach 'nope/none' .*\)$"):
        PackedStream("hf:nope/none:cfg", TOK, 8, 1)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(RadladsError, match="needs the datasets package"):
        PackedStream("hf:nope/none", TOK, 8, 1)
    with pytest.raises(RadladsError, match="expected hf:NAME"):
        PackedStream("hf:", TOK, 8, 1)


def test_hf_spec_streams_records_and_resumes(monkeypatch):
    records = [{"text": f"hf record {i}"} for i in range(40)] + [{"other": 1}]

    class FakeStream:
        def __init__(self, rows):
            self.rows = rows

        def skip(self, n):
            return FakeStream(self.rows[n:])

        def __iter__(self):
            return iter(self.rows)

    calls = []
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda *a, **k: calls.append((a, k)) or FakeStream(records)))
    full = take(PackedStream("hf:some/set::validation", TOK, 8, 2, valid_fraction=0), 80)
    assert calls[0] == (("some/set", None), {"split": "validation", "streaming": True})
    first = PackedStream("hf:some/set::validation", TOK, 8, 2, valid_fraction=0)
    take(first, 10)
    resumed = PackedStream("hf:some/set::validation", TOK, 8, 2, valid_fraction=0)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(full[10:], take(resumed, 70)))  # ~2.5 passes
    assert resumed.skipped == {"missing field 'text'": 1}


def test_skipped_lines_are_counted_and_reported_once(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    good = "".join(json.dumps({"text": d}) + "\n" for d in DOCS[:50])
    bad = b'{"text": "\xff"}\n' + b"not json\n" + b'{"body": "x"}\n' + b'{"text": " "}\n' + b'{"body": "y"}\n'
    path.write_bytes(good.encode() + bad + b"\n")
    stream = PackedStream(str(path), TOK, 8, 1, valid_fraction=0)
    take(stream, 2000)  # several epochs
    assert stream.epoch >= 2
    assert stream.skipped == {"not UTF-8": 1, "invalid JSON": 1, "missing field 'text'": 2, "empty text": 1}
    err = capsys.readouterr().err
    assert err.count("radlads: warning:") == 1
    assert ("skipped 5 of 55 lines in m.jsonl: 2 missing field 'text', 1 not UTF-8, 1 invalid JSON, "
            "1 empty text (keys seen: body)") in err


# -- teacher samples ------------------------------------------------------------------------


def test_teacher_samples_make_a_usable_corpus(tmp_path):
    teacher = tiny_teacher("llama")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    path = sample_teacher_corpus(teacher, TOK, tmp_path / "samples.jsonl", n_docs=3, max_new_tokens=12)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is untouched
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(line)["text"].strip() for line in lines)
    assert next(PackedStream(str(path), TOK, 8, 2, valid_fraction=0)).shape == (2, 8)
    again = sample_teacher_corpus(teacher, TOK, tmp_path / "again.jsonl", n_docs=3, max_new_tokens=12)
    assert again.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")  # seeded
    mtime = path.stat().st_mtime_ns
    sample_teacher_corpus(None, TOK, path, n_docs=3)  # cached: not regenerated
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


# -- real data ------------------------------------------------------------------------------


@pytest.mark.skipif(not (WIKI / "valid.jsonl.gz").is_file(), reason="shared corpus not beside the repository")
def test_real_wikipedia_validation_file():
    (batch,) = validation_batches(str(WIKI / "valid.jsonl.gz"), TOK, 256, 1, split="all")
    assert batch.shape == (1, 256) and EOS not in batch[0, :100].tolist()
