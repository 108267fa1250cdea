"""Search kernels numpy has no fast path for, run by onnxruntime.

SignProduct: Hamming distances as one integer matrix product. With a query's bits taken as signs (+1 for a set
bit, -1 for a clear one) and a row's bits as 0/1, the product is  Σ r·s = popcount(q) − Hamming(q, r)  exactly,
so per query it ranks rows as the Hamming distance does. onnxruntime's MatMulInteger (uint8 × int8, AVX2) runs it;
products of 0/1 and ±1 cannot saturate its 16-bit pair sums. On 1M × 384 bits and 100 queries it measured
0.36-0.40 s (unpacking the bits included) where XOR + popcount in numpy took 1.22 s.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from embtool.runtime.encoder import proto_session


class SignProduct:
    """scores(rows01 [b, D] uint8 of 0/1) -> [b, Q] int32 = popcount(q) − Hamming(q, row), for query bits
    q01 [Q, D] (0/1) fixed when the kernel is built (they are a constant of the graph, packed once)."""

    def __init__(self, q01: np.ndarray, threads: int = 0):
        q01 = np.asarray(q01, dtype=np.uint8)
        self.dim, self.n_queries = q01.shape[1], q01.shape[0]
        signs = np.ascontiguousarray((q01.astype(np.int8) * 2 - 1).T)  # [D, Q] ±1
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["rows", "signs"], ["y"])], "sign_product",
            [helper.make_tensor_value_info("rows", TensorProto.UINT8, ["n", self.dim])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, ["n", self.n_queries])],
            [numpy_helper.from_array(signs, "signs")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        self._session = proto_session(model, threads)

    def __call__(self, rows01: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"rows": rows01})[0]
