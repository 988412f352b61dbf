"""Training data: text files -> teacher tokens -> packed fixed-length sequences, streamed.

A data spec is a file, folder or glob of .txt / .jsonl / .parquet files (.txt and .jsonl may be
.gz), `hf:NAME[:CONFIG][:SPLIT]` for a streaming Hugging Face dataset (online users), or
`teacher`: text sampled from the teacher itself and cached as .jsonl. `teacher` is the default
when no data is given because it needs no download at all, and because distillation only asks
the student to match the teacher, the teacher's own distribution is a fair (if narrow) corpus.

Documents are tokenised with the teacher's tokenizer, EOS is appended to each, and the token
stream is cut into `seq_len` pieces. Order is deterministic from the seed: file order is
shuffled per epoch and packed sequences pass through a small shuffle buffer. Nothing reads a
whole file: memory is bounded by the shuffle buffer and one tokenisation batch.

Every document is assigned to train or validation by a hash of its file name and position
(independent of the seed, so no seed can leak validation text into training).

The stream always yields the GLOBAL batch, identical on every rank; a distributed trainer takes
`batch[rank::world_size]`, which makes results independent of the world size.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import random
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import torch

from radlads.errors import RadladsError

TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")
TOKENIZE_BATCH = 64  # documents per tokenizer call: the fast tokenizer parallelises within it


def resolve_files(spec: str) -> list[Path]:
    """The sorted data files a local spec names."""
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = [Path(p) for p in glob.glob(spec, recursive=True)]
        if not files:
            raise RadladsError(f"no files match {spec}")
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES)]
        if not files:
            raise RadladsError(f"no {', '.join(TEXT_SUFFIXES)} files in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise RadladsError(f"data not found: {spec}")
    files = sorted(files)
    for f in files:
        if not f.name.endswith(TEXT_SUFFIXES):
            raise RadladsError(f"unsupported data file {f}: expected one of {', '.join(TEXT_SUFFIXES)}")
    return files


def check_seq_len(seq_len: int, max_position_embeddings: int | None) -> None:
    if seq_len < 2:
        raise RadladsError(f"sequence length must be at least 2, got {seq_len}")
    if max_position_embeddings and seq_len > max_position_embeddings:
        raise RadladsError(
            f"sequence length {seq_len} is above the teacher's context of {max_position_embeddings} tokens"
        )


def is_validation(key: str, fraction: float) -> bool:
    return zlib.crc32(key.encode()) % 1_000_000 < fraction * 1_000_000


# --------------------------------------------------------------------------------------------
# Reading documents, one file at a time, skipping bad lines with a count
# --------------------------------------------------------------------------------------------


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_documents(path: Path, text_field: str, start: int, skipped: Counter) -> Iterator[tuple[int, str]]:
    """(position, text) for every document of `path` from position `start` on."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise RadladsError(f"{path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
        pos = 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=256):
            for text in batch.column(0).to_pylist():
                if pos >= start:
                    if isinstance(text, str) and text.strip():
                        yield pos, text
                    else:
                        skipped["empty text"] += 1
                pos += 1
        return
    with _open_binary(path) as f:
        if ".jsonl" in name or name.endswith(".json.gz"):
            for pos, raw in enumerate(f):
                if pos < start:
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skipped["not UTF-8"] += 1
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    skipped["invalid JSON"] += 1
                    continue
                text = record.get(text_field) if isinstance(record, dict) else None
                if text is None:
                    skipped[f"missing field {text_field!r}"] += 1
                    skipped.setdefault("_keys", set()).update(record.keys() if isinstance(record, dict) else [])
                elif not isinstance(text, str) or not text.strip():
                    skipped["empty text"] += 1
                else:
                    yield pos, text
        else:  # .txt: documents are blocks separated by blank lines
            block, pos = [], 0
            for raw in f:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skipped["not UTF-8"] += 1
                    continue
                if line.strip():
                    block.append(line.rstrip("\n"))
                    continue
                if block:
                    if pos >= start:
                        yield pos, "\n".join(block)
                    block, pos = [], pos + 1
            if block and pos >= start:
                yield pos, "\n".join(block)


def _skip_summary(path: Path, skipped: Counter) -> str:
    keys = skipped.pop("_keys", None)
    parts = [f"{n} {reason}" for reason, n in skipped.items() if n]
    text = f"skipped {sum(n for r, n in skipped.items() if n)} documents in {path.name}: {', '.join(parts)}"
    if keys:
        text += f" (keys seen: {', '.join(sorted(map(str, keys))[:10])})"
    return text


# --------------------------------------------------------------------------------------------
# The packed, shuffled, resumable stream
# --------------------------------------------------------------------------------------------


class PackedStream:
    """Iterator of LongTensor batches [batch_size, seq_len] from a data spec.

    `state_dict()` / `load_state_dict()` capture the exact position (file, document, leftover
    tokens, shuffle buffer, RNG), so a resumed stream continues with the very batches an
    uninterrupted one would have produced.
    """

    def __init__(self, spec: str, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                 text_field: str = "text", split: str = "train", valid_fraction: float = 0.005,
                 shuffle_buffer: int = 64, loop: bool = True):
        if batch_size < 1:
            raise RadladsError(f"batch size must be at least 1, got {batch_size}")
        check_seq_len(seq_len, None)
        if split not in ("train", "valid", "all"):
            raise RadladsError(f"split must be train, valid or all, got {split!r}")
        if not 0 <= valid_fraction < 1:
            raise RadladsError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
        self.spec, self.tokenizer, self.seq_len, self.batch_size = spec, tokenizer, seq_len, batch_size
        self.seed, self.text_field, self.split, self.valid_fraction = seed, text_field, split, valid_fraction
        self.shuffle_buffer, self.loop = max(1, shuffle_buffer), loop
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise RadladsError("the tokenizer has no EOS token to separate documents")
        self.hf = spec.startswith("hf:")
        self.files = [] if self.hf else resolve_files(spec)
        self.skipped: Counter = Counter()
        self._warned: set[str] = set()
        # position state
        self.epoch, self.file_idx, self.doc_pos = 0, 0, 0
        self.tokens: list[int] = []
        self.pending: list[list[int]] = []  # packed, in order, not yet in the shuffle buffer
        self.buffer: list[list[int]] = []
        self.rng = random.Random(seed)
        self.tokens_emitted = 0
        self._epoch_docs = 0
        self._docs: Iterator | None = None

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "file_idx": self.file_idx, "doc_pos": self.doc_pos,
            "tokens": list(self.tokens), "pending": [list(s) for s in self.pending],
            "buffer": [list(s) for s in self.buffer],
            "rng": _rng_to_json(self.rng.getstate()), "tokens_emitted": self.tokens_emitted,
            "epoch_docs": self._epoch_docs, "spec": self.spec, "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seq_len") != self.seq_len:
            raise RadladsError(f"checkpoint data state is for seq_len {state.get('seq_len')}, not {self.seq_len}")
        self.epoch, self.file_idx, self.doc_pos = state["epoch"], state["file_idx"], state["doc_pos"]
        self.tokens, self.buffer = list(state["tokens"]), [list(s) for s in state["buffer"]]
        self.pending = [list(s) for s in state["pending"]]
        self.rng.setstate(_rng_from_json(state["rng"]))
        self.tokens_emitted = state["tokens_emitted"]
        self._epoch_docs = state.get("epoch_docs", 0)
        self._docs = None

    # -- iteration --------------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        rows = [self._next_sequence() for _ in range(self.batch_size)]
        self.tokens_emitted += self.batch_size * self.seq_len
        return torch.tensor(rows, dtype=torch.long)

    def _next_sequence(self) -> list[int]:
        while len(self.buffer) < self.shuffle_buffer:
            if not self.pending and not self._fill():
                break
            if self.pending:
                self.buffer.append(self.pending.pop(0))
        if not self.buffer:
            raise StopIteration
        return self.buffer.pop(self.rng.randrange(len(self.buffer)))

    def _fill(self) -> bool:
        """Tokenise the next few documents into the buffer; False when the data is exhausted."""
        texts = []
        while len(texts) < TOKENIZE_BATCH:
            doc = self._next_document()
            if doc is None:
                break
            texts.append(doc)
        if texts:
            for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]:
                self.tokens.extend(ids)
                self.tokens.append(self.eos)
            while len(self.tokens) >= self.seq_len:
                self.pending.append(self.tokens[: self.seq_len])
                del self.tokens[: self.seq_len]
            return True
        return False

    def _next_document(self) -> str | None:
        while True:
            if self._docs is None:
                if self._end_of_epoch():
                    if not self.loop:
                        return None
                    self._start_next_epoch()
                self._docs = self._open_current()
            try:
                pos, key, text = next(self._docs)
            except StopIteration:
                self._close_current()
                continue
            self.doc_pos = pos + 1
            if self.split == "all" or (self.split == "valid") == is_validation(key, self.valid_fraction):
                self._epoch_docs += 1
                return text

    def _end_of_epoch(self) -> bool:
        return self.file_idx >= (1 if self.hf else len(self.files))

    def _start_next_epoch(self) -> None:
        if self._epoch_docs == 0:
            details = "; ".join(self._warned) or "no documents"
            raise RadladsError(f"no usable {self.split} text in {self.spec} ({details})")
        self.epoch += 1
        self.file_idx, self.doc_pos, self._epoch_docs = 0, 0, 0

    def _file_order(self) -> list[Path]:
        order = list(self.files)
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def _open_current(self):
        if self.hf:
            return _hf_documents(self.spec, self.text_field, self.doc_pos)
        path = self._file_order()[self.file_idx]
        self._skipped_here = Counter()
        docs = read_documents(path, self.text_field, self.doc_pos, self._skipped_here)
        self._current_path = path
        return ((pos, f"{path.name}:{pos}", text) for pos, text in docs)

    def _close_current(self) -> None:
        if not self.hf:
            counts = self._skipped_here
            if sum(n for r, n in counts.items() if r != "_keys"):
                message = _skip_summary(self._current_path, counts)
                if message not in self._warned:
                    self._warned.add(message)
                    print(f"radlads: warning: {message}", file=sys.stderr)
                self.skipped.update({r: n for r, n in counts.items() if r != "_keys"})
        self._docs = None
        self.file_idx += 1
        self.doc_pos = 0


def _rng_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state):
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _hf_documents(spec: str, text_field: str, start: int):
    parts = spec[3:].split(":")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 else "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        if start:
            ds = ds.skip(start)
        for i, record in enumerate(ds):
            text = record.get(text_field)
            if isinstance(text, str) and text.strip():
                yield start + i, f"hf:{i + start}", text
    except RadladsError:
        raise
    except Exception as e:  # noqa: BLE001 - network, auth and schema errors all end here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RadladsError(f"cannot stream {spec}: {first}") from None


def validation_batches(spec: str, tokenizer, seq_len: int, n_sequences: int, text_field: str = "text",
                       split: str = "valid", valid_fraction: float = 0.005) -> list[torch.Tensor]:
    """A fixed validation set: the first n sequences of the held-out split, in order, each [1, seq_len]."""
    stream = PackedStream(spec, tokenizer, seq_len, 1, seed=0, text_field=text_field, split=split,
                          valid_fraction=valid_fraction, shuffle_buffer=1, loop=False)
    batches = []
    for batch in stream:
        batches.append(batch)
        if len(batches) >= n_sequences:
            break
    if not batches:
        raise RadladsError(f"no held-out text in {spec}: add --valid-data or raise valid_fraction")
    return batches


# --------------------------------------------------------------------------------------------
# Default data: text sampled from the teacher
# --------------------------------------------------------------------------------------------

SAMPLE_PROMPTS = ("", "The", "In", "Once upon a time", "A", "It is", "There are", "When", "This")


@torch.no_grad()
def sample_teacher_corpus(model, tokenizer, path: str | Path, n_docs: int, max_new_tokens: int = 512,
                          seed: int = 0, batch_size: int = 8) -> Path:
    """Write `n_docs` documents sampled from the teacher (temperature 1) to `path` as .jsonl, once."""
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fd, tmp = tempfile.mkstemp(prefix=".sample.", dir=path.parent)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    with io.open(fd, "w", encoding="utf-8") as out:
        done = 0
        while done < n_docs:
            n = min(batch_size, n_docs - done)
            prompts = [SAMPLE_PROMPTS[int(torch.randint(len(SAMPLE_PROMPTS), (1,), generator=generator))]
                       for _ in range(n)]
            rows = [[bos] + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            width = max(len(r) for r in rows)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            out_ids = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                     top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad)
            for row, prompt in zip(out_ids[:, width:], prompts):
                text = prompt + tokenizer.decode(row, skip_special_tokens=True)
                out.write(json.dumps({"text": text}) + "\n")
            done += n
    os.replace(tmp, path)
    return path
