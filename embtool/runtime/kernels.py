"""Search kernels numpy has no fast path for, run by onnxruntime.

SignProduct: Hamming distances as one integer matrix product. With a query's bits taken as signs (+1 for a set
bit, -1 for a clear one) and a row's bits as 0/1, the product is  Σ r·s = popcount(q) − Hamming(q, r)  exactly,
so per query it ranks rows as the Hamming distance does. onnxruntime's MatMulInteger (uint8 × int8, AVX2) runs it;
products of 0/1 and ±1 cannot saturate its 16-bit pair sums. On 1M × 384 bits and 100 queries it measured
0.36-0.40 s (unpacking the bits included) where XOR + popcount in numpy took 1.22 s.

The graphs do not depend on the queries: they hold placeholder initializers that each session replaces with the
queries' tensors (onnxruntime's SessionOptions.add_initializer; as constants they are packed once, where graph
inputs measured 22% slower per block). So they are built once by `build_graph` and shipped serialized in
embtool/runtime/kernel_graphs/ (tools/gen/gen_docs.py writes them, tests/test_docs.py fails when they are stale),
and a search process never imports the `onnx` package (0.1 s of its start).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embtool.runtime.encoder import proto_session

GRAPH_DIR = Path(__file__).with_name("kernel_graphs")
GRAPHS = ("sign_product", "int8_product_1", "int8_product_n")


def build_graph(name: str):
    """The ONNX ModelProto of kernel graph `name` (one of GRAPHS)."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    vi = helper.make_tensor_value_info

    def placeholder(name: str, dtype) -> object:  # replaced by the session's own tensor (_session)
        return numpy_helper.from_array(np.zeros((1, 1), dtype), name)

    if name == "sign_product":
        nodes = [helper.make_node("MatMulInteger", ["rows", "signs"], ["y"])]
        inputs = [vi("rows", T.UINT8, ["n", "d"])]
        outputs, consts = [vi("y", T.INT32, ["n", "q"])], [placeholder("signs", np.int8)]
    elif name in ("int8_product_1", "int8_product_n"):
        nodes = [helper.make_node("MatMulInteger", ["codes", "parts", "zp"], ["y"]),
                 helper.make_node("Cast", ["y"], ["yf"], to=T.FLOAT)]
        # one part: its scale per query, a broadcast product; more: [PQ, Q], column i sums query i's parts with
        # their scales, a small float product (a ReduceSum over the [rows, 2, Q] parts measured twice the integer
        # product's time for one query)
        nodes.append(helper.make_node("Mul" if name == "int8_product_1" else "MatMul", ["yf", "combine"], ["cq"]))
        nodes += [helper.make_node("Mul", ["cq", "u"], ["a"]), helper.make_node("Mul", ["v", "qm"], ["b"]),
                  helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "w"], ["scores"])]
        inputs = [vi("codes", T.UINT8, ["n", "d"])] + [vi(x, T.FLOAT, ["n", 1]) for x in ("u", "v", "w")]
        outputs = [vi("scores", T.FLOAT, ["n", "q"])]
        consts = [numpy_helper.from_array(np.array(128, np.uint8), "zp"), placeholder("parts", np.int8),
                  placeholder("combine", np.float32), placeholder("qm", np.float32)]
    else:
        raise ValueError(f"unknown kernel graph {name!r}")
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, consts),
                              opset_imports=[helper.make_opsetid("", 13)], producer_name="embtool")
    model.ir_version = 8
    return model


def _session(name: str, threads: int, tensors: dict[str, np.ndarray]):
    """A session of shipped graph `name` with its placeholders replaced by `tensors`."""
    return proto_session((GRAPH_DIR / f"{name}.onnx").read_bytes(), threads, initializers=tensors)


class SignProduct:
    """scores(rows01 [b, D] uint8 of 0/1) -> [b, Q] int32 = popcount(q) − Hamming(q, row), for query bits
    q01 [Q, D] (0/1) given when the kernel is built."""

    def __init__(self, q01: np.ndarray, threads: int = 0):
        q01 = np.asarray(q01, dtype=np.uint8)
        self.dim, self.n_queries = q01.shape[1], q01.shape[0]
        signs = np.ascontiguousarray((q01.astype(np.int8) * 2 - 1).T)  # [D, Q] ±1
        self._session = _session("sign_product", threads, {"signs": signs})

    def __call__(self, rows01: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"rows": rows01})[0]


# each query is split into three 7-bit parts, q ≈ s1·q1 + s2·q2 + s3·q3 with parts in [-63, 63]: uint8 × int8 products
# of such values cannot saturate the AVX2 kernel's 16-bit pair sums (255·63·2 < 2^15), and three parts carry about 18
# bits of the query. One 8-bit part measured recall@10 0.989 instead of 0.991 on real e5 embeddings; two parts (about
# 12 bits) kept recall but put l2 scores 1e-3 off the decoded rows' near a duplicate (cancellation in 2 q·x - |x|^2);
# with few queries a third part costs almost nothing (the product's time is reading the codes)
QUERY_PART_LEVELS = 63
QUERY_PARTS = 3


def query_parts(q: np.ndarray, n_parts: int = QUERY_PARTS) -> tuple[np.ndarray, np.ndarray]:
    """(parts [D, P·Q] int8, part scales [P·Q] float32), P = n_parts, with q_i ≈ Σ_p parts[:, p·Q + i]·s[p·Q + i]
    to about 6·P bits of each query's largest value."""
    q = np.asarray(q, dtype=np.float64)
    parts, scales = [], []
    r = q
    for _ in range(n_parts):
        # a power-of-two scale: a query whose values are multiples of a power of two within 63 of it (integer
        # vectors, half-integers) is taken exactly, so equal rows and exact ties rank as the float search ranks them
        m = np.abs(r).max(1)
        s = np.exp2(np.ceil(np.log2(np.where(m > 0, m, 1.0) / QUERY_PART_LEVELS)))
        p = np.clip(np.rint(r / s[:, None]), -QUERY_PART_LEVELS, QUERY_PART_LEVELS)
        parts.append(p.astype(np.int8).T)
        scales.append(s)
        r = r - p * s[:, None]
    return np.ascontiguousarray(np.concatenate(parts, 1)), np.concatenate(scales).astype(np.float32)


class Int8Product:
    """scores(codes [b, D] int8, u, v, w [b] float32) -> [b, Q] float32 = (codes · q)·u + v·qm + w, for queries
    q [Q, D] and per-query terms qm [Q] fixed when the kernel is built. One uint8 × int8 MatMulInteger of the codes
    (shifted by 128, zero point 128) against the queries' 7-bit parts, then a few ops in the same graph: the int8
    codes are never widened to float32 (numpy's path widens every tile). Measured on 1M x 384 rows, medians of 3
    (three parts): 1 query 0.24 s instead of 0.40 s, 8 queries 0.38 s instead of 0.54 s, 24 queries 0.55 s instead of
    0.64 s; with two parts 48 queries were even and 100 slower (1.43 s against 1.37 s: the float epilogue over
    [rows, parts x queries] costs as much as the product), so the search uses three parts for few queries
    (algorithms/search.py PRODUCT_MAX_INT8_QUERIES) and, for more, one part (`n_parts=1`, about 6 bits of each query:
    the scores are approximate, and the scan rescores its candidates with the decoded rows)."""

    def __init__(self, q: np.ndarray, qm: np.ndarray, threads: int = 0, n_parts: int = QUERY_PARTS):
        parts, scales = query_parts(q, n_parts)
        nq = parts.shape[1] // n_parts
        if n_parts == 1:
            combine = scales.reshape(1, nq)
        else:
            combine = np.vstack([np.diag(scales[j * nq:(j + 1) * nq]) for j in range(n_parts)])
        self._session = _session("int8_product_1" if n_parts == 1 else "int8_product_n", threads,
                                 {"parts": parts, "combine": np.ascontiguousarray(combine, dtype=np.float32),
                                  "qm": np.ascontiguousarray(qm, dtype=np.float32).reshape(1, nq)})

    def __call__(self, codes: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        shifted = np.bitwise_xor(np.asarray(codes, dtype=np.int8).view(np.uint8), np.uint8(128))  # c + 128
        col = lambda x: np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 1)  # noqa: E731
        return self._session.run(None, {"codes": shifted, "u": col(u), "v": col(v), "w": col(w)})[0]
