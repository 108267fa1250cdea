"""The corpora shipped with embtool (embtool/data/corpora/*.txt.gz), streamed through gzip.

One paragraph a line; the first 80% of each file's lines is the training split, the last 20% the held-out split.
Used by the demo, the tests, the benchmarks, and the built-in fidelity/calibration samples.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterator

from embtool.core.errors import InputError

CORPORA_DIR = Path(__file__).resolve().parent.parent / "data" / "corpora"
LANGS = ("en", "fr", "es", "pl")
TRAIN_SHARE = 0.8
SPLITS = ("all", "train", "heldout")


def corpus_path(lang: str) -> Path:
    if lang not in LANGS:
        raise InputError(f"no built-in corpus for language {lang!r} (have: {', '.join(LANGS)})")
    return CORPORA_DIR / f"{lang}.txt.gz"


def _iter_all(lang: str) -> Iterator[str]:
    with gzip.open(corpus_path(lang), "rt", encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line.rstrip("\n")


@lru_cache(maxsize=None)
def line_count(lang: str) -> int:
    return sum(1 for _ in _iter_all(lang))


def split_bounds(lang: str, split: str) -> tuple[int, int]:
    """[start, stop) line numbers of a split."""
    n = line_count(lang)
    cut = int(n * TRAIN_SHARE)
    if split == "all":
        return 0, n
    if split == "train":
        return 0, cut
    if split == "heldout":
        return cut, n
    raise ValueError(f"split must be one of {SPLITS}, not {split!r}")


def iter_corpus(lang: str, split: str = "all", start: int = 0, limit: int | None = None) -> Iterator[str]:
    """Stream the lines of a split, from its `start`-th line, at most `limit` of them."""
    lo, hi = split_bounds(lang, split)
    lo = min(lo + start, hi)
    stop = hi if limit is None else min(hi, lo + limit)
    return islice(_iter_all(lang), lo, stop)


def corpus_lines(lang: str, split: str = "all", start: int = 0, limit: int | None = None) -> list[str]:
    return list(iter_corpus(lang, split, start, limit))


def write_corpus(lang: str, path: Path, split: str = "all", start: int = 0, limit: int | None = None) -> Path:
    """Write a split as a plain text file (one line each), for commands that take a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in iter_corpus(lang, split, start, limit):
            f.write(line + "\n")
    return path
