"""Do onnxruntime's fused CPU operators help the rotary builder? Each fused op against the standard-op subgraph
embtool's runtime/rotary_graph.py emits under --portable, on the same inputs at an embedding model's shapes: the largest difference
of the outputs, and the time per call (onnxruntime sessions with the graph optimizations embtool uses,
ORT_ENABLE_ALL, 2 threads; the two variants alternate, RUNS rounds of CALLS calls each, median per call).

    python tools/fused_ops.py            # prints a Markdown table; `make bench` writes it into docs/benchmarks.md

- RMSNorm: Mul, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul  vs  SimplifiedLayerNormalization.
- rotary: Split, Neg, Concat, Mul, Mul, Add with cos/sin tables  vs  com.microsoft RotaryEmbedding.
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


def timed(sess, feeds) -> float:
    sess.run(None, feeds)  # warm-up
    t0 = time.perf_counter()
    for _ in range(CALLS):
        sess.run(None, feeds)
    return (time.perf_counter() - t0) / CALLS


def compare(name: str, std, fused, feeds, extra=None) -> dict:
    a = std.run(None, feeds)[0]
    b = fused.run(None, {**feeds, **(extra or {})})[0]
    ts, tf = [], []
    for _ in range(RUNS):
        ts.append(timed(std, feeds))
        tf.append(timed(fused, {**feeds, **(extra or {})}))
    ms, mf = float(np.median(ts)), float(np.median(tf))
    return {"op": name, "max_abs_diff": float(np.abs(a - b).max()), "standard_ms": 1000 * ms, "fused_ms": 1000 * mf,
            "speedup": ms / mf, "ratios": [s / f for s, f in zip(ts, tf)]}


def measure() -> list[dict]:
    out = [compare("RMSNorm → SimplifiedLayerNormalization", *rmsnorm_pair())]
    std, fused, feeds, extra = rotary_pair()
    out.append(compare("rotary → com.microsoft RotaryEmbedding", std, fused, feeds, extra))
    return out


def table(rows: list[dict]) -> list[str]:
    L = ["| subgraph → fused op | max abs difference | standard ops (ms/call) | fused (ms/call) | speed-up (median) | per round |",
         "|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['op']} | {r['max_abs_diff']:.1e} | {r['standard_ms']:.2f} | {r['fused_ms']:.2f} | {r['speedup']:.2f}× | "
                 + ", ".join(f"{x:.2f}" for x in r["ratios"]) + " |")
    return L


if __name__ == "__main__":
    rows = measure()
    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        print(f"onnxruntime {ort.__version__}; shapes: hidden [{B}, {S}, {H}], heads [{B}, {NH}, {S}, {HD}]; {THREADS} threads")
        print("\n".join(table(rows)))
