"""Issue 7: at equal bytes, Hessian-aware and measured bits per tensor against bits by position and by weight
magnitude (all-MiniLM-L6-v2); the table."""

from __future__ import annotations

import time

import numpy as np

from ..common import WORK, api, embtool, fidelity, log, realmodels, split, write_lines

NAME = "mixed"
HEADING = "## mixed precision"


def measure() -> dict:
    minilm = realmodels.minilm()
    train, held = split("en")
    calib = write_lines("q-calib.txt", train[:256])
    he = write_lines("q-held.txt", held[:1000])
    tensors = {t.name: t for t in api.quantizable_tensors(minilm)}
    names = list(tensors)
    emb = next((t.name for t in tensors.values() if t.token_table), None)
    t0 = time.perf_counter()
    s, wall, rss = embtool("quantize", minilm, "--bits", "2,4,8", "--target-bits", "3", "--calib", calib, "--sensitivity", "hessian",
                           "-o", WORK / "mixed-hessian", "--force", "--json", "--quiet")
    plan = {r["tensor"]: r["bits"] for r in s["mixed_precision"]["per_tensor"]}
    budget = s["mixed_precision"]["budget_bytes"]
    rows = [{"method": "Hessian-aware (embtool --target-bits 3)", "bytes": s["bytes_after"], **fidelity(minilm, WORK / "mixed-hessian", he),
             "calibration_s": s["mixed_precision"]["seconds"]}]

    def cost(p):
        return sum(api.quantized_bytes(tensors[k].shape, p[k], 32) for k in names)

    def greedy(order):  # every tensor at 2 bits, then each in turn widened to 4 and 8 bits while the budget holds
        p = {k: 2 for k in names}
        for k in order:
            for b in (4, 8):
                trial = {**p, k: b}
                if cost(trial) <= budget:
                    p = trial
        return p

    # position: the first layers get more bits than the last, filled greedily to the same budget
    pos = greedy(sorted(names, key=lambda k: (k != emb, int(k.split("layer.")[1].split(".")[0]) if "layer." in k else 99)))
    weights = api.open_model(minilm).weights
    mag = greedy(sorted(names, key=lambda k: -float(np.abs(weights.get(k)).mean())))
    s, wall, rss = embtool("quantize", minilm, "--bits", "2,4,8", "--target-bits", "3", "--calib", calib,
                           "-o", WORK / "mixed-measured", "--force", "--json", "--quiet")
    rows.append({"method": "measured loss per tensor (embtool default)", "bytes": s["bytes_after"],
                 **fidelity(minilm, WORK / "mixed-measured", he), "calibration_s": s["mixed_precision"]["seconds"]})
    for label, p in (("bits by position (early layers first)", pos), ("bits by weight magnitude", mag)):
        out = WORK / ("mixed-" + label.split()[2])
        r = api.quantize(minilm, out, bits=[2, 4, 8], plan=p, force=True, no_eval=True)
        rows.append({"method": label, "bytes": r.bytes_after, **fidelity(minilm, out, he)})
    log("mixed: " + ", ".join(f"{r['method']}: {r['cosine_mean']:.4f}" for r in rows))
    return {"mixed": {"rows": rows, "plan_hessian": plan, "wall_s": time.perf_counter() - t0}}


def table(R: dict) -> list[str]:
    if "mixed" not in R:
        return []
    L = ["## mixed precision vs simpler bit assignments (all-MiniLM-L6-v2, RTN, group 32)", "",
         "Bits from {2, 4, 8} at an average of 3 bits per weight, all three at the same budget; 1,000 held-out sentences.", "",
         "| assignment | bytes | mean cosine | recall@10 |", "|---|---|---|---|"]
    for r in R["mixed"]["rows"]:
        L.append(f"| {r['method']} | {r['bytes'] / 1e6:.2f} MB | {r['cosine_mean']:.4f} | {r['recall@10']:.3f} |")
    return L + [""]
