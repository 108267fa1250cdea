"""`embtool shrink` to a size budget, each model for one language: its own held-out lines (every 10th line of the
training split it is given) and the corpus's held-out split (300 paragraphs it never saw); the table."""

from __future__ import annotations

from ..common import THREADS, WORK, embtool, fidelity, log, realmodels, split, write_lines

NAME = "shrink"
HEADING = "## shrink"


def measure() -> dict:
    rows = []
    for name, folder, lang, budget, prefix, quick in (
            ("multilingual-e5-small", realmodels.e5_small(), "fr", 16_000_000, "passage: ", False),
            ("all-MiniLM-L6-v2", realmodels.minilm(), "en", 15_000_000, "", False),
            ("all-mpnet-base-v2", realmodels.mpnet(), "en", 60_000_000, "", False)):
        train, held = split(lang)
        tr = write_lines(f"shrink-{lang}-train.txt", train)
        he = write_lines(f"shrink-{lang}-held.txt", held[:300])
        out = WORK / f"shrink-{name}"
        s, wall, rss = embtool("shrink", folder, "-c", tr, "--max-size", str(budget), *(["--quick"] if quick else []),
                               "-o", out, "--force", "--json", "--quiet", "--threads", THREADS)
        f = fidelity(folder, out, he, prefix)
        rows.append({"model": name, "lang": lang, "budget": budget, "quick": quick, "bytes_before": s["bytes_before"],
                     "bytes_after": s["bytes_after"], "steps": s["steps"], "eval": s["eval"], "heldout": f, "wall_s": wall,
                     "rss_mb": rss})
        log(f"shrink {name} -> {budget / 1e6:.0f} MB: {s['bytes_after'] / 1e6:.1f} MB, own held-out cos {s['eval']['cosine_mean']:.4f} "
            f"r@10 {s['eval']['recall_at_10']:.3f}; held-out split cos {f['cosine_mean']:.4f} r@10 {f['recall_at_10']:.3f} ({wall:.0f} s)")
    return {"shrink": rows}


def table(R: dict) -> list[str]:
    if "shrink" not in R:
        return []
    L = ["## shrink: one command to a size budget", "",
         "`embtool shrink MODEL -c TRAIN --max-size N`: trim to the language of the training split, then mixed 2/4/8-bit "
         "quantization to the budget (the measured planner with GPTQ, the default, for every model). Fidelity against the original model: on the lines shrink kept aside "
         "(every 10th line of what it was given, 300), and on 300 paragraphs of the held-out split it never saw "
         "(e5 with `passage: `). Wall time and peak RSS of the whole command.", "",
         "| model | language | budget | bytes | % of original | trim | quantize | kept-aside cosine / recall@10 | "
         "held-out split cosine (min) / recall@10 | wall | peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in R["shrink"]:
        trim = next((st for st in r["steps"] if st["step"] == "trim-vocab"), None)
        q = next((st for st in r["steps"] if st["step"] == "quantize"), None)
        e, f = r["eval"], r["heldout"]
        L.append(f"| {r['model']} | {r['lang']} | {r['budget'] / 1e6:.0f} MB | {r['bytes_after'] / 1e6:.1f} MB | "
                 f"{100 * r['bytes_after'] / r['bytes_before']:.1f}% | "
                 f"{trim['vocab_before']:,} → {trim['vocab_after']:,} tokens | "
                 + (f"{q['bits_per_weight']:.2f} bits/weight, {q['method']}{' (--quick)' if r['quick'] else ''}" if q else "-")
                 + f" | {e['cosine_mean']:.4f} / {e['recall_at_10']:.3f} | {f['cosine_mean']:.4f} ({f['cosine_min']:.3f}) / "
                 f"{f['recall_at_10']:.3f} | {r['wall_s']:.0f} s | {r['rss_mb']:.0f} MB |")
    return L + [""]
