"""onnxruntime's fused CPU operators vs the standard-op subgraphs of the rotary builder: runs
tools/experiments/fused_ops.py (which owns the pairs, the timing protocol and the table's format); the section."""

from __future__ import annotations

import json

from ..common import PY, ROOT, log, timed

NAME = "fused"
HEADING = "## onnxruntime's fused"
SCRIPT = ROOT / "tools" / "experiments" / "fused_ops.py"


def measure() -> dict:
    out, _, _ = timed([PY, SCRIPT, "--json"])
    import onnxruntime

    res = {"rows": json.loads(out.strip().splitlines()[-1]), "onnxruntime": onnxruntime.__version__}
    log("fused ops: " + ", ".join(f"{r['op']} {r['speedup']:.2f}x" for r in res["rows"]))
    return {"fused": res}


def table(R: dict) -> list[str]:
    if "fused" not in R:
        return []
    from tools.experiments import fused_ops

    return ["## onnxruntime's fused operators in the rotary builder", "",
            f"Each fused CPU operator of onnxruntime {R['fused']['onnxruntime']} against the standard-op subgraph "
            "runtime/rotary_graph.py emits for it, same inputs (hidden states [8, 256, 1024], heads [8, 16, 256, 64], "
            f"2 threads, ORT_ENABLE_ALL); the two alternate, {fused_ops.RUNS} rounds of {fused_ops.CALLS} calls, median "
            "per call (`python tools/experiments/fused_ops.py`).", "", *fused_ops.table(R["fused"]["rows"]), "",
            "Adopted: SimplifiedLayerNormalization for every RMSNorm (Qwen3, EmbeddingGemma) and RotaryEmbedding for "
            "the rotation of q and k in every rotary family (int64 positions, a cos/sin cache per theta computed for "
            "the batch's length); `--portable` keeps the standard ops. Not adopted: SkipSimplifiedLayerNormalization, no faster "
            "than the Add + SimplifiedLayerNormalization the graph already has (the last row; 0.85x, 0.95x and 1.04x in three "
            "runs on 2026-11-30; built behind rotary_graph.FUSE_SKIP_RMSNORM and tested), and GroupQueryAttention, whose CPU kernel "
            "attends causally to keys given by per-row lengths, which cannot express the bidirectional encoders nor "
            "a left-padded batch.", ""]
