"""Do onnxruntime's fused CPU operators help the rotary builder? Each fused op against the standard-op subgraph
embtool's runtime/rotary_graph.py emits under --portable, on the same inputs at an embedding model's shapes: the largest difference
of the outputs, and the time per call (onnxruntime sessions with the graph optimizations embtool uses,
ORT_ENABLE_ALL, 2 threads; the two variants alternate, RUNS rounds of CALLS calls each, median per call).

    python tools/experiments/fused_ops.py            # prints a Markdown table; `make bench` writes it into docs/benchmarks.md
    python tools/experiments/fused_ops.py --only Skip   # time only the rows whose name contains "Skip" (any substring of the op name)
    python tools/experiments/fused_ops.py --check    # no timing: build every pair, run each once (1 thread), print the largest
                                         # difference of the outputs, exit 1 if one is above CHECK_TOL

- RMSNorm: Mul, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul  vs  SimplifiedLayerNormalization.
- rotary: Split, Neg, Concat, Mul, Mul, Add with cos/sin tables  vs  com.microsoft RotaryEmbedding.
- residual add + RMSNorm (pre-norm: the sum is normed and also kept for the next residual), both outputs compared:
  Add and the seven RMSNorm ops (--portable)  vs  com.microsoft SkipSimplifiedLayerNormalization, and
  Add + SimplifiedLayerNormalization (the default graph before FUSE_SKIP_RMSNORM)  vs  SkipSimplifiedLayerNormalization:
  the second row is the one that decides rotary_graph.FUSE_SKIP_RMSNORM.
GroupQueryAttention is not compared: onnxruntime's CPU kernel attends causally to keys given by per-row lengths
(right padding, a KV cache), which cannot express the bidirectional encoders (ModernBERT, NomicBERT, GTE,
EmbeddingGemma) nor a left-padded batch; embtool's attention is a masked MatMul/Softmax/MatMul for every family.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

RUNS, CALLS, THREADS = 5, 20, 2
CHECK_TOL = 1e-4  # --check: largest allowed difference of any output of a pair
B, S, H, NH = 8, 256, 1024, 16  # a Qwen3-0.6B-sized hidden state: 8 texts of 256 tokens
HD = H // NH


def session(nodes, inputs, outputs, inits, ms: bool = False) -> ort.InferenceSession:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 10
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = THREADS
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def c(name, arr):
    return onnx.numpy_helper.from_array(np.asarray(arr), name)


def rmsnorm_pair(eps: float = 1e-6):
    w = np.random.default_rng(1).standard_normal(H).astype(np.float32)
    std = session([helper.make_node("Mul", ["x", "x"], ["sq"]),
                   helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
                   helper.make_node("Add", ["ms", "eps"], ["mse"]),
                   helper.make_node("Sqrt", ["mse"], ["rt"]),
                   helper.make_node("Reciprocal", ["rt"], ["inv"]),
                   helper.make_node("Mul", ["x", "inv"], ["n"]),
                   helper.make_node("Mul", ["n", "w"], ["y"])],
                  [vi("x", [B, S, H])], [vi("y", [B, S, H])],
                  [c("axes", np.array([-1], np.int64)), c("eps", np.array(eps, np.float32)), c("w", w)])
    fused = session([helper.make_node("SimplifiedLayerNormalization", ["x", "w"], ["y"], axis=-1, epsilon=eps)],
                    [vi("x", [B, S, H])], [vi("y", [B, S, H])], [c("w", w)])
    x = np.random.default_rng(2).standard_normal((B, S, H)).astype(np.float32)
    return std, fused, {"x": x}


def rotary_pair(theta: float = 1e6):
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, HD, 2, dtype=np.float32) / np.float32(HD)))).astype(np.float32)
    pos = np.arange(S, dtype=np.float32)
    freqs = np.outer(pos, inv)  # [S, HD/2]
    emb = np.concatenate([freqs, freqs], -1)
    cos4, sin4 = np.cos(emb)[None, None], np.sin(emb)[None, None]  # [1, 1, S, HD], as the builder's tables broadcast
    std = session([helper.make_node("Split", ["q"], ["q1", "q2"], axis=-1, num_outputs=2),
                   helper.make_node("Neg", ["q2"], ["nq2"]),
                   helper.make_node("Concat", ["nq2", "q1"], ["rot"], axis=-1),
                   helper.make_node("Mul", ["q", "cos"], ["a"]),
                   helper.make_node("Mul", ["rot", "sin"], ["b"]),
                   helper.make_node("Add", ["a", "b"], ["y"])],
                  [vi("q", [B, NH, S, HD])], [vi("y", [B, NH, S, HD])],
                  [c("cos", cos4.astype(np.float32)), c("sin", sin4.astype(np.float32))])
    fused = session([helper.make_node("RotaryEmbedding", ["q", "pos", "cos_cache", "sin_cache"], ["y"], domain="com.microsoft",
                                      interleaved=0)],
                    [vi("q", [B, NH, S, HD]), helper.make_tensor_value_info("pos", TensorProto.INT64, [B, S])],
                    [vi("y", [B, NH, S, HD])],
                    [c("cos_cache", np.cos(freqs).astype(np.float32)), c("sin_cache", np.sin(freqs).astype(np.float32))], ms=True)
    q = np.random.default_rng(3).standard_normal((B, NH, S, HD)).astype(np.float32)
    return std, fused, {"q": q}, {"pos": np.broadcast_to(np.arange(S, dtype=np.int64), (B, S)).copy()}


def _rms_std_ops(x: str, eps: float) -> list:
    """The seven standard ops of RMSNorm on `x` (weight "w", constants "axes", "eps") into "y", as --portable emits them."""
    return [helper.make_node("Mul", [x, x], ["sq"]),
            helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
            helper.make_node("Add", ["ms", "eps"], ["mse"]),
            helper.make_node("Sqrt", ["mse"], ["rt"]),
            helper.make_node("Reciprocal", ["rt"], ["inv"]),
            helper.make_node("Mul", [x, "inv"], ["n"]),
            helper.make_node("Mul", ["n", "w"], ["y"])]


def skip_rmsnorm_pairs(eps: float = 1e-6):
    """Residual add then RMSNorm of the sum, the sum kept (outputs y, sum): the standard ops, and Add +
    SimplifiedLayerNormalization, each against one com.microsoft SkipSimplifiedLayerNormalization (inputs input, skip,
    gamma; outputs output, mean and inv_std_var left out, input_skip_bias_sum)."""
    w = np.random.default_rng(4).standard_normal(H).astype(np.float32)
    ins, outs = [vi("x", [B, S, H]), vi("r", [B, S, H])], [vi("y", [B, S, H]), vi("sum", [B, S, H])]
    add = helper.make_node("Add", ["x", "r"], ["sum"])
    std = session([add, *_rms_std_ops("sum", eps)], ins, outs,
                  [c("axes", np.array([-1], np.int64)), c("eps", np.array(eps, np.float32)), c("w", w)])
    simplified = session([add, helper.make_node("SimplifiedLayerNormalization", ["sum", "w"], ["y"], axis=-1, epsilon=eps)],
                         ins, outs, [c("w", w)])
    fused = session([helper.make_node("SkipSimplifiedLayerNormalization", ["x", "r", "w"], ["y", "", "", "sum"],
                                      domain="com.microsoft", epsilon=eps)], ins, outs, [c("w", w)], ms=True)
    rng = np.random.default_rng(5)
    feeds = {"x": rng.standard_normal((B, S, H)).astype(np.float32), "r": rng.standard_normal((B, S, H)).astype(np.float32)}
    return std, simplified, fused, feeds


def pairs() -> list[tuple]:
    """(name, standard session, fused session, feeds, extra feeds of the fused one) for every compared subgraph."""
    out = [("RMSNorm → SimplifiedLayerNormalization", *rmsnorm_pair(), None)]
    std, fused, feeds, extra = rotary_pair()
    out.append(("rotary → com.microsoft RotaryEmbedding", std, fused, feeds, extra))
    std, simplified, fused, feeds = skip_rmsnorm_pairs()
    out.append(("Add + RMSNorm → com.microsoft SkipSimplifiedLayerNormalization", std, fused, feeds, None))
    out.append(("Add + SimplifiedLayerNormalization → com.microsoft SkipSimplifiedLayerNormalization", simplified, fused, feeds, None))
    return out


def max_diff(std, fused, feeds, extra=None) -> float:
    """The largest absolute difference over all outputs of the two graphs, one run each."""
    a = std.run(None, feeds)
    b = fused.run(None, {**feeds, **(extra or {})})
    assert len(a) == len(b)
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def check() -> int:
    """Every pair built and run once, no timing."""
    bad = 0
    for name, std, fused, feeds, extra in pairs():
        d = max_diff(std, fused, feeds, extra)
        bad += d > CHECK_TOL
        print(f"{name}: max abs diff {d:.1e}{'' if d <= CHECK_TOL else f' > {CHECK_TOL:g}'}")
    return 1 if bad else 0


def timed(sess, feeds) -> float:
    sess.run(None, feeds)  # warm-up
    t0 = time.perf_counter()
    for _ in range(CALLS):
        sess.run(None, feeds)
    return (time.perf_counter() - t0) / CALLS


def compare(name: str, std, fused, feeds, extra=None) -> dict:
    diff = max_diff(std, fused, feeds, extra)
    ts, tf = [], []
    for _ in range(RUNS):
        ts.append(timed(std, feeds))
        tf.append(timed(fused, {**feeds, **(extra or {})}))
    ms, mf = float(np.median(ts)), float(np.median(tf))
    return {"op": name, "max_abs_diff": diff, "standard_ms": 1000 * ms, "fused_ms": 1000 * mf,
            "speedup": ms / mf, "ratios": [s / f for s, f in zip(ts, tf)]}


def measure(only: str | None = None) -> list[dict]:
    return [compare(*p) for p in pairs() if only is None or only.lower() in p[0].lower()]


def table(rows: list[dict]) -> list[str]:
    L = ["| subgraph → fused op | max abs difference | standard ops (ms/call) | fused (ms/call) | speed-up (median) | per round |",
         "|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['op']} | {r['max_abs_diff']:.1e} | {r['standard_ms']:.2f} | {r['fused_ms']:.2f} | {r['speedup']:.2f}× | "
                 + ", ".join(f"{x:.2f}" for x in r["ratios"]) + " |")
    return L


if __name__ == "__main__":
    if "--check" in sys.argv:
        THREADS = 1
        sys.exit(check())
    rows = measure(sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None)
    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        print(f"onnxruntime {ort.__version__}; shapes: hidden [{B}, {S}, {H}], heads [{B}, {NH}, {S}, {HD}]; {THREADS} threads")
        print("\n".join(table(rows)))
