"""embed throughput: embtool vs sentence-transformers vs an independent onnxruntime loop, alternating, RUNS runs
each, medians; the table and the throughput plot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..common import (RUNS, THREADS, WORK, alternate, api, embtool, log, median_of, peer_cmd, realmodels, split, timed, worker,
                      write_lines)

NAME = "embed"
HEADING = "## embed throughput"


def embed_worker(model: str, texts: str, batch: str, sort: str) -> None:
    """In a fresh process: load `model`, embed the lines of `texts` (batch 0: embtool's default batching), print
    load and encode times, texts/s, tokens and padded tokens as one JSON line."""
    t0 = time.perf_counter()
    enc = api.Encoder(model, batch_size=int(batch) or None, threads=int(THREADS), sort=sort == "1")
    lines = Path(texts).read_text(encoding="utf-8").splitlines()
    t1 = time.perf_counter()
    enc.embed(lines)
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "encode_s": t2 - t1, "texts_per_s": len(lines) / (t2 - t1),
                      "tokens": enc.stats.tokens, "padding": enc.stats.padded_tokens}))


WORKERS = {"embed": embed_worker}


def measure() -> dict:
    train, _ = split("en")
    rows = []
    # all-mpnet-base-v2 (110M parameters, about 5x MiniLM's work per text) on the first 500 of the same paragraphs
    for name, folder, n in (("all-MiniLM-L6-v2", realmodels.minilm(), 2000), ("multilingual-e5-small", realmodels.e5_small(), 2000),
                            ("all-mpnet-base-v2", realmodels.mpnet(), 500)):
        texts = write_lines(f"embed-en-{n}.txt", train[:n])
        portable = WORK / f"{name}-portable-onnx"
        if not portable.exists():
            embtool("export-onnx", folder, "--portable", "-o", portable, "--quiet")
        max_len = str(api.Encoder(folder).max_length)  # the loop truncates where the model does
        runs = alternate(
            embtool=lambda: timed(worker("embed", folder, texts, "0", "1")),  # embtool's default batching
            st=lambda: timed(peer_cmd("st-embed", folder, texts, THREADS, "32"), env={"HF_HUB_OFFLINE": "1"}),
            loop=lambda: timed(peer_cmd("ort-loop", portable / "model.onnx", folder / "tokenizer.json", texts, THREADS, "32", max_len)))
        e, st, loop = (median_of(runs[k]) for k in ("embtool", "st", "loop"))
        log(f"embed {name}: embtool {e['texts_per_s']:.1f}/s, st {st['texts_per_s']:.1f}/s, ORT loop {loop['texts_per_s']:.1f}/s "
            f"(medians of {RUNS})")
        rows.append({"model": name, "texts": n, "runs": RUNS, "embtool_tps": e["texts_per_s"], "embtool_rss": e["rss_mb"],
                     "embtool_load_s": e["load_s"], "naive_tps": loop["texts_per_s"], "naive_rss": loop["rss_mb"],
                     "st_tps": st["texts_per_s"], "st_rss": st["rss_mb"], "st_load_s": st["load_s"],
                     "ratio_runs": [a["texts_per_s"] / b["texts_per_s"] for a, b in zip(runs["embtool"], runs["st"])],
                     "tokens": e["tokens"], "padding_sorted": e["padding"], "versions": st["versions"],
                     "ort_version": loop["onnxruntime"]})
    return {"embed": rows}


def table(R: dict) -> list[str]:
    if "embed" not in R:
        return []
    v = R["embed"][0]["versions"]
    L = [HEADING, "",
         f"English paragraphs (the first lines of the training split: 2,000, or 500 for MPNet), 2 threads, encode time after loading; each tool at its "
         "default batching: embtool about 1,024 padded tokens per onnxruntime call (length-sorted), sentence-transformers 32 "
         "texts per batch (length-sorted). "
         f"Peers: sentence-transformers {v['sentence_transformers']} on torch {v['torch']} (same model, same machine, same run), and an "
         f"independent onnxruntime {R['embed'][0].get('ort_version', '')} loop (tools/bench/peers.py `ort-loop`: its own session, "
         "`tokenizers` and numpy mean pooling, no embtool code) over embtool's standard-ops export of the same model, 32 texts per "
         "batch in input order (no length sorting). "
         f"The three alternate, {R['embed'][0].get('runs', 1)} runs each; every figure is the median.", "",
         "| model | texts | embtool (texts/s) | sentence-transformers | ratio | ratio per run | ORT loop unsorted | embtool peak RSS | ST peak RSS |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in R["embed"]:
        per_run = ", ".join(f"{x:.2f}" for x in r.get("ratio_runs", []))
        L.append(f"| {r['model']} | {r.get('texts', 2000):,} | {r['embtool_tps']:.1f} | {r['st_tps']:.1f} | {r['embtool_tps'] / r['st_tps']:.2f}× | {per_run} | "
                 f"{r['naive_tps']:.1f} | {r['embtool_rss']:.0f} MB | {r['st_rss']:.0f} MB |")
    return L + ["", "![throughput](embed-throughput.png)", ""]


def plot(R: dict, plt, docs: Path) -> list[str]:
    if "embed" not in R:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    rs = R["embed"]
    x = np.arange(len(rs))
    for i, (key, label) in enumerate((("embtool_tps", "embtool"), ("naive_tps", "onnxruntime loop, unsorted"),
                                      ("st_tps", "sentence-transformers (torch)"))):
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rs], 0.27, label=label)
    ax.set_xticks(x, [r["model"] for r in rs])
    ax.set_ylabel("sentences / s (2,000 English, default batching, 2 threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(docs / "embed-throughput.png", dpi=120)
    plt.close(fig)
    return ["embed-throughput.png"]
