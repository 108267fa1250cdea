"""Held-out fidelity of trim-vocab's selections on text of another source: the table of docs/benchmarks.md.

    python tools/trim_heldout.py                                   # every model x selection; JSON lines on stdout
    python tools/trim_heldout.py --models e5-small --selections auto,none

Each model is trimmed (the public API, as `embtool trim-vocab` does) to the 4,000 training paragraphs of its
language from tools/bench_texts.py (Debian handbook + reference, never used by the tests) and measured on the 500
held-out paragraphs of other documents (multilingual-e5-small: German, read after its `passage: ` prompt).
Selections: `none` is trimming to the corpus' own tokens (embtool before --extra), `auto` the default (the extra
tokens fitted on a held-out split of the corpus, their rows at 2 bits), `all` every candidate extra token, `auto32`
the auto tokens at full width. Reported per row: held-out mean and minimum cosine to the original model, recall@10,
the share of texts tokenized identically, the worst texts, the kept tokens and the weights' bytes (share of the
original). Fidelity figures only: the times are those of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import bench_texts  # noqa: E402
import realmodels  # noqa: E402

from embtool import api  # noqa: E402

MODELS = {"minilm": ("en", ""), "mpnet": ("en", ""), "e5-small": ("de", "passage: ")}
SELECTIONS = {"none": {"extra": "none"}, "auto": {}, "all": {"extra": "all"}, "auto32": {"extra_bits": 32}}


def measure(name: str, selection: str, threads: int = 0) -> dict:
    lang, prefix = MODELS[name]
    train, held = bench_texts.texts(lang)
    model = realmodels.cache_dir() / "models" / name
    with tempfile.TemporaryDirectory(prefix="embtool-trim-heldout-") as tmp:
        s = api.trim_vocab(str(model), str(Path(tmp) / "out"), corpus=str(train), eval_file=str(held), eval_prefix=prefix,
                           threads=threads, check=False, **SELECTIONS[selection]).summary
    e = s["eval"]
    return {"model": name, "lang": lang, "selection": selection, "vocab_after": s["vocab_after"],
            "extra_rows": s.get("extra_rows", {}).get("rows", 0), "bytes_after": s["bytes_after"],
            "share": s["bytes_after"] / s["bytes_before"], "identical": e["identical_tokenization"],
            "cosine_mean": e["cosine_mean"], "cosine_min": e["cosine_min"], "recall@10": e["recall_at_10"],
            "worst": e.get("worst", []), "extra": s.get("extra")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--selections", default="none,auto")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    for name in a.models.split(","):
        for sel in a.selections.split(","):
            r = measure(name, sel, a.threads)
            print(f"{name:9s} {r['lang']} {sel:7s} {r['vocab_after']:7,} tokens ({r['extra_rows']:,} at 2 bits) "
                  f"{100 * r['share']:5.1f}%  identical {r['identical']:.3f}  mean {r['cosine_mean']:.5f}  "
                  f"min {r['cosine_min']:.4f}  recall@10 {r['recall@10']:.3f}", file=sys.stderr, flush=True)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
