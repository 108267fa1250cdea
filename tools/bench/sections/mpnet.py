"""all-mpnet-base-v2 beside all-MiniLM: trim for English, 4-bit, mixed, and onnxruntime's 4-bit in the same run; the
table (the quantization rows in all-MiniLM's format)."""

from __future__ import annotations

import shutil

from ..common import WORK, embtool, fidelity, log, model_bytes, peer, realmodels, split, write_lines
from .quantize import QUANT_HEADER, quant_row

NAME = "mpnet"
HEADING = "## all-mpnet-base-v2"


def measure() -> dict:
    mpnet = realmodels.mpnet()
    train, held = split("en")
    tr = write_lines("mpnet-en-train.txt", train)
    he = write_lines("mpnet-held.txt", held[:500])
    calib = write_lines("q-calib.txt", train[:256])
    fp32 = model_bytes(mpnet)
    s, wall, rss = embtool("trim-vocab", mpnet, "-c", tr, "-o", WORK / "mpnet-en", "--force", "--json", "--quiet")
    ev, _, _ = embtool("trim-vocab", mpnet, "-c", tr, "-o", WORK / "mpnet-en", "--force", "--json", "--quiet", "--eval", he,
                       "--eval-limit", "300")
    trim = {"vocab_before": s["vocab_before"], "vocab_after": s["vocab_after"], "bytes_before": s["bytes_before"],
            "bytes_after": s["bytes_after"], "wall_s": wall, "rss_mb": rss, "eval": ev["eval"]}
    log(f"mpnet trim: {s['vocab_before']} -> {s['vocab_after']} tokens, cos {ev['eval']['cosine_mean']:.5f}")
    rows = []
    portable = WORK / "all-mpnet-base-v2-portable-onnx"
    if not portable.exists():
        embtool("export-onnx", mpnet, "--portable", "-o", portable, "--quiet")
    out = WORK / "mpnet-ort-nbits32"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(portable, out, ignore=lambda d, names: [n for n in names if n.startswith("model.onnx")])
    r, wall, rss = peer("ort-nbits", portable / "model.onnx", out / "model.onnx", "32")
    rows.append({"method": "onnxruntime MatMulNBits 4-bit block 32 (+Gather)", "bytes": model_bytes(out),
                 "share": model_bytes(out) / fp32, **fidelity(mpnet, out, he), "seconds": r["seconds"]})
    ort4 = rows[0]["bytes"]
    for label, args in (("embtool 4-bit g32 (default: GPTQ, built-in sample)", ["--bits", "4"]),
                        ("embtool 4-bit g32 RTN (no data)", ["--bits", "4", "--method", "rtn"]),
                        # the quick planner (Hessian estimates, round-to-nearest): the measured one runs GPTQ per width,
                        # about 20 minutes on MPNet
                        ("embtool mixed {2,4,8}, quick planner, onnxruntime 4-bit size",
                         ["--bits", "2,4,8", "--max-size", str(ort4), "--calib", calib, "--method", "rtn", "--sensitivity", "hessian",
                          "--probes", "1"])):
        out = WORK / ("mpnet-q-" + "".join(c for c in label if c.isalnum()))
        s, wall, rss = embtool("quantize", mpnet, *args, "-o", out, "--force", "--json", "--quiet")
        rows.append({"method": label, "bytes": model_bytes(out), "share": model_bytes(out) / fp32, **fidelity(mpnet, out, he),
                     "seconds": wall, "rss_mb": rss})
        log(f"mpnet quantize {label}: {rows[-1]['share']:.3f} cos {rows[-1]['cosine_mean']:.4f}")
    return {"mpnet": {"fp32_bytes": fp32, "trim": trim, "rows": rows}}


def table(R: dict) -> list[str]:
    if "mpnet" not in R:
        return []
    m = R["mpnet"]
    t = m["trim"]
    e = t["eval"]
    L = ["## all-mpnet-base-v2 (MPNet): trim for English, 4-bit, mixed", "",
         f"The same protocol as all-MiniLM above (fp32 = {m['fp32_bytes'] / 1e6:.0f} MB): trim to the English training split, "
         "held-out 300 English paragraphs for the trim, 500 for quantization; cosine and recall@10 against the fp32 model. "
         "onnxruntime's MatMulNBits quantizer runs on embtool's standard-ops export in the same run.", "",
         f"trim-vocab: {t['vocab_before']:,} → {t['vocab_after']:,} tokens, {t['bytes_before'] / 1e6:.0f} → {t['bytes_after'] / 1e6:.0f} MB "
         f"({100 * t['bytes_after'] / t['bytes_before']:.1f}%), held-out identical tokenization {100 * e['identical_tokenization']:.1f}%, "
         f"mean cosine {e['cosine_mean']:.5f}, min {e['cosine_min']:.5f}; {t['wall_s']:.1f} s, peak RSS {t['rss_mb']:.0f} MB.", "",
         *QUANT_HEADER]
    return L + [quant_row(r) for r in m["rows"]] + [""]
