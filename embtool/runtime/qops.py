"""Emit onnxruntime's quantized operators for embtool's packed n-bit weights.

Linear layers become com.microsoft.MatMulNBits (B [N, K/g, g*b/8] uint8, fp32 scales, packed zero
points); the token-embedding table becomes com.microsoft.GatherBlockQuantized (codes and fp16 scales fed zero-copy from
the memory-mapped file). 3-bit codes run as 4-bit codes (the same values, exactly).
"""

from __future__ import annotations

import numpy as np

from embtool.algorithms.quantize import pack, unpack
from embtool.core.errors import CorruptFile


def _parts(w, base: str):
    info = w.qmeta.get(base)
    if info is None:
        raise CorruptFile(f"{base}.qweight has no quantization record in the model's metadata")
    bits, g = int(info["bits"]), int(info["group_size"])
    rows, K = (int(x) for x in info["shape"])
    packed = w.get(base + ".qweight")
    scales = w.get(base + ".scales")
    zeros = w.get(base + ".qzeros") if w.has(base + ".qzeros") else None  # packed per row
    if scales.shape != (rows, K // g) or packed.shape != (rows, (K * bits + 7) // 8):
        raise CorruptFile(f"{base}: quantized tensors do not match the recorded shape {rows}x{K}, {bits} bits, group {g}")
    if zeros is not None and zeros.shape != (rows, (K // g * bits + 7) // 8):
        raise CorruptFile(f"{base}.qzeros does not match the recorded shape")
    if bits == 3:  # run as 4-bit codes: same values; the implicit zero point 4 must then be explicit
        packed = pack(unpack(packed, 3, K), 4)
        z3 = unpack(zeros, 3, K // g) if zeros is not None else np.full((rows, K // g), 4, np.uint8)
        zeros = pack(z3, 4)
        bits = 4
    return bits, g, rows, K, packed, scales, zeros


def emit_matmul_nbits(b, w, x: str, base: str) -> str:
    bits, g, N, K, packed, scales, zeros = _parts(w, base)
    B = np.ascontiguousarray(packed).reshape(N, K // g, g * bits // 8)
    inputs = [x, b.const(base + ".B", B), b.const(base + ".scales_f32", scales.astype(np.float32).reshape(-1))]
    if zeros is not None:
        inputs.append(b.const(base + ".zp", np.ascontiguousarray(zeros).reshape(-1)))
    return b.node("MatMulNBits", inputs, "mmnb", domain="com.microsoft", K=K, N=N, bits=bits, block_size=g)


def emit_gather_block_quantized(b, w, ids: str, base: str) -> str:
    bits, g, V, K, packed, scales, zeros = _parts(w, base)
    # fp16 scales as stored (half the bytes of fp32 scales in an ONNX file); the gathered rows are cast to float
    inputs = [b.feed(base + ".qweight", np.ascontiguousarray(packed)), ids,
              b.feed(base + ".scales", np.ascontiguousarray(scales, dtype=np.float16))]
    if zeros is not None:
        inputs.append(b.feed(base + ".zp", np.ascontiguousarray(zeros)))
    rows = b.node("GatherBlockQuantized", inputs, "gbq", domain="com.microsoft", bits=bits, block_size=g,
                  gather_axis=0, quantize_axis=1)
    return b.node("Cast", [rows], "gbq_f32", to=1)


def emit_dequantize_linear(b, w, base: str) -> str:
    """Standard-ops form (opset 21 blocked DequantizeLinear): the float matrix [rows, K] from codes stored as
    uint4 (2, 3 and 4 bits: the codes fit) or uint8, with explicit zero points. For `--portable` outputs."""
    from onnx import TensorProto, helper

    info = w.qmeta[base]
    bits, g = int(info["bits"]), int(info["group_size"])
    rows, K = (int(x) for x in info["shape"])
    codes = unpack(w.get(base + ".qweight"), bits, K)
    zeros = (unpack(w.get(base + ".qzeros"), bits, K // g) if w.has(base + ".qzeros")
             else np.full((rows, K // g), 2 ** (bits - 1), np.uint8))
    # ONNX packs a UINT4 tensor as one run of nibbles over the flattened tensor (not per row): a row of an odd
    # number of values (e.g. 3 zero points for K = 96, group 32) shares its last byte with the next row
    dt, enc = (TensorProto.UINT8, lambda a: a) if bits == 8 else (TensorProto.UINT4, lambda a: pack(a.reshape(1, -1), 4))
    b.inits.append(helper.make_tensor(base + ".codes", dt, [rows, K], np.ascontiguousarray(enc(codes)).tobytes(), raw=True))
    b.inits.append(helper.make_tensor(base + ".zero_points", dt, [rows, K // g], np.ascontiguousarray(enc(zeros)).tobytes(), raw=True))
    scales = b.const(base + ".scales_f32", w.get(base + ".scales").astype(np.float32))
    return b.node("DequantizeLinear", [base + ".codes", scales, base + ".zero_points"], "dq", axis=1, block_size=g)
