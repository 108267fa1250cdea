"""trim-vocab of multilingual-e5-small to French, Spanish and Polish training splits and to `--script Latin`: the table."""

from __future__ import annotations

from ..common import WORK, embtool, log, realmodels, split, write_lines

NAME = "trim"
HEADING = "## trim-vocab"


def measure() -> dict:
    e5 = realmodels.e5_small()
    rows = []
    for lang in ("fr", "es", "pl"):
        train, held = split(lang)
        tr = write_lines(f"trim-{lang}-train.txt", train)
        he = write_lines(f"trim-{lang}-held.txt", held[:300])
        s, wall, rss = embtool("trim-vocab", e5, "-c", tr, "-o", WORK / f"e5-{lang}", "--force", "--json", "--quiet")
        ev, _, _ = embtool("trim-vocab", e5, "-c", tr, "-o", WORK / f"e5-{lang}", "--force", "--json", "--quiet", "--eval", he,
                           "--eval-limit", "300")
        rows.append({"setting": f"{lang} corpus (training split)", "vocab_after": s["vocab_after"], "bytes_before": s["bytes_before"],
                     "bytes_after": s["bytes_after"], "params_after": s["parameters_after"], "wall_s": wall, "rss_mb": rss,
                     "count_mb_s": s["corpus_bytes"] / 1e6 / s["count_seconds"], "corpus_mb": s["corpus_bytes"] / 1e6,
                     "eval": ev["eval"], "lang": lang})
    _, held = split("fr")
    he = write_lines("trim-fr-held.txt", held[:300])
    s, wall, rss = embtool("trim-vocab", e5, "--script", "Latin", "-o", WORK / "e5-latin", "--force", "--json", "--quiet")
    s["eval"] = embtool("trim-vocab", e5, "--script", "Latin", "-o", WORK / "e5-latin", "--force", "--json", "--quiet",
                        "--eval", he, "--eval-limit", "300")[0]["eval"]
    rows.append({"setting": "--script Latin (no corpus)", "vocab_after": s["vocab_after"], "bytes_before": s["bytes_before"],
                 "bytes_after": s["bytes_after"], "params_after": s["parameters_after"], "wall_s": wall, "rss_mb": rss,
                 "eval": s["eval"], "lang": "fr"})
    log("trim: " + ", ".join(f"{r['setting']}: {r['vocab_after']} tokens" for r in rows))
    return {"trim": rows}


def table(R: dict) -> list[str]:
    if "trim" not in R:
        return []
    L = ["## trim-vocab (multilingual-e5-small)", "",
         "Trimmed to each corpus's training split (every token seen is kept); held-out: 300 texts of the same language "
         "(for `--script Latin`: French). Time and RSS of the trim alone (without --eval).", "",
         "| setting | vocabulary | bytes | held-out identical tokenization | mean cosine | min cosine | wall | counting | peak RSS |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in R["trim"]:
        e = r["eval"]
        cnt = f"{r['count_mb_s']:.1f} MB/s" if "count_mb_s" in r else "-"
        L.append(f"| {r['setting']} | 250,002 → {r['vocab_after']:,} | {r['bytes_before'] / 1e6:.0f} → {r['bytes_after'] / 1e6:.1f} MB "
                 f"({100 * r['bytes_after'] / r['bytes_before']:.1f}%) | {100 * e['identical_tokenization']:.1f}% | {e['cosine_mean']:.5f} | "
                 f"{e['cosine_min']:.5f} | {r['wall_s']:.1f} s | {cnt} | {r['rss_mb']:.0f} MB |")
    return L + ["", "The reference trimmer (vocabtrimmer) needs the Hugging Face hub and torch; it was not run here, so no ratio is given.", ""]
