"""Word vectors for OFA: word2vec text files, .npy + vocabulary, or an embtool .safetensors index.

Every format gives (words, vectors [n, d] float32). The first `limit` vectors are read (word2vec
files are ordered by frequency); a repeated word keeps its first vector. Errors name the file and
line: a broken line, a wrong number of values, a value that is not a finite number.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embtool.core.errors import CorruptFile, InputError
from embtool.core.texts import numbered_lines


@dataclass
class WordVectors:
    words: list[str]
    vectors: np.ndarray  # [n, d] float32
    duplicates: int = 0
    truncated: bool = False

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def read_word_vectors(path: str, vocab: str | None = None, limit: int | None = None) -> WordVectors:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such word-vector file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _dedupe(*_read_npy(p, vocab, limit))
    if suffix == ".safetensors":
        return _dedupe(*_read_index(p, limit))
    if suffix == ".bin":
        raise InputError(f"{path}: binary word2vec files are not read; convert it to the text format "
                         "(gensim: KeyedVectors.save_word2vec_format(..., binary=False))")
    return _dedupe(*_read_word2vec(p, limit))


def _read_word2vec(p: Path, limit: int | None) -> tuple[list[str], np.ndarray, bool]:
    words: list[str] = []
    blocks: list[np.ndarray] = []
    dim: int | None = None
    declared: int | None = None
    truncated = False
    pending: list[tuple[int, str, str]] = []  # (line number, word, values text)

    def flush() -> None:
        # parse a block of lines in one C call; on any mismatch find and name the first bad line
        text = " ".join(v for _, _, v in pending)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # fromstring warns (and stops) at a non-number
                vals = np.fromstring(text, dtype=np.float32, sep=" ")
        except (ValueError, DeprecationWarning):
            vals = None
        if vals is None or vals.size != len(pending) * dim or not np.isfinite(vals).all():
            for no, word, v in pending:
                _check_line(p, no, word, v, dim, declared)
            raise CorruptFile(f"{p}: unreadable vectors")  # not reached: some line fails its check
        blocks.append(vals.reshape(len(pending), dim))
        words.extend(w for _, w, _ in pending)
        pending.clear()

    with open(p, "rb") as f:
        for no, line in numbered_lines(f, str(p)):
            if no == 1:
                head = line.split()
                if len(head) == 2 and head[0].isdigit() and head[1].isdigit():
                    declared, dim = int(head[0]), int(head[1])
                    if dim < 1:
                        raise CorruptFile(f"{p}:1: the header declares dimension {dim}")
                    continue
            if not line.strip():
                raise CorruptFile(f"{p}:{no}: empty line (expected a word and its vector)")
            if line[0].isspace():
                raise CorruptFile(f"{p}:{no}: the line starts with a space (no word)")
            if limit is not None and len(words) + len(pending) >= limit:
                truncated = True
                break
            word, _, values = line.partition(" ")
            if dim is None:
                dim = len(values.split())
                if dim == 0:
                    raise CorruptFile(f"{p}:{no}: a word without a vector")
            pending.append((no, word, values))
            if len(pending) >= 4096:
                flush()
    if pending:
        flush()
    if not words:
        raise InputError(f"{p}: no word vectors in the file")
    if declared is not None and not truncated and declared != len(words):
        raise CorruptFile(f"{p}: the header declares {declared} vectors but the file has {len(words)} (truncated?)")
    return words, np.concatenate(blocks), truncated


def _check_line(p: Path, no: int, word: str, values: str, dim: int | None, declared: int | None) -> None:
    fields = values.split()
    if len(fields) != dim:
        raise CorruptFile(f"{p}:{no}: {len(fields)} values for {word!r}, expected {dim}"
                          + (" (from the header)" if declared is not None else " (as the first vector)"))
    bad = next((v for v in fields if not _is_float(v)), None)
    if bad is not None:
        raise CorruptFile(f"{p}:{no}: {bad!r} is not a number")
    if not all(math.isfinite(float(v)) for v in fields):
        raise CorruptFile(f"{p}:{no}: the vector of {word!r} has a NaN or infinite value")


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _read_npy(p: Path, vocab: str | None, limit: int | None) -> tuple[list[str], np.ndarray, bool]:
    if vocab is None:
        cands = [p.with_suffix(s) for s in (".vocab", ".txt", ".words")]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise InputError(f"{p}: a .npy matrix needs its vocabulary (one word per line): give --word-vocab, "
                             f"or put it beside as {cands[0].name}")
        vocab = str(found[0])
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CorruptFile(f"{p}: not a readable .npy matrix ({e})") from None
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise CorruptFile(f"{p}: expected a 2-D matrix [words, dim], got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise CorruptFile(f"{p}: word vectors must be floating point, not {arr.dtype}")
    words = []
    with open(vocab, "rb") as f:
        for no, line in numbered_lines(f, vocab):
            w = line.strip()
            if not w:
                raise CorruptFile(f"{vocab}:{no}: empty line (expected one word per line)")
            words.append(w.split("\t")[0].split(" ")[0])
    if len(words) != arr.shape[0]:
        raise CorruptFile(f"{vocab} has {len(words)} words but {p} has {arr.shape[0]} vectors")
    n = len(words) if limit is None else min(limit, len(words))
    vecs = np.asarray(arr[:n], dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(vecs).all(1))
    if bad.size:
        raise CorruptFile(f"{p}: row {int(bad[0])} (word {words[bad[0]]!r}, {vocab}:{int(bad[0]) + 1}) has a NaN or infinite value")
    return words[:n], vecs, n < len(words)


def _read_index(p: Path, limit: int | None) -> tuple[list[str], np.ndarray, bool]:
    from embtool.core.formats.index import open_index

    idx = open_index(p)
    if not idx.has_texts:
        raise CorruptFile(f"{p}: this embeddings file stores no texts, so it has no words")
    if idx.precision == "binary":
        raise InputError(f"{p}: binary (1-bit) embeddings are too coarse for word vectors; embed with --precision float32")
    n = len(idx) if limit is None else min(limit, len(idx))
    words = [idx.text(i) for i in range(n)]
    for i, w in enumerate(words):
        if not w.strip() or any(c.isspace() for c in w.strip()):
            raise CorruptFile(f"{p}: text {i + 1} ({w!r}) is not one word")
    vecs = np.asarray(idx.block(0, n), dtype=np.float32)
    return [w.strip() for w in words], vecs, n < len(idx)


def _dedupe(words: list[str], vecs: np.ndarray, truncated: bool) -> WordVectors:
    seen: dict[str, int] = {}
    keep = []
    for i, w in enumerate(words):
        if w not in seen:
            seen[w] = i
            keep.append(i)
    dup = len(words) - len(keep)
    if dup:
        vecs = vecs[np.asarray(keep)]
        words = [words[i] for i in keep]
    return WordVectors(words, np.ascontiguousarray(vecs, dtype=np.float32), dup, truncated)


def corpus_words(lines, limit: int, max_chars: int = 40) -> tuple[list[str], int]:
    """The `limit` most frequent whitespace-separated words of a text stream (ties: first seen),
    and how many distinct words there were."""
    from collections import Counter

    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(w for w in line.split() if len(w) <= max_chars)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: ties keep first-seen order
    return [w for w, _ in ranked[:limit]], len(counts)

