"""`embtool shrink` measured on held-out text of another source (the issue-31 goals), fidelity only.

    python tools/shrink_heldout.py                          # e5 16 MB (German), all-MiniLM 15 MB, MPNet 60 MB (English)
    python tools/shrink_heldout.py --models e5-small --model-dir /some/e5-copy

Each model is shrunk (the public API, as `embtool shrink` does: its own held-out split is every 10th corpus line) on
the 4,000 training paragraphs of tools/bench_texts.py, then the output is compared with the original on the 500
held-out paragraphs of other documents (e5: read after `passage: `): mean and minimum cosine, recall@10, the share
tokenized identically, the worst texts; plus shrink's own summary (its split, its phases). JSON lines on stdout.
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

MODELS = {"e5-small": ("de", "passage: ", 16_000_000), "minilm": ("en", "", 15_000_000), "mpnet": ("en", "", 60_000_000)}


def measure(name: str, folder: str | None = None, threads: int = 0, **options) -> dict:
    from embtool.core.model import open_model
    from embtool.jobs.fidelity import compare, embed_both, identical_tokenization

    lang, prefix, budget = MODELS[name]
    train, held = bench_texts.texts(lang)
    model = folder or str(realmodels.cache_dir() / "models" / name)
    texts = held.read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory(prefix="embtool-shrink-heldout-") as tmp:
        out = str(Path(tmp) / "out")
        s = api.shrink(model, out, corpus=str(train), max_size=budget, threads=threads, check=False, **options).summary
        a, b = open_model(model, need_tokenizer=True), open_model(out, need_tokenizer=True)
        ev = compare(*embed_both(a, b, texts, threads, prefix), texts)
        ev["recall_at_10"] = ev.pop("recall@10")
        ev["identical_tokenization"] = identical_tokenization(a, b, texts, prefix)
    return {"model": name, "folder": model, "lang": lang, "prefix": prefix, "budget": budget, "bytes_after": s["bytes_after"],
            "heldout_other_source": ev, "shrink_eval": s["eval"], "phases": s.get("phases"), "steps": s["steps"],
            "notes": s.get("notes", [])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--model-dir", default=None, help="a copy of the (one) model to shrink instead of the cached one")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    for name in a.models.split(","):
        r = measure(name, a.model_dir, a.threads)
        e = r["heldout_other_source"]
        print(f"{name:9s} {r['lang']} -> {r['bytes_after'] / 1e6:.1f} MB: other-source held-out mean {e['cosine_mean']:.4f} "
              f"min {e['cosine_min']:.4f} recall@10 {e['recall_at_10']:.3f} identical {e['identical_tokenization']:.3f}",
              file=sys.stderr, flush=True)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
