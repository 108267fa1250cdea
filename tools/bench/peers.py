"""Peer measurements for `make bench`, run with the peers' own venv (torch, sentence-transformers, faiss,
onnxruntime's quantizers) — never with embtool's. Each call prints one JSON object.

    python tools/bench/peers.py st-embed MODEL TEXTS THREADS BATCH
    python tools/bench/peers.py faiss INDEX.npy QUERIES.npy K THREADS BLAS_THRESHOLD [SINGLE [IDS_OUT.npy]]
    python tools/bench/peers.py faiss-binary BITS.npy QUERY_BITS.npy K THREADS [SINGLE [IDS_OUT.npy]]
    python tools/bench/peers.py ort-dynamic MODEL.onnx OUT.onnx PER_CHANNEL
    python tools/bench/peers.py ort-nbits MODEL.onnx OUT.onnx BLOCK
    python tools/bench/peers.py ort-loop MODEL.onnx TOKENIZER.json TEXTS THREADS BATCH [MAX_LENGTH]
"""

from __future__ import annotations

import json
import sys
import time


def st_embed(model: str, texts: str, threads: str, batch: str) -> dict:
    import torch

    torch.set_num_threads(int(threads))
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    m = SentenceTransformer(model, device="cpu")
    lines = open(texts, encoding="utf-8").read().splitlines()
    t1 = time.perf_counter()
    m.encode(lines, batch_size=int(batch))
    t2 = time.perf_counter()
    import sentence_transformers

    return {"load_s": t1 - t0, "encode_s": t2 - t1, "texts": len(lines), "texts_per_s": len(lines) / (t2 - t1),
            "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__}}


def _faiss_timed(ix, q, k: int, single: int, ids_out: str) -> dict:
    """Search time of the whole query batch; with single = n > 0 also the median latency of n queries sent one
    at a time (a user typing a search). The batch's ids go to ids_out when given."""
    import numpy as np

    t0 = time.perf_counter()
    _, ids = ix.search(q, k)
    out = {"search_s": time.perf_counter() - t0}
    if ids_out:
        np.save(ids_out, ids)
    if single > 0:
        lat = []
        for r in range(min(single, len(q))):
            t0 = time.perf_counter()
            ix.search(q[r:r + 1], k)
            lat.append(time.perf_counter() - t0)
        out["single_p50_s"] = float(np.median(lat))
    return out


def faiss_search(index: str, queries: str, k: str, threads: str, blas: str, single: str = "0", ids_out: str = "") -> dict:
    """IndexFlatIP over an .npy matrix loaded into RAM (loading is not timed)."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(int(threads))
    if int(blas) > 0:
        faiss.cvar.distance_compute_blas_threshold = int(blas)
    X = np.load(index)
    q = np.load(queries)
    ix = faiss.IndexFlatIP(X.shape[1])
    ix.add(X)
    return {**_faiss_timed(ix, q, int(k), int(single), ids_out), "version": faiss.__version__}


def faiss_binary(bits: str, query_bits: str, k: str, threads: str, single: str = "0", ids_out: str = "") -> dict:
    """IndexBinaryFlat (exact Hamming) over packed sign bits [N, D/8] uint8 loaded into RAM."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(int(threads))
    X = np.ascontiguousarray(np.load(bits))
    q = np.ascontiguousarray(np.load(query_bits))
    ix = faiss.IndexBinaryFlat(X.shape[1] * 8)
    ix.add(X)
    return {**_faiss_timed(ix, q, int(k), int(single), ids_out), "version": faiss.__version__}


def ort_dynamic(src: str, dst: str, per_channel: str) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    quantize_dynamic(src, dst, per_channel=per_channel == "1", weight_type=QuantType.QInt8)
    return {"seconds": time.perf_counter() - t0}


def ort_nbits(src: str, dst: str, block: str) -> dict:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    t0 = time.perf_counter()
    cfg = DefaultWeightOnlyQuantConfig(block_size=int(block), is_symmetric=True, bits=4,
                                       op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)))
    q = MatMulNBitsQuantizer(onnx.load(src), algo_config=cfg)
    q.process()
    q.model.save_model_to_file(dst, False)
    return {"seconds": time.perf_counter() - t0}


def ort_loop(model: str, tokenizer: str, texts: str, threads: str, batch: str, max_length: str = "512") -> dict:
    """The plain way to run an ONNX embedding model: onnxruntime + tokenizers + numpy mean pooling, fixed batches
    in input order. Independent of embtool (nothing of it is imported)."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    tok = Tokenizer.from_file(tokenizer)
    tok.enable_truncation(int(max_length))  # the model's own limit, as sentence-transformers and embtool use it
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or tok.token_to_id("<pad>") or 0)
    lines = open(texts, encoding="utf-8").read().splitlines()
    t1 = time.perf_counter()
    for i in range(0, len(lines), int(batch)):
        enc = tok.encode_batch(lines[i : i + int(batch)])
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        h = sess.run(None, feed)[0]
        m = mask[:, :, None].astype(np.float32)
        (h * m).sum(1) / m.sum(1)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "encode_s": t2 - t1, "texts": len(lines), "texts_per_s": len(lines) / (t2 - t1),
            "onnxruntime": ort.__version__}


if __name__ == "__main__":
    fn = {"st-embed": st_embed, "faiss": faiss_search, "faiss-binary": faiss_binary, "ort-dynamic": ort_dynamic, "ort-nbits": ort_nbits, "ort-loop": ort_loop}[sys.argv[1]]
    print(json.dumps(fn(*sys.argv[2:])))
