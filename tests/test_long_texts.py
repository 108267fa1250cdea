"""Long texts: each text is tokenized from a prefix of a character budget (widened when needed), so time and
memory per text are bounded by --max-length, with the same tokens and the same truncation count as whole."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import corpus_lines, run_cli
from embtool.core.model import open_model
from embtool.runtime import encoder as E
from embtool.runtime.encoder import EmbedSettings, Encoder


def _whole(enc: Encoder, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
    """Reference: the tokenizer on the whole texts, truncated afterwards."""
    enc.tok.no_padding()
    enc.tok.enable_truncation(enc.max_length)
    encs = enc.tok.encode_batch([enc.prefix + t for t in texts])
    return [e.ids for e in encs], [bool(e.overflowing) for e in encs]


def _texts_around_the_budget(budget: int) -> list[str]:
    words = " ".join(corpus_lines("en", 400) + corpus_lines("fr", 200)).split()
    rng = np.random.default_rng(0)
    out = []
    for n in (1, 5, budget // 8, budget // 6, budget // 5, budget // 4, budget // 3, budget, 3 * budget):
        start = int(rng.integers(0, len(words) - n)) if n < len(words) else 0
        out.append(" ".join(words[start:start + n]))
    # no whitespace for a long stretch, long words ([UNK] in WordPiece), punctuation-only runs, CJK without spaces
    out += ["x" * (3 * budget), "ab," * budget, "word " * 3 + "y" * (2 * budget) + " tail " * 50, "漢字かな" * budget,
            "a" * (budget - 3) + " b c d e f g" * 30, ("élan " * budget)[: budget + 1],
            # the cut falls inside a word longer than WordPiece's 100 characters: whole, it is one [UNK]; cut, it
            # would be pieces, so the cut must widen
            "y" * 101 + " " + ("qzxwvkjb" * budget)[:budget] + " tail"]
    return out


@pytest.mark.parametrize("max_length", [8, 32])
def test_cut_texts_tokenize_as_whole_texts(tiny_model, max_length):
    """Same ids and the same truncation flag as tokenizing the whole text, for texts shorter than, around and far
    beyond the budget, on WordPiece, Unigram and BPE tokenizers."""
    enc = Encoder(open_model(tiny_model), EmbedSettings(max_length=max_length))
    budget = E.CHAR_BUDGET_PER_TOKEN * max_length + 64
    texts = _texts_around_the_budget(budget)
    want_ids, want_trunc = _whole(enc, texts)
    got = enc.tokenize(texts)
    assert got == want_ids
    assert enc.stats.truncated == sum(want_trunc)


def test_tokenizer_never_sees_more_than_the_budget(tiny_bert, monkeypatch):
    """A multi-megabyte line reaches the tokenizer as a prefix of the budget, not whole."""
    seen = []
    real = E.encode_batch

    def spy(tok, texts, **kw):
        seen.extend(len(t) for t in texts)
        return real(tok, texts, **kw)

    monkeypatch.setattr(E, "encode_batch", spy)
    enc = Encoder(open_model(tiny_bert), EmbedSettings(max_length=16))
    line = " ".join(corpus_lines("en", 50)) * 200
    assert len(line) > 1_000_000
    enc.tokenize([line, "short"])
    assert max(seen) <= E.CHAR_BUDGET_PER_TOKEN * 16 + 64
    assert enc.stats.truncated == 1


def test_multi_megabyte_line_embeds_like_its_cut(tmp_path, tiny_bert):
    """`embtool embed` of a ~8 MB line plus a short one: the same vector as the text cut by hand, in bounded time
    and memory (the whole line through the tokenizer took seconds and gigabytes)."""
    paragraph = " ".join(corpus_lines("en", 40))
    line = (paragraph + " ") * (8_000_000 // len(paragraph))
    assert len(line) > 7_000_000
    cut = line[:4000]  # far more than 64 tokens
    f = tmp_path / "long.txt"
    f.write_text(line + "\nshort one\n" + cut + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    code = ("import resource, sys, time; from embtool.cli.main import cli; t = time.perf_counter()\n"
            "try:\n    cli.main(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('STATS', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, "embed", str(tiny_bert), "-i", str(f), "-o", str(out), "--max-length", "64",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["truncated"] == 2  # the long line and its cut; not "short one"
    v = np.load(out)
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)
    secs, rss_mb = (float(x) for x in r.stderr.split("STATS")[-1].split()[:2])
    # reading the 8 MB line costs a few copies of it; tokenizing it whole cost gigabytes
    assert rss_mb < 700, rss_mb
    assert secs < 60, secs
