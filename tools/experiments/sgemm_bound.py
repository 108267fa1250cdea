"""How close `embtool embed` runs to this CPU's float32 matrix-product speed (issue 18's embed goal).

Prints onnxruntime's MatMul rate (GFLOP/s, 2 threads, medians) at the shapes of an encoder layer, and the rate
an embed throughput implies: the Linear layers' and attention's multiply-adds of the texts' real token counts
(model config + tokenizer), divided by the time. Usage:

    python tools/experiments/sgemm_bound.py MODEL TEXTS.txt [TEXTS_PER_S ...] [--prefix "passage: "]

With throughputs given (texts/s of embtool and of a peer, as measured by `make bench`), each is turned into the
GFLOP/s it implies, so a ratio between two tools can be read against the product's own ceiling."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from embtool.core.model import open_model
from embtool.runtime.encoder import open_encoder


def matmul_rate(M: int, K: int, N: int, threads: int = 2, rounds: int = 7, calls: int = 10) -> float:
    """GFLOP/s of one onnxruntime MatMul [M, K] x [K, N] (the weight a constant, as in an encoder graph)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((M, K)).astype(np.float32)
    for _ in range(3):
        s.run(None, {"x": x})
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            s.run(None, {"x": x})
        times.append((time.perf_counter() - t) / calls)
    return 2 * M * K * N / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("texts")
    ap.add_argument("rates", nargs="*", type=float, help="texts/s to convert to GFLOP/s")
    ap.add_argument("--prefix", default="")
    a = ap.parse_args()
    enc = open_encoder(open_model(a.model, need_tokenizer=True), prefix=a.prefix)
    cfg = enc.model.config
    H, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    lines = [t for t in open(a.texts, encoding="utf-8").read().splitlines() if t.strip()]
    lengths = [len(s) for s in enc.tokenize(lines)]
    linear = layers * (4 * H * H + 2 * H * inter)  # multiply-adds per token: q, k, v, out, two FFN products
    macs = sum(lengths) * linear + sum(layers * 2 * n * n * H for n in lengths)  # + QK^T and AV per text
    print(f"{len(lines)} texts, {sum(lengths)} tokens (mean {np.mean(lengths):.1f}), {2 * macs / 1e12:.3f} TFLOP")
    tokens = 1024  # embtool's default batching: about 1,024 padded tokens per call
    for K, N in ((H, H), (H, inter), (inter, H)):
        print(f"onnxruntime MatMul {tokens}x{K}x{N}, 2 threads: {matmul_rate(tokens, K, N):.1f} GFLOP/s")
    for r in a.rates:
        print(f"{r:.1f} texts/s -> {2 * macs / (len(lines) / r) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
