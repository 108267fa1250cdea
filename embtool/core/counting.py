"""Counting the token ids of a corpus with a model's own tokenizer, streamed.

Most of a corpus is repeated words, so the fast path counts whitespace-separated words first
(`str.split` + `Counter`, both in C) and tokenizes each distinct word once with the parallel batch
tokenizer, weighting its tokens by the word's count. A line's first word is tokenized on its own and
every other word with a leading space (distinct words of equal count are joined into long texts, so
the tokenizer's per-text overhead is paid once per few hundred words), which is what the in-line tokenizer sees for whitespace-splitting
pre-tokenizers (WordPiece/BERT, Metaspace, byte-level BPE). The fast path is only used after it has
been verified to give exactly the counts of line-by-line tokenization on the first lines of the corpus;
otherwise the corpus is tokenized line by line. Memory is bounded by the number of distinct words.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer

from embtool.core.texts import iter_texts
from embtool.core.tokenizer_io import encode_batch

VERIFY_LINES = 400
LINE_BATCH = 2048
WORD_BATCH = 20000
GROUP = 256


@dataclass
class Counts:
    counts: np.ndarray  # [vocab] int64 occurrences
    lines: int
    bytes: int
    mode: str  # how the counts were made (see the module docstring)


def _encode(tok: Tokenizer, texts: list[str], first: int = 1, what: str = "corpus line"):
    # encode_batch_fast (tokenizers >= 0.20): no offsets computed
    return encode_batch(tok, texts, add_special_tokens=False, first=first, what=what, fast=True)


def _count_lines(tok: Tokenizer, lines: list[str], V: int, first: int = 1) -> np.ndarray:
    out = np.zeros(V, dtype=np.int64)
    if lines:
        encs = _encode(tok, lines, first)
        ids = np.fromiter((i for e in encs for i in e.ids), dtype=np.int64)
        if ids.size:
            out += np.bincount(ids, minlength=V)[:V]
    return out


def _word_counters(lines: Iterable[str], chunk: int = 4096) -> tuple[Counter, Counter, int, int]:
    """(first words, inner words, lines, bytes). Words of a whole chunk of lines are split and counted
    in one C call; inner = all - first."""
    first: Counter = Counter()
    allw: Counter = Counter()
    n = nbytes = 0
    buf: list[str] = []

    def flush() -> None:
        text = "\n".join(buf)
        allw.update(text.split())
        first.update(w[0] for w in (line.split(None, 1) for line in buf) if w)

    for line in lines:
        buf.append(line)
        if len(buf) >= chunk:
            n += len(buf)
            nbytes += sum(len(x.encode("utf-8")) + 1 for x in buf)
            flush()
            buf = []
    if buf:
        n += len(buf)
        nbytes += sum(len(x.encode("utf-8")) + 1 for x in buf)
        flush()
    allw.subtract(first)
    inner = Counter({w: c for w, c in allw.items() if c > 0})
    return first, inner, n, nbytes


def _count_words(tok: Tokenizer, first: Counter, inner: Counter, V: int, grouped: bool, merge_first: bool = False) -> np.ndarray:
    """Counts from word counters. First words are tokenized alone (or, merge_first=True, like inner
    words: tokenizers whose tokens do not depend on a word's place in the line); inner words with a
    leading space, either one by one or (grouped=True) joined with spaces into texts of GROUP words
    that share the same count (one Encoding per GROUP words instead of one per word)."""
    out = np.zeros(V, dtype=np.int64)
    texts: list[str] = []
    weights: list[int] = []
    if merge_first:
        inner = inner + first
    else:
        texts += list(first)
        weights += list(first.values())
    if grouped:
        by_count: dict[int, list[str]] = {}
        for w, c in inner.items():
            by_count.setdefault(c, []).append(w)
        for c, words in by_count.items():
            for g0 in range(0, len(words), GROUP):
                texts.append(" " + " ".join(words[g0 : g0 + GROUP]))
                weights.append(c)
    else:
        texts += [" " + w for w in inner]
        weights += list(inner.values())
    for b0 in range(0, len(texts), WORD_BATCH):
        encs = _encode(tok, texts[b0 : b0 + WORD_BATCH], b0 + 1, "group of corpus words")
        lens = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        ids = np.fromiter((i for e in encs for i in e.ids), dtype=np.int64, count=int(lens.sum()))
        w = np.repeat(np.asarray(weights[b0 : b0 + WORD_BATCH], dtype=np.int64), lens)
        if ids.size:
            out += np.bincount(ids, weights=w, minlength=V)[:V].astype(np.int64)
    return out


def count_corpus(tok: Tokenizer, open_lines: Callable[[], Iterator[str]], V: int, progress=None) -> Counts:
    """Token-id counts over the corpus. `open_lines()` must give a fresh iterator each call
    (the corpus is read twice only when the fast path fails its check)."""
    tok.no_truncation()
    tok.no_padding()
    head = []
    it = open_lines()
    for line in it:
        head.append(line)
        if len(head) >= VERIFY_LINES:
            break
    f, i, _, _ = _word_counters(head)
    reference = _count_lines(tok, head, V)
    mode = None
    for candidate in ((True, True), (True, False), (False, False)):  # (grouped, merge_first), fastest first
        if np.array_equal(_count_words(tok, f, i, V, *candidate), reference):
            mode = candidate
            break
    if mode is not None:
        def rest() -> Iterator[str]:
            yield from head
            for line in it:
                if progress is not None:
                    progress.update(len(line) + 1)
                yield line

        first, inner, n, nbytes = _word_counters(rest())
        label = "distinct words" + (", grouped" if mode[0] else "") + (", position-free" if mode[1] else "") + " (verified)"
        return Counts(_count_words(tok, first, inner, V, *mode), n, nbytes, label)
    counts = np.zeros(V, dtype=np.int64)
    n = nbytes = 0
    batch: list[str] = []
    for line in open_lines():
        n += 1
        nbytes += len(line.encode("utf-8")) + 1
        batch.append(line)
        if len(batch) >= LINE_BATCH:
            counts += _count_lines(tok, batch, V, n - len(batch) + 1)
            if progress is not None:
                progress.update(sum(len(x) + 1 for x in batch))
            batch = []
    counts += _count_lines(tok, batch, V, n - len(batch) + 1)
    return Counts(counts, n, nbytes, "lines")


def count_model_corpus(tok: Tokenizer, corpus: list[str], text_field: str | None, prefixes: list[str], V: int,
                       progress=None) -> Counts:
    """Token-id counts of corpus files as the model sees them: each text after each prefix (a model with
    query/document prompts reads its texts after them). `lines`/`bytes` count each text once."""
    prefixes = prefixes or [""]
    with tempfile.TemporaryDirectory(prefix="embtool-stdin-") as tmp:
        if "-" in corpus:  # count_corpus may read the corpus twice: standard input is spooled to a file once
            spool = os.path.join(tmp, "stdin")
            with open(spool, "wb") as f:  # the bytes as they come (plain, JSONL or compressed: read as any file)
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
            corpus = [spool if c == "-" else c for c in corpus]

        def lines() -> Iterator[str]:
            for t in iter_texts((), corpus, text_field):
                for p in prefixes:
                    yield p + t

        c = count_corpus(tok, lines, V, progress)
    return Counts(c.counts, c.lines // len(prefixes), c.bytes // len(prefixes), c.mode)
