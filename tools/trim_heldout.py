"""Held-out fidelity of vocabulary trimming, measured in memory: which tokens to keep, at what bytes.

    python tools/trim_heldout.py                       # every model x selection, table on stdout
    python tools/trim_heldout.py --models minilm --json

A trimmed model's rows are the original rows of the kept ids, so its embedding of a text is the original model's
embedding of the ids the *trimmed tokenizer* gives, mapped back to the original ids: no model is written. Soft
rows (kept at 2 bits) are the original rows replaced by their round-to-nearest 2-bit values (the graph's token
table fed as an input). Texts: tools/bench_texts.py (Debian handbook + reference: 4,000 training lines given to
the selection, 500 held-out paragraphs from other documents). Reported: held-out mean and minimum cosine to the
original model, the share of held-out texts tokenized identically, the kept rows and the weights' bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import bench_texts  # noqa: E402
import realmodels  # noqa: E402

from embtool.algorithms import quantize as QA  # noqa: E402
from embtool.algorithms import vocab as VA  # noqa: E402
from embtool.core.counting import count_model_corpus  # noqa: E402
from embtool.core.model import find_vocab_tensors, open_model  # noqa: E402
from embtool.core.tokenizer_io import TokenizerJson  # noqa: E402

MODELS = {"minilm": ("en", ""), "mpnet": ("en", ""), "e5-small": ("de", "passage: ")}


class Bench:
    """One model, one language: the original embeddings of the held-out texts and a way to embed them as a
    trimmed (and soft-trimmed) model would."""

    def __init__(self, name: str, lang: str, prefix: str, threads: int = 0, limit: int = 500):
        from embtool.runtime.encoder import EmbedSettings, Encoder, graph_session
        from embtool.runtime.graphs import build_encoder

        self.m = open_model(realmodels.cache_dir() / "models" / name, need_tokenizer=True)
        self.lang, self.prefix = lang, prefix
        train, held = bench_texts.texts(lang)
        self.train = str(train)
        self.held = held.read_text(encoding="utf-8").splitlines()[:limit]
        self.doc = self.m.tokenizer.data
        self.vt = find_vocab_tensors(self.m)
        self.emb = self.vt[0].name
        built = build_encoder(self.m, feed_weights=frozenset({self.emb}))
        self.table = np.array(built.feeds[self.emb], copy=True)
        self.feeds = {k: (self.table if k == self.emb else v) for k, v in built.feeds.items()}
        self.settings = EmbedSettings(prefix=prefix, threads=threads)
        self.enc = Encoder(self.m, self.settings, session=graph_session(built, threads, feeds=self.feeds))
        self.orig_seqs = self.enc.tokenize(self.held)
        self.ref = self.enc.encode_ids(self.orig_seqs)
        self.V = len(VA.tokenizer_ids(self.doc))
        self.other_bytes = self.m.weight_bytes() - sum(v.nbytes for v in self.vt)
        self.row_bytes = sum(v.nbytes // v.shape[v.axis] for v in self.vt)
        self.hidden = self.table.shape[1]

    def counts(self, path: str | None = None, prefixes: list[str] | None = None) -> np.ndarray:
        tok = self.m.tokenizer.runtime()
        return count_model_corpus(tok, [path or self.train], None, prefixes if prefixes is not None else ["", *([self.prefix] if self.prefix else [])],
                                  self.V).counts

    def measure(self, kept: np.ndarray, soft: np.ndarray | None = None, soft_bits: int = 2) -> dict:
        """Fidelity of keeping `kept` (old ids, bool mask or ids); `soft` (bool mask): those kept rows at
        `soft_bits` bits (group 32, asymmetric), the others as they are."""
        kept_ids = np.flatnonzero(kept) if kept.dtype == bool else np.asarray(kept)
        new_doc, remap = VA.rewrite_tokenizer(self.doc, kept_ids)
        tok = TokenizerJson.from_data(new_doc).runtime()
        enc = self.enc
        saved_tok = enc.tok
        enc.tok = tok
        try:
            seqs = enc.tokenize(self.held)
        finally:
            enc.tok = saved_tok
        back = np.sort(kept_ids)
        old = [[int(back[i]) for i in s] for s in seqs]
        same = np.array([a == b for a, b in zip(old, self.orig_seqs)])
        saved = None
        if soft is not None and soft.any():
            rows = np.flatnonzero(soft)
            saved = self.table[rows].copy()
            q = QA.quantize(saved, soft_bits, 32)
            self.table[rows] = q.dequantize()
        try:
            emb = self.enc.encode_ids(old)
        finally:
            if saved is not None:
                self.table[rows] = saved
        cos = np.sum(emb * self.ref, 1) / np.maximum(np.linalg.norm(emb, axis=1) * np.linalg.norm(self.ref, axis=1), 1e-12)
        n_soft = int(soft[kept_ids].sum()) if soft is not None else 0
        full = len(kept_ids) - n_soft
        soft_row = QA.stored_bytes(1, self.hidden, soft_bits, 32, False) + (self.row_bytes - 4 * self.hidden)
        nbytes = self.other_bytes + full * self.row_bytes + n_soft * soft_row
        worst = np.argsort(cos)[:3]
        return {"kept": int(len(kept_ids)), "soft": n_soft, "bytes": int(nbytes), "share": nbytes / self.m.weight_bytes(),
                "identical": float(same.mean()), "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                "worst": [(float(cos[i]), " ".join(self.held[i].split()[:6])) for i in worst]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        lang, prefix = MODELS[name]
        t0 = time.process_time()
        b = Bench(name, lang, prefix)
        from embtool.jobs.trim import selections

        for label, kept, soft in selections(b):
            r = {"model": name, "lang": lang, "selection": label, **b.measure(kept, soft)}
            rows.append(r)
            print(f"{name:9s} {lang} {label:28s} kept {r['kept']:6d} soft {r['soft']:6d} {r['share']*100:5.1f}% "
                  f"ident {r['identical']:.3f} mean {r['cos_mean']:.5f} min {r['cos_min']:.4f}  worst: {r['worst'][0][1]!r}",
                  file=sys.stderr, flush=True)
        print(f"[{name}: {time.process_time() - t0:.0f} s CPU]", file=sys.stderr)
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
