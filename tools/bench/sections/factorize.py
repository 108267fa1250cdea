"""factorize: ranks 32 to 256 of the token table (plain, and weighted by the training split's token counts) on
multilingual-e5-small and all-MiniLM-L6-v2; the table and the rank-vs-cosine plot."""

from __future__ import annotations

from pathlib import Path

from ..common import WORK, embtool, log, realmodels, split, write_lines

NAME = "factorize"
HEADING = "## factorize"


def measure() -> dict:
    rows = []
    for name, folder, lang, prefix in (("multilingual-e5-small", realmodels.e5_small(), "fr", "passage: "),
                                       ("all-MiniLM-L6-v2", realmodels.minilm(), "en", "")):
        train, held = split(lang)
        he = write_lines(f"f-held-{lang}.txt", held[:300])
        tr = write_lines(f"f-train-{lang}.txt", train)
        # plain (the whole table's spectrum) at every rank; weighted by the training split's token counts (--corpus)
        for k, weighting in [(k, "plain") for k in (32, 64, 128, 192, 256)] + [(k, "corpus") for k in (64, 128, 192)]:
            out = WORK / f"f-{name}-{k}"
            extra = ("-c", tr) if weighting == "corpus" else ()
            s, wall, rss = embtool("factorize", folder, "--rank", k, *extra, "-o", out, "--force", "--json", "--quiet",
                                   "--eval", he, "--eval-limit", "300", "--eval-prefix", prefix)
            # time and memory without the evaluation (the weighted rows: the factorize time of the run above)
            s2, wall2, rss2 = (embtool("factorize", folder, "--rank", k, "-o", out, "--force", "--json", "--quiet")
                               if weighting == "plain" else (s, None, None))
            rows.append({"model": name, "rank": k, "weighting": weighting, "rel_error": s["rel_frobenius_error"], "energy": s["energy"],
                         "cosine": s["eval"]["cosine_mean"], "recall@10": s["eval"]["recall_at_10"],
                         "params_share": s["embedding_parameters_after"] / s["embedding_parameters_before"],
                         "bytes_after": s["bytes_after"], "bytes_before": s["bytes_before"], "factorize_s": s2["factorize_seconds"],
                         "wall_s": wall2, "rss_mb": rss2})
            log(f"factorize {name} k={k} {weighting}: err {s['rel_frobenius_error']:.3f} cos {s['eval']['cosine_mean']:.4f}")
    return {"factorize": rows}


def table(R: dict) -> list[str]:
    if "factorize" not in R:
        return []
    L = [HEADING, "",
         "Rank-k factorization of the embedding table, no continued pretraining (OFA continues pretraining after it; without that, "
         "low ranks cost fidelity). Held-out: 300 texts (e5: French with `passage: `; MiniLM: English). `--corpus`: the basis "
         "weights each row by its token's count in the training split (+1); energy and error are of the whole, unweighted table.", "",
         "| model | rank | basis | embedding params | rel. Frobenius error | energy kept | mean cosine | recall@10 | factorize time | peak RSS |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(R["factorize"], key=lambda r: (r["model"], r["rank"], r.get("weighting", "plain"))):
        basis = "`--corpus` (training split)" if r.get("weighting") == "corpus" else "plain"
        L.append(f"| {r['model']} | {r['rank']} | {basis} | {100 * r['params_share']:.1f}% | {r['rel_error']:.3f} | {100 * r['energy']:.1f}% | "
                 f"{r['cosine']:.4f} | {r['recall@10']:.3f} | {r['factorize_s']:.2f} s | "
                 f"{'-' if r['rss_mb'] is None else format(r['rss_mb'], '.0f') + ' MB'} |")
    return L + ["", "![rank vs cosine](factorize-rank-vs-cosine.png)", ""]


def plot(R: dict, plt, docs: Path) -> list[str]:
    if "factorize" not in R:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, w in sorted({(r["model"], r.get("weighting", "plain")) for r in R["factorize"]}):
        rs = [r for r in R["factorize"] if r["model"] == name and r.get("weighting", "plain") == w]
        ax.plot([r["params_share"] * 100 for r in rs], [r["cosine"] for r in rs], "o-" if w == "plain" else "s--",
                label=name + (" (--corpus)" if w == "corpus" else ""))
        for r in rs:
            ax.annotate(f"k={r['rank']}", (r["params_share"] * 100, r["cosine"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("embedding parameters, % of the original")
    ax.set_ylabel("mean cosine to the original (300 held-out texts)")
    ax.set_title("OFA factorization without continued pretraining")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(docs / "factorize-rank-vs-cosine.png", dpi=120)
    plt.close(fig)
    return ["factorize-rank-vs-cosine.png"]
