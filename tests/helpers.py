"""Helpers that several test files share (fixtures live in conftest.py): written once here, imported where needed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC_PAGES = ("README.md", "docs/*.md")  # where the documented examples live


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each row of `a` with the same row of `b` (neither needs to be normalised)."""
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def doc_block(lang: str, containing: str | None = None, after: str | None = None) -> str:
    """The text of a fenced ```lang block of the README or of a page in docs/: the first that contains `containing`,
    or the first that follows the text `after` (a heading) in its page. Fails the test, naming what was looked for,
    when there is none: a documented example that is gone is an error, not a skip."""
    for pattern in DOC_PAGES:
        for page in sorted(ROOT.glob(pattern)):
            text = page.read_text(encoding="utf-8")
            start = 0
            if after is not None:
                if after not in text:
                    continue
                start = text.index(after)
            for m in re.finditer(rf"```{re.escape(lang)}\n(.*?)```", text[start:], flags=re.S):
                if containing is None or containing in m.group(1):
                    return m.group(1)
    raise AssertionError(f"no ```{lang} block" + (f" with {containing!r}" if containing else "")
                         + (f" after {after!r}" if after else "") + " in the README or docs/")


def forbid_sensitivity_work(monkeypatch) -> None:
    """Make any start of quantize's calibration or sensitivity work (the probe, the Gram matrices) fail the test: for
    requests that must be refused before that work."""
    import embtool.jobs.mixed as mixed

    def no_work(*a, **k):
        raise AssertionError("calibration or sensitivity work started for a request that must be refused first")

    monkeypatch.setattr(mixed, "SensitivityProbe", no_work)
    monkeypatch.setattr("embtool.jobs.calibrate.gram_matrices", no_work)
