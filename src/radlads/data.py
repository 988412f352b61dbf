"""Training data: text -> teacher tokens -> packed fixed-length sequences, streamed.

Data specs
    * a file, a folder (searched recursively) or a glob of `.txt`, `.jsonl` and `.parquet` files;
      `.txt` and `.jsonl` may be gzipped (`.gz`, also C4-style `.json.gz` JSON Lines), parquet
      never is. JSON Lines and parquet take the text from `text_field` ("text" by default). In a
      `.txt` file a document is a block of lines between blank lines; a block longer than
      TXT_DOC_CHARS is cut at a line end into several documents, so memory stays bounded. (For
      long-context training, give whole documents as JSON Lines records instead.)
    * `hf:NAME[:CONFIG][:SPLIT]`: a Hugging Face dataset in streaming mode (needs `datasets` and a
      network; offline it fails with one line).
    * `teacher`, the default when no data is given: documents sampled from the teacher itself
      (temperature 1, from BOS and a few generic openings) by `sample_teacher_corpus`, cached once
      as .jsonl and then read as an ordinary file. Why this default: distillation only asks the
      student to reproduce the teacher, so the teacher's own distribution is the natural (if
      narrow) corpus, and it works on a fresh machine without downloading anything.

`read_texts(spec)` yields a spec's documents as training reads them, for the commands that
score held-out text (`radlads ppl`), so `--data` means the same documents everywhere.

Packing: each document is tokenised with the teacher's tokenizer (no special tokens added), EOS
is appended, and the token stream is cut into `seq_len` pieces; a document may span two pieces.

Order is deterministic from the seed with bounded memory: the file order is shuffled per epoch,
documents are shuffled within each tokenisation chunk (TOKENIZE_DOCS documents), and packed
sequences pass through a shuffle buffer of `shuffle_buffer` sequences. Files are streamed line by
line (gzip included); nothing reads a whole file, so memory is the shuffle buffer plus one chunk,
whatever the corpus size. The stream loops over the data forever, counting `epoch`.

Hold-out: a document is held out for validation when a salted hash of its text falls below
`valid_fraction` (and, when the corpus has at least two documents, its very first document is
always held out, so the validation split is never empty). The hash ignores the seed on purpose:
every stage trains with its own seed and must still miss the same validation documents. Equal
texts hash equally, so a duplicated document cannot sit on both sides.

Resume: `state_dict()` is small and JSON-serialisable (positions, the partial token buffer, the
shuffle buffer, the RNG); after `load_state_dict()` the stream yields exactly the batches an
uninterrupted stream would have. The current tokenisation chunk is not stored: it is re-read and
re-tokenised from its recorded start.

Distributed: the stream always yields the GLOBAL batch, identical on every rank; the trainer
takes `batch[rank::world_size]`, so results do not depend on the number of processes.

Bad data is one RadladsError line; bad lines (not UTF-8, invalid JSON, missing field, empty
text) are skipped, counted in `stream.skipped`, and reported once per file on stderr.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import sys
import tempfile
import zlib
from collections import Counter, deque
from pathlib import Path
from typing import Iterator

import torch

from radlads.errors import RadladsError
from radlads.rng import python_rng_from_json, python_rng_to_json

TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")
TOKENIZE_DOCS = 64  # documents per tokenizer call: the fast tokenizer parallelises within a call
TOKENIZE_CHARS = 1 << 20  # ...unless they are long: a chunk stops once it holds this much text
TXT_DOC_CHARS = 1 << 16  # a longer blank-line block of a .txt file becomes several documents
TXT_LINE_BYTES = 1 << 16  # a longer .txt line is read in pieces, never whole
PROBE_LINES = 100  # lines of each file checked up front, so a wrong field or format fails at once
STATE_VERSION = 2
_HOLDOUT_KEY = b"radlads-holdout"


def check_seq_len(seq_len: int, max_position_embeddings: int | None) -> None:
    if seq_len < 2:
        raise RadladsError(f"sequence length must be at least 2, got {seq_len}")
    if max_position_embeddings and seq_len > max_position_embeddings:
        raise RadladsError(
            f"sequence length {seq_len} is above the teacher's context of {max_position_embeddings} tokens"
        )


def resolve_files(spec: str) -> list[Path]:
    """The sorted data files a local spec (file, folder or glob) names."""
    if spec == "teacher":
        raise RadladsError("the 'teacher' data spec must first be sampled into a file (radlads convert does this)")
    if any(ch in spec for ch in "*?["):
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p)]
        if not files:
            raise RadladsError(f"no files match {spec}")
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES)
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            if not files:
                raise RadladsError(f"no {', '.join(TEXT_SUFFIXES)} files in {path}")
        elif path.is_file():
            files = [path]
        else:
            raise RadladsError(f"data not found: {spec}")
    for f in files:
        if not f.name.endswith(TEXT_SUFFIXES):
            raise RadladsError(f"unsupported data file {f}: expected one of {', '.join(TEXT_SUFFIXES)}")
    return sorted(files)


def _parse_hf(spec: str) -> tuple[str, str | None, str]:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise RadladsError(f"bad Hugging Face data spec {spec!r}: expected hf:NAME[:CONFIG][:SPLIT]")
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return parts[0], config, split


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# Reading documents from one source, counting what is skipped
# --------------------------------------------------------------------------------------------


class _Stats:
    """What one pass over one source saw: non-blank lines, usable documents, skip reasons."""

    def __init__(self):
        self.lines, self.usable = 0, 0
        self.reasons: Counter = Counter()
        self.keys: set[str] = set()  # the keys of records that missed the text field

    def skip(self, reason: str) -> None:
        self.reasons[reason] += 1

    def summary(self, name: str) -> str:
        parts = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
        text = f"skipped {sum(self.reasons.values())} of {self.lines} lines in {name}: {parts}"
        if self.keys:
            text += f" (keys seen: {_key_list(self.keys)})"
        return text

    def hopeless(self, name: str, field: str, complete: bool) -> str | None:
        """Why no document of this source can ever be used, or None when it may still have some."""
        if self.usable or not self.lines:
            return None
        where = f"no line of {name}" if complete else f"none of the first {self.lines} lines of {name}"
        if self.reasons["not UTF-8"] == self.lines:
            return f"{name} is not UTF-8 text" if complete else f"{where} is UTF-8 text"
        missing = self.reasons[f"missing field {field!r}"]
        broken = self.reasons["not UTF-8"] + self.reasons["invalid JSON"] + self.reasons["not a JSON object"]
        if missing and missing + broken == self.lines:
            return f"{where} has the field {field!r} (keys: {_key_list(self.keys)}); set --text-field"
        if broken == self.lines:
            return f"{where} is a JSON object: is it JSON Lines?"
        return None


def _key_list(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "") if keys else "none"


def _record_text(record, field: str, stats: _Stats) -> str | None:
    if not isinstance(record, dict):
        stats.skip("not a JSON object")
        return None
    if field not in record:
        stats.skip(f"missing field {field!r}")
        stats.keys.update(map(str, record))
        return None
    text = record[field]
    if text is not None and not isinstance(text, str):
        stats.skip(f"field {field!r} not a string")
        return None
    if not text or not text.strip():
        stats.skip("empty text")
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: tokenizers refuse it, so it becomes U+FFFD
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    stats.usable += 1
    return text


def read_documents(source, field: str, start: int, stats: _Stats,
                   max_lines: int | None = None) -> Iterator[tuple[int, str]]:
    """(resume position, text) for every usable document of `source` from position `start` on.

    A position counts lines (.jsonl, .txt) or rows (parquet, hf); reading again from a yielded
    resume position continues with the next document. `max_lines` stops after that many
    non-blank lines (or rows): a quick look at a file.
    """
    limit = max_lines if max_lines is not None else float("inf")
    if isinstance(source, str):
        yield from _read_hf(source, field, start, stats, limit)
        return
    name = source.name
    try:
        if name.endswith(".parquet"):
            yield from _read_parquet(source, field, start, stats, limit)
        elif name.endswith((".txt", ".txt.gz")):
            yield from _read_txt(source, start, stats, limit)
        else:
            yield from _read_jsonl(source, field, start, stats, limit)
    except (OSError, EOFError, zlib.error) as e:  # a broken or truncated gzip, an unreadable file
        raise RadladsError(f"cannot read {source}: {_first_line(e)}") from None


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path, field: str, start: int, stats: _Stats, limit):
    with _open(path) as f:
        for pos, raw in enumerate(f):
            if pos < start or not raw.strip():  # blank lines are neither documents nor skipped
                continue
            if stats.lines >= limit:
                return
            stats.lines += 1
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats.skip("not UTF-8")
                continue
            except ValueError:
                stats.skip("invalid JSON")
                continue
            text = _record_text(record, field, stats)
            if text is not None:
                yield pos + 1, text


def _txt_lines(f) -> Iterator[bytes]:
    """Byte lines of `f`; a line longer than TXT_LINE_BYTES comes in pieces cut between characters."""
    rest = b""
    while True:
        read = f.readline(TXT_LINE_BYTES)
        line, rest = rest + read, b""
        if not line:
            return
        if len(read) == TXT_LINE_BYTES and not read.endswith(b"\n"):
            # Cut before the last (possibly incomplete) UTF-8 character and carry it over.
            cut = len(line)
            while cut > len(line) - 4 and line[cut - 1] & 0xC0 == 0x80:
                cut -= 1
            if line[cut - 1] >= 0xC0:
                cut -= 1
            if cut > 0:
                line, rest = line[:cut], line[cut:]
        yield line


def _read_txt(path: Path, start: int, stats: _Stats, limit):
    with _open(path) as f:
        block, size = [], 0
        for pos, raw in enumerate(_txt_lines(f)):
            if pos < start:
                continue
            if raw.strip():
                if stats.lines >= limit:
                    return
                stats.lines += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    stats.skip("not UTF-8")
                    continue
                block.append(line)
                size += len(line)
                if size < TXT_DOC_CHARS:
                    continue
            if block:
                stats.usable += 1
                yield pos + 1, "".join(block).rstrip("\r\n")
                block, size = [], 0
        if block:
            stats.usable += 1
            yield pos + 1, "".join(block).rstrip("\r\n")


def _read_parquet(path: Path, field: str, start: int, stats: _Stats, limit):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise RadladsError(f"cannot read {path}: {_first_line(e)}") from None
    columns = pf.schema_arrow.names
    if field not in columns:
        raise RadladsError(f"{path} has no column {field!r} (columns: {_key_list(columns)}); set --text-field")
    # Whole row groups before `start` are skipped from the footer metadata, without decoding.
    pos, first_group = 0, 0
    while first_group < pf.num_row_groups and pos + pf.metadata.row_group(first_group).num_rows <= start:
        pos += pf.metadata.row_group(first_group).num_rows
        first_group += 1
    groups = list(range(first_group, pf.num_row_groups))
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=1024, columns=[field], row_groups=groups):
        for value in batch.column(0).to_pylist():
            pos += 1
            if pos <= start:
                continue
            if stats.lines >= limit:
                return
            stats.lines += 1
            text = _record_text({field: value}, field, stats)
            if text is not None:
                yield pos, text


def _read_hf(spec: str, field: str, start: int, stats: _Stats, limit):
    name, config, split = _parse_hf(spec)
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        if start:
            ds = ds.skip(start)
        for pos, record in enumerate(ds, start):
            if stats.lines >= limit:
                return
            stats.lines += 1
            text = _record_text(record, field, stats)
            if text is not None:
                yield pos + 1, text
    except RadladsError:
        raise
    except ImportError:
        raise RadladsError(f"{spec} needs the datasets package: pip install datasets") from None
    except Exception as e:  # noqa: BLE001 - offline, unknown dataset, auth: all one line
        raise RadladsError(f"cannot stream {spec}: {_first_line(e)}") from None


def sources(spec: str) -> list:
    """What a spec reads, in order: its sorted files, or the one `hf:` dataset name."""
    return [spec] if spec.startswith("hf:") else resolve_files(spec)


def _check_source(name: str, field: str, stats: _Stats) -> None:
    """After a whole pass over one source: fail when none of it could ever be used."""
    problem = stats.hopeless(name, field, complete=True)
    if problem:
        raise RadladsError(problem)


def _warn_skipped(name: str, stats: _Stats) -> None:
    if stats.reasons and os.environ.get("RANK", "0") == "0":
        print(f"radlads: warning: {stats.summary(name)}", file=sys.stderr)


def read_texts(spec: str, text_field: str = "text") -> Iterator[str]:
    """Every usable document of a data spec, source by source: the documents training reads from it
    (before any hold-out split), for the commands that score text (`radlads ppl`)."""
    for source in sources(spec):
        stats = _Stats()
        for _, text in read_documents(source, text_field, 0, stats):
            yield text
        _check_source(_name(source), text_field, stats)
        _warn_skipped(_name(source), stats)


# --------------------------------------------------------------------------------------------
# The packed, shuffled, resumable stream
# --------------------------------------------------------------------------------------------


class PackedStream:
    """Iterator of LongTensor batches [batch_size, seq_len] from a data spec (see the module doc).

    split: "train" (hold-out excluded), "valid" (only the hold-out) or "all" (everything, for a
    separate validation file). shuffle=False reads files in sorted order without any shuffling;
    loop=False stops after one pass instead of starting the next epoch.
    """

    def __init__(self, spec: str, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                 text_field: str = "text", split: str = "train", valid_fraction: float = 0.005,
                 shuffle_buffer: int = 64, loop: bool = True, shuffle: bool = True):
        if batch_size < 1:
            raise RadladsError(f"batch size must be at least 1, got {batch_size}")
        check_seq_len(seq_len, None)
        if split not in ("train", "valid", "all"):
            raise RadladsError(f"split must be train, valid or all, got {split!r}")
        if not 0 <= valid_fraction < 1:
            raise RadladsError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
        if tokenizer.eos_token_id is None:
            raise RadladsError("the tokenizer has no EOS token to end documents with")
        self.spec, self.tokenizer, self.seq_len, self.batch_size = spec, tokenizer, seq_len, batch_size
        self.seed, self.text_field, self.split, self.valid_fraction = seed, text_field, split, valid_fraction
        self.shuffle, self.loop, self.eos = shuffle, loop, tokenizer.eos_token_id
        self.capacity = max(1, shuffle_buffer) if shuffle else 1
        self.sources: list = sources(spec)
        self._files_digest = hashlib.sha1("\n".join(map(str, self.sources)).encode()).hexdigest()[:16]
        self._threshold = int(valid_fraction * 2**64)
        self._forced_valid = self._probe()

        self.skipped: Counter = Counter()  # skipped lines by reason, over each file's first full pass
        self._reported: set[str] = set()
        self.tokens_emitted = 0
        self.rng = random.Random(seed)
        self.buffer: list[list[int]] = []  # the shuffle buffer
        self.pending: deque[list[int]] = deque()  # packed sequences of the current chunk, in order
        self._set_position({"epoch": 0, "file_idx": 0, "doc_pos": 0, "tokens": [], "epoch_docs": 0,
                            "epoch_usable": 0})
        self._chunk, self._consumed = self._position(), 0

    @property
    def epoch(self) -> int:
        """The 0-based pass over the data the reader is in; it runs a chunk and a shuffle buffer ahead."""
        return self._epoch

    @property
    def buffered_tokens(self) -> int:
        """Tokens held in memory: partial sequence, current chunk and shuffle buffer."""
        return len(self.tokens) + self.seq_len * (len(self.pending) + len(self.buffer))

    # -- checks up front --------------------------------------------------------------------

    def _probe(self) -> int | None:
        """Check the first lines of every source; returns the hash of the always-held-out document."""
        found, complete, reasons = [], True, Counter()
        for source in self.sources:
            stats = _Stats()
            docs = read_documents(source, self.text_field, 0, stats, max_lines=PROBE_LINES)
            whole = True
            for _, text in docs:
                if text not in found:
                    found.append(text)
                if len(found) >= 2:  # this source has a usable document, and the hold-out its pick
                    whole = False
                    break
            else:
                whole = stats.lines < PROBE_LINES
            docs.close()
            complete, reasons = complete and whole, reasons + stats.reasons
            problem = stats.hopeless(_name(source), self.text_field, whole)
            if problem:
                raise RadladsError(problem)
        if not found and complete:
            detail = f" (skipped: {', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if reasons else ""
            raise RadladsError(f"no non-empty document in {self.spec}{detail}")
        if len(found) >= 2 and self.valid_fraction > 0:  # only when something is left to train on
            return self._hash(found[0])
        return None

    def _hash(self, text: str) -> int:
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=_HOLDOUT_KEY).digest()
        return int.from_bytes(digest, "little")

    def _wanted(self, text: str) -> bool:
        if self.split == "all":
            return True
        held_out = False
        if self.valid_fraction > 0:
            h = self._hash(text)
            held_out = h < self._threshold or h == self._forced_valid
        return held_out == (self.split == "valid")

    # -- state ------------------------------------------------------------------------------

    def _position(self) -> dict:
        return {"epoch": self._epoch, "file_idx": self.file_idx, "doc_pos": self.doc_pos,
                "tokens": list(self.tokens), "epoch_docs": self._epoch_docs, "epoch_usable": self._epoch_usable}

    def _set_position(self, pos: dict) -> None:
        self._epoch, self.file_idx, self.doc_pos = pos["epoch"], pos["file_idx"], pos["doc_pos"]
        self.tokens = list(pos["tokens"])
        self._epoch_docs, self._epoch_usable = pos["epoch_docs"], pos["epoch_usable"]
        self.order = self._order(self._epoch)
        self._docs = None

    def _order(self, epoch: int) -> list:
        order = list(self.sources)
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def state_dict(self) -> dict:
        """Where the stream is, as plain JSON: the epoch (with the seed it fixes the file order), file
        index and line within it, the partial token buffer, the shuffle buffer, the RNG and
        tokens_emitted; plus a digest of the file list, so a resume on other data is refused."""
        if self.pending:  # mid-chunk: record where the chunk started and how much of it is used
            position, consumed = self._chunk, self._consumed
        else:
            position, consumed = self._position(), None
        return {
            "version": STATE_VERSION, "seq_len": self.seq_len, "seed": self.seed, "files": self._files_digest,
            "n_files": len(self.sources), "position": position, "consumed": consumed,
            "buffer": [list(s) for s in self.buffer], "rng": python_rng_to_json(self.rng.getstate()),
            "tokens_emitted": self.tokens_emitted,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise RadladsError("the checkpoint's data state is from another radlads version: start a new run")
        for key in ("seq_len", "seed"):
            if state[key] != getattr(self, key):
                raise RadladsError(f"the checkpoint's data state is for {key} {state[key]}, not {getattr(self, key)}")
        if state["files"] != self._files_digest:
            raise RadladsError(f"the data files changed since the checkpoint ({state['n_files']} files then, "
                               f"{len(self.sources)} now): resume with the same data")
        self._set_position(state["position"])
        self.buffer = [list(s) for s in state["buffer"]]
        self.rng.setstate(python_rng_from_json(state["rng"]))
        self.tokens_emitted = state["tokens_emitted"]
        self.pending.clear()
        self._chunk, self._consumed = self._position(), 0
        if state["consumed"] is not None:
            # Re-read and re-tokenise the chunk the checkpoint was taken in, then drop its used part.
            self._fill()
            for _ in range(state["consumed"]):
                self.pending.popleft()
            self._consumed = state["consumed"]

    # -- iteration --------------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        rows = []
        for _ in range(self.batch_size):
            rows.append(self._next_sequence())
        self.tokens_emitted += self.batch_size * self.seq_len
        return torch.tensor(rows, dtype=torch.long)

    def _next_sequence(self) -> list[int]:
        while len(self.buffer) < self.capacity:
            if not self.pending and not self._fill():
                break
            if self.pending:
                self.buffer.append(self.pending.popleft())
                self._consumed += 1
        if not self.buffer:
            raise StopIteration
        i = self.rng.randrange(len(self.buffer)) if self.shuffle else 0
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()

    def _fill(self) -> bool:
        """Tokenise the next chunk of documents into `pending`; False when the data is exhausted."""
        self._chunk, self._consumed = self._position(), 0
        texts, chars = [], 0
        while len(texts) < TOKENIZE_DOCS and chars < TOKENIZE_CHARS:
            text = self._next_document()
            if text is None:
                break
            texts.append(text)
            chars += len(text)
        if not texts:
            return False
        if self.shuffle:  # seeded by the chunk's start, so a resumed stream shuffles it the same way
            c = self._chunk
            random.Random(f"{self.seed}:{c['epoch']}:{c['file_idx']}:{c['doc_pos']}").shuffle(texts)
        tokens = self.tokens
        for ids in self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                                  verbose=False)["input_ids"]:
            tokens.extend(ids)
            tokens.append(self.eos)
        full = len(tokens) - len(tokens) % self.seq_len
        self.pending.extend(tokens[i:i + self.seq_len] for i in range(0, full, self.seq_len))
        self.tokens = tokens[full:]
        return True

    def _next_document(self) -> str | None:
        while True:
            if self._docs is None:
                if self.file_idx >= len(self.order):
                    self._check_epoch()
                    if not self.loop:
                        return None
                    self._set_position({"epoch": self._epoch + 1, "file_idx": 0, "doc_pos": 0,
                                        "tokens": self.tokens, "epoch_docs": 0, "epoch_usable": 0})
                self._stats, self._from_start = _Stats(), self.doc_pos == 0
                self._docs = read_documents(self.order[self.file_idx], self.text_field, self.doc_pos, self._stats)
            item = next(self._docs, None)
            if item is None:
                self._finish_source()
                continue
            self.doc_pos, text = item
            self._epoch_usable += 1
            if self._wanted(text):
                self._epoch_docs += 1
                return text

    def _finish_source(self) -> None:
        source, stats = self.order[self.file_idx], self._stats
        name = _name(source)
        if self._from_start:
            _check_source(name, self.text_field, stats)
            if name not in self._reported:
                self._reported.add(name)
                self.skipped.update(stats.reasons)
                _warn_skipped(name, stats)
        self._docs = None
        self.file_idx += 1
        self.doc_pos = 0

    def _check_epoch(self) -> None:
        if not self._epoch_usable:
            raise RadladsError(f"no non-empty document in {self.spec}")
        if not self._epoch_docs and self.split == "train":
            raise RadladsError(f"all {self._epoch_usable} documents of {self.spec} are held out for validation: "
                               f"lower valid_fraction ({self.valid_fraction})")
        if not self._epoch_docs:
            raise RadladsError(f"no held-out documents in {self.spec}: pass --valid-data or raise valid_fraction")


def _name(source) -> str:
    return source if isinstance(source, str) else source.name


def validation_batches(spec: str, tokenizer, seq_len: int, n_sequences: int, text_field: str = "text",
                       split: str = "valid", valid_fraction: float = 0.005) -> list[torch.Tensor]:
    """A fixed validation set: the first `n_sequences` sequences of the split, unshuffled, each [1, seq_len].

    When the held-out text runs out first, fewer sequences come back (at least one: held-out text
    shorter than one sequence is repeated to fill it).
    """
    def stream(loop: bool) -> PackedStream:
        return PackedStream(spec, tokenizer, seq_len, 1, text_field=text_field, split=split,
                            valid_fraction=valid_fraction, shuffle=False, loop=loop)

    batches = list(itertools.islice(stream(loop=False), n_sequences))
    if not batches and n_sequences > 0:
        batches = [next(stream(loop=True))]
    return batches


# --------------------------------------------------------------------------------------------
# Default data: text sampled from the teacher
# --------------------------------------------------------------------------------------------

SAMPLE_PROMPTS = ("", "The", "In", "Once upon a time", "A", "It is", "There are", "When", "This")


@torch.no_grad()
def sample_teacher_corpus(model, tokenizer, path: str | Path, n_docs: int, max_new_tokens: int = 512,
                          seed: int = 0, batch_size: int = 8) -> Path:
    """Write `n_docs` documents sampled from the teacher to `path` as .jsonl; an existing file is kept.

    Each document starts from BOS plus one of a few generic openings and is sampled at
    temperature 1 with no top-k/top-p, i.e. from the teacher's own distribution. The file appears
    atomically, so an interrupted run never leaves a half-written cache behind.
    """
    path = Path(path)
    if path.is_file():
        return path
    if n_docs < 1:
        raise RadladsError(f"the number of teacher samples must be at least 1, got {n_docs}")
    path.parent.mkdir(parents=True, exist_ok=True)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    device = next(model.parameters()).device
    picker = random.Random(seed)
    fd, tmp = tempfile.mkstemp(prefix=".samples.", suffix=".tmp", dir=path.parent)
    try:
        # A private RNG stream: sampling must neither depend on nor disturb the caller's torch RNG.
        with io.open(fd, "w", encoding="utf-8") as out, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            written, attempts = 0, 0
            while written < n_docs:
                attempts += 1
                if attempts > 4 * n_docs + 10:
                    raise RadladsError("the teacher keeps sampling empty documents: is it a base language model?")
                prompts = [picker.choice(SAMPLE_PROMPTS) for _ in range(min(batch_size, n_docs - written))]
                rows = [([bos] if bos is not None else []) + tokenizer(p, add_special_tokens=False)["input_ids"]
                        for p in prompts]
                width = max(len(r) for r in rows)
                ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
                mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
                out_ids = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                         top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad)
                for row, prompt in zip(out_ids[:, width:].tolist(), prompts):
                    text = prompt + tokenizer.decode(row, skip_special_tokens=True)
                    if text.strip() and written < n_docs:
                        out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                        written += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
