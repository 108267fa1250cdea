"""quantize all-MiniLM-L6-v2: embtool's widths, methods and mixed precision against onnxruntime's own quantizers
(same run, same held-out texts), the quantize time and the 4-bit model's throughput; the table (its format is
MPNet's too) and the size-vs-cosine plot."""

from __future__ import annotations

import json
from pathlib import Path

from ..common import WORK, embtool, fidelity, log, model_bytes, peer, realmodels, split, timed, worker, write_lines

NAME = "quantize"
HEADING = "## quantize"

QUANT_HEADER = ["| method | bytes | % of fp32 | mean cosine | min cosine | recall@10 | time (s) |", "|---|---|---|---|---|---|---|"]


def quant_row(r: dict) -> str:
    """A row of the quantization tables (all-MiniLM and MPNet)."""
    return (f"| {r['method']} | {r['bytes'] / 1e6:.1f} MB | {100 * r['share']:.1f}% | {r['cosine_mean']:.4f} | "
            f"{r['cosine_min']:.4f} | {r['recall@10']:.3f} | {r['seconds']:.1f} |")


def measure() -> dict:
    minilm = realmodels.minilm()
    train, held = split("en")
    calib = write_lines("q-calib.txt", train[:256])
    he = write_lines("q-held.txt", held[:1000])
    fp32 = model_bytes(minilm)
    rows = []
    portable = WORK / "all-MiniLM-L6-v2-portable-onnx"
    if not portable.exists():
        embtool("export-onnx", minilm, "--portable", "-o", portable, "--quiet")
    for label, args in (("onnxruntime quantize_dynamic int8 per-tensor", ("ort-dynamic", "0")),
                        ("onnxruntime quantize_dynamic int8 per-channel", ("ort-dynamic", "1")),
                        ("onnxruntime MatMulNBits 4-bit block 32 (+Gather)", ("ort-nbits", "32")),
                        ("onnxruntime MatMulNBits 4-bit block 128 (+Gather)", ("ort-nbits", "128"))):
        out = WORK / ("q-" + "".join(c for c in label if c.isalnum()))
        out.mkdir(exist_ok=True)
        for f in ("tokenizer.json", "config.json", "modules.json", "sentence_bert_config.json"):
            if (portable / f).exists():
                (out / f).write_bytes((portable / f).read_bytes())
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_bytes((portable / "1_Pooling" / "config.json").read_bytes())
        r, wall, rss = peer(args[0], portable / "model.onnx", out / "model.onnx", args[1])
        f = fidelity(minilm, out, he)
        rows.append({"method": label, "bytes": model_bytes(out), "share": model_bytes(out) / fp32, **f, "seconds": r["seconds"]})
        log(f"quantize {label}: {rows[-1]['share']:.3f} cos {f['cosine_mean']:.4f}")
    # embtool's rows at equal or smaller size than onnxruntime's: the mixed-precision budget is the measured size
    # of onnxruntime's 4-bit block-32 model (weights and graph), not a fixed share of fp32
    ort4 = next(r["bytes"] for r in rows if r["method"].startswith("onnxruntime MatMulNBits 4-bit block 32"))
    runs = [("embtool 8-bit g32", ["--bits", "8"]),
            ("embtool 4-bit g32 (default: GPTQ, built-in sample)", ["--bits", "4"]),
            ("embtool 4-bit g32 RTN (no data)", ["--bits", "4", "--method", "rtn"]),
            ("embtool 4-bit g128 RTN (no data)", ["--bits", "4", "--group-size", "128", "--method", "rtn"]),
            ("embtool 4-bit g32 GPTQ --calib", ["--bits", "4", "--calib", calib]),
            ("embtool 2-bit g32 GPTQ --calib", ["--bits", "2", "--calib", calib]),
            ("embtool mixed {2,4,8} --calib, onnxruntime 4-bit size", ["--bits", "2,4,8", "--max-size", str(ort4), "--calib", calib]),
            ("embtool mixed {2,3,4,8} --calib, 3 bits", ["--bits", "2,3,4,8", "--target-bits", "3", "--calib", calib])]
    for label, args in runs:
        out = WORK / ("q-" + "".join(c for c in label if c.isalnum()))
        s, wall, rss = embtool("quantize", minilm, *args, "-o", out, "--force", "--json", "--quiet")
        f = fidelity(minilm, out, he)
        rows.append({"method": label, "bytes": model_bytes(out), "share": model_bytes(out) / fp32, **f, "seconds": wall})
        log(f"quantize {label}: {rows[-1]['share']:.3f} cos {f['cosine_mean']:.4f}")
    # quantize time, size and embed throughput of q4 vs float, both models
    texts = write_lines("embed-en-2000.txt", train[:2000])
    speed = []
    for name, folder in (("all-MiniLM-L6-v2", minilm), ("multilingual-e5-small", realmodels.e5_small())):
        out = WORK / f"{name}-q4"
        s, wall, rss = embtool("quantize", folder, "--bits", "4", "-o", out, "--force", "--json", "--quiet")
        tf = json.loads(timed(worker("embed", folder, texts, "32", "1"))[0])["texts_per_s"]
        tq = json.loads(timed(worker("embed", out, texts, "32", "1"))[0])["texts_per_s"]
        speed.append({"model": name, "quantize_s": wall, "quantize_rss_mb": rss, "bytes_before": s["bytes_before"],
                      "bytes_after": s["bytes_after"], "float_tps": tf, "q4_tps": tq})
    return {"quantize": {"fp32_bytes": fp32, "onnxruntime_4bit_bytes": ort4, "rows": rows}, "quantize_speed": speed}


def table(R: dict) -> list[str]:
    L = []
    if "quantize" in R:
        q = R["quantize"]
        L += ["## quantize (all-MiniLM-L6-v2)", "",
              f"1,000 held-out English sentences (not the calibration texts; GPTQ and mixed precision calibrate on 256 training-split "
              f"paragraphs). Cosine and recall@10 agreement are against the fp32 model (fp32 = {q['fp32_bytes'] / 1e6:.1f} MB). "
              "The onnxruntime rows quantize embtool's standard-ops fp32 export with onnxruntime's own tools, in the same run.", "",
              *QUANT_HEADER]
        L += [quant_row(r) for r in q["rows"]]
        L += ["", "![size vs cosine](quantize-size-vs-cosine.png)", ""]
    if "quantize_speed" in R:
        L += ["Quantize time and embed throughput of the 4-bit (RTN, group 32) model vs float (2,000 English paragraphs, batch 32, 2 threads):", "",
              "| model | quantize wall | quantize peak RSS | bytes | float texts/s | 4-bit texts/s |", "|---|---|---|---|---|---|"]
        for r in R["quantize_speed"]:
            L.append(f"| {r['model']} | {r['quantize_s']:.1f} s | {r['quantize_rss_mb']:.0f} MB | {r['bytes_before'] / 1e6:.0f} → "
                     f"{r['bytes_after'] / 1e6:.1f} MB | {r['float_tps']:.1f} | {r['q4_tps']:.1f} |")
        L.append("")
    return L


def plot(R: dict, plt, docs: Path) -> list[str]:
    if "quantize" not in R:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in R["quantize"]["rows"]:
        is_e = r["method"].startswith("embtool")
        ax.scatter(100 * r["share"], r["cosine_mean"], marker="o" if is_e else "x", color="C0" if is_e else "C3")
        ax.annotate(r["method"].replace("embtool ", "").replace("onnxruntime ", "ORT ")[:28], (100 * r["share"], r["cosine_mean"]),
                    fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("model bytes, % of fp32 (all-MiniLM-L6-v2)")
    ax.set_ylabel("mean cosine to fp32 (1,000 held-out sentences)")
    ax.set_title("Quantization: size vs fidelity (o embtool, x onnxruntime)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(docs / "quantize-size-vs-cosine.png", dpi=120)
    plt.close(fig)
    return ["quantize-size-vs-cosine.png"]
