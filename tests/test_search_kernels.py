"""search in each stored precision (float32, float16, int8, binary; cosine, dot, l2) against a brute-force numpy
reference, through the CLI and across shards; the tie rule; int8 codes centred by the corpus mean (int8_mean);
binary codes (centred, ITQ) and rescoring; old index files without the binary mean/rotation or int8_mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli
from embtool.algorithms import search as S
from embtool.core.embeddings_io import EmbeddingSink
from embtool.core.formats.index import EncoderRecord, IndexSource, open_index
from embtool.core.safetensors_io import write_safetensors


# ------------------------------------------------------------------------------------------ references
def _ref_order(key: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k smallest keys, ties by the smaller id (a full sort)."""
    return np.stack([np.lexsort((np.arange(key.shape[1]), key[r]))[:k] for r in range(key.shape[0])])


def ref_float(q, X, k, metric, unit_rows=False):
    q, X = q.astype(np.float64), X.astype(np.float64)
    if metric == "l2":
        d = ((q[:, None, :] - X[None, :, :]) ** 2).sum(-1)
        i = _ref_order(d, k)
        return np.take_along_axis(d, i, 1), i
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        if not unit_rows:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    s = q @ X.T
    i = _ref_order(-s, k)
    return np.take_along_axis(s, i, 1), i


def ref_bits(x, mean=None, rot=None):
    """Sign bits as a 0/1 matrix, written independently of embtool.algorithms.search.binarize."""
    x = np.asarray(x, np.float64)
    if mean is not None:
        x = x - mean
    if rot is not None:
        x = x @ rot.astype(np.float64)
    return (x > 0).astype(np.int64)


def ref_hamming(qbits, xbits, k):
    h = (qbits[:, None, :] != xbits[None, :, :]).sum(-1)
    i = _ref_order(h, k)
    return np.take_along_axis(h, i, 1), i


def assert_ids(ids, ri, rs, metric, tie=1e-6):
    """ids equal the reference's; for cosine, whose float32 scores of equal rows may differ in the last bit (BLAS
    tiles), positions whose reference scores tie within `tie` are compared as sets (metric None: for every metric)."""
    if metric not in ("cosine", None):
        np.testing.assert_array_equal(ids, ri)
        return
    for got, want, sc in zip(ids, ri, rs):
        start = 0
        for j in range(1, len(want) + 1):
            if j == len(want) or abs(sc[j] - sc[j - 1]) > tie:
                if j < len(want):  # a group cut by k may hold different members of the tie
                    assert set(got[start:j]) == set(want[start:j]), (got, want)
                start = j


def _vectors(n, d, seed, dup=True, integers=False):
    rng = np.random.default_rng(seed)
    if integers:  # exact products in float32: ties between equal rows are real ties for dot and l2
        X = rng.integers(-3, 5, (n, d)).astype(np.float32)
    else:
        X = (rng.standard_normal((n, d)) + 0.8).astype(np.float32)  # a common direction, as real embeddings have
    if dup:
        X[n // 2] = X[3]  # exact ties
        X[n - 1] = X[3]
    return X


def _write(path, X, precision, keep_float=False, keep_int8=False, code="itq", normalize=False, ids=None):
    sink = EmbeddingSink("safetensors", precision, keep_float, keep_int8=keep_int8, binary_code=code)
    try:
        for r0 in range(0, len(X), 37):  # several chunks
            sink.add([f"t{r0 + j}" for j in range(len(X[r0:r0 + 37]))], X[r0:r0 + 37])
        if ids is not None:
            sink.ids = np.asarray(ids, np.int64)
        sink.finish(path, IndexSource(encoder=EncoderRecord(normalize=normalize)))
    finally:
        sink.close()
    return path


def _cli_hits(args):
    r = run_cli(["search", *args, "--json"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    nq = max(h["query_no"] for h in rows) + 1
    ids = [[h["id"] for h in rows if h["query_no"] == qn] for qn in range(nq)]
    sc = [[h["score"] for h in rows if h["query_no"] == qn] for qn in range(nq)]
    return np.array(ids), np.array(sc), r


# ------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("nq", [1, 2, 7])
def test_hamming_kernel_matches_unpacked_bits(nq):
    """XOR + popcount distances equal the unpacked bits' mismatches: a query at a time over rows in their own layout
    (up to HAMMING_FEW_QUERIES queries, tiles of 65,536 rows: 70,000 rows make two) and over transposed tiles."""
    rng = np.random.default_rng(0)
    for nbytes in (1, 3, 8, 48, 100):  # padded and unpadded word layouts
        a = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
        b = rng.integers(0, 256, (70_000 if nbytes == 48 else 5000, nbytes), dtype=np.uint8)
        want = (np.unpackbits(a, axis=1)[:, None, :] != np.unpackbits(b, axis=1)[None, :, :]).sum(-1)
        for threads in (1, 2):
            np.testing.assert_array_equal(S.hamming(a, b, threads), want)


def test_sign_product_kernel_is_popcount_minus_hamming():
    """onnxruntime's uint8 x int8 product of 0/1 rows and the queries' ±1 signs = popcount(q) - Hamming, exactly, for
    bit counts that are and are not a multiple of 8 and 16 (the kernel's tiles)."""
    from embtool.runtime.kernels import SignProduct

    rng = np.random.default_rng(2)
    for d, nq in ((8, 1), (40, 9), (384, 33), (1000, 16)):
        q01 = rng.integers(0, 2, (nq, d), dtype=np.uint8)
        rows = rng.integers(0, 2, (777, d), dtype=np.uint8)
        h = (q01[:, None, :] != rows[None, :, :]).sum(-1)
        np.testing.assert_array_equal(SignProduct(q01)(rows).T, q01.sum(1)[:, None] - h)


@pytest.mark.parametrize("block_rows", [1, 7, 300, 0])
def test_binary_topk_by_product_equals_popcount_and_reference(block_rows):
    """The binary scan through the integer product returns the same ids and distances as XOR + popcount and the
    brute-force reference, with many exact ties (smaller id first), from PRODUCT_MIN_QUERIES queries on."""
    from embtool.jobs.search import _sign_product

    rng = np.random.default_rng(3)
    d, n = 24, 2000  # 24 bits: distances tie often
    X = rng.integers(0, 2, (n, d)).astype(np.uint8)
    X[1500] = X[10]
    q = rng.integers(0, 2, (S.PRODUCT_MIN_QUERIES + 3, d)).astype(np.uint8)
    q[0] = X[10]
    bits, qb = np.packbits(X, axis=1), np.packbits(q, axis=1)
    want_h, want_i = ref_hamming(q.astype(np.int64), X.astype(np.int64), 15)
    for sp in (None, _sign_product(1)):
        s, i = S.topk_codes(None, bits, 15, "dot", "binary", dim=d, query_bits=qb, block_rows=block_rows, sign_product=sp)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_allclose(s, 1 - 2 * want_h / d, atol=1e-6)
    assert list(i[0, :2]) == [10, 1500]


@pytest.mark.parametrize("nq", [1, 5, 40])
def test_int8_product_kernel_matches_float64(nq):
    """Int8Product = (codes · q)·u + v·qm + w: the codes shifted to uint8 (±127 rows would saturate a uint8 × int8
    product of 8-bit queries), the queries in three 7-bit parts; within 2e-5 of the largest |codes · q| (measured
    5e-6), and exact for queries that are small integers or half-integers."""
    from embtool.runtime.kernels import Int8Product

    rng = np.random.default_rng(4)
    c = rng.integers(-127, 128, (600, 96)).astype(np.int8)
    c[0], c[1] = 127, -127
    u, v, w = (rng.standard_normal(600).astype(np.float32) for _ in range(3))
    for q in (rng.standard_normal((nq, 96)).astype(np.float32), rng.integers(-40, 41, (nq, 96)) / 2):
        qm = rng.standard_normal(nq).astype(np.float32)
        cq = c.astype(np.float64) @ q.astype(np.float64).T
        want = cq * u[:, None] + v[:, None] * qm[None, :] + w[:, None]
        got = Int8Product(q, qm)(c, u, v, w)
        tol = 2e-5 * np.abs(cq).max() * np.abs(u).max() if q.dtype == np.float32 else 1e-5 * np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("nq", [3, S.PRODUCT_MAX_INT8_QUERIES, S.PRODUCT_MAX_INT8_QUERIES + 9])
def test_int8_topk_by_product_equals_widening(metric, nq):
    """The int8 scan through the integer product finds what the widening scan finds (centred codes with stored
    norms, as embtool writes them): the same ids but where two scores lie within the queries' 18-bit parts' error,
    scores within 2e-5 relative. Beyond PRODUCT_MAX_INT8_QUERIES the product takes one 7-bit part per query and
    rescores its candidates with the decoded rows: the scores are then the decoded rows' (one part alone is about
    1e-2 off)."""
    from embtool.jobs.search import _int8_product

    rng = np.random.default_rng(5)
    X = rng.standard_normal((3000, 64)).astype(np.float32) + 0.5
    mean = X.mean(0)
    scales = (np.abs(X - mean).max(1) / 127).astype(np.float32)  # the index format's codes (embeddings_io)
    codes = np.rint((X - mean) / scales[:, None]).astype(np.int8)
    dec = mean[None, :] + codes.astype(np.float32) * scales[:, None]
    sq = np.einsum("ij,ij->i", dec, dec).astype(np.float32)
    q = rng.standard_normal((nq, 64)).astype(np.float32)
    a_s, a_i = S.topk_codes(q, codes, 10, metric, "int8", scales=scales, mean=mean, sqnorms=sq)
    b_s, b_i = S.topk_codes(q, codes, 10, metric, "int8", scales=scales, mean=mean, sqnorms=sq, block_rows=700,
                            int8_product=_int8_product(1))
    np.testing.assert_allclose(b_s, a_s, rtol=2e-5, atol=1e-5)
    gap = np.abs(np.diff(a_s, axis=1)).min(1) > 2e-5 * np.abs(a_s).max(1)  # queries without near-ties
    assert (a_i[gap] == b_i[gap]).all() and np.mean(a_i == b_i) >= 0.9, (gap.sum(), np.mean(a_i == b_i))


def test_popcount_table_fallback_matches(monkeypatch):
    """numpy < 2 has no bitwise_count: the byte-table popcount gives the same distances."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 16), dtype=np.uint8)
    b = rng.integers(0, 256, (600, 16), dtype=np.uint8)
    want = S.hamming(a, b)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def by_table(x, out):
        return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8, out=out)

    monkeypatch.setattr(S, "_popcount", by_table)
    np.testing.assert_array_equal(S.hamming(a, b), want)


@pytest.mark.parametrize("metric", S.METRICS)
def test_int8_one_part_scan_with_ties_equals_reference(metric):
    """The one-part int8 scan (more queries than PRODUCT_MAX_INT8_QUERIES) with many exact ties: the ids of the
    brute-force reference over the decoded rows and its scores. Decoded rows are not integers, so the rescoring
    product may give equal rows scores a last bit apart (BLAS tiles): ties are compared as sets, the run of equal
    rows cut by k included."""
    from embtool.algorithms.pooling import to_precision
    from embtool.jobs.search import _int8_product

    X = _vectors(900, 24, 6, integers=True)
    X[100:130] = X[3]  # a run of equal rows longer than k
    q = np.concatenate([_vectors(S.PRODUCT_MAX_INT8_QUERIES + 4, 24, 7, dup=False, integers=True) + 0.5, X[3:4]])
    mean = X.mean(0)
    codes, scales = to_precision(X - mean, "int8")
    rows = codes.astype(np.float64) * scales[:, None] + mean.astype(np.float64)
    dec = rows.astype(np.float32)
    sq = np.einsum("ij,ij->i", dec, dec).astype(np.float32)
    s, i = S.topk_codes(q, codes, 15, metric, "int8", scales=scales, mean=mean, sqnorms=sq, block_rows=128,
                        int8_product=_int8_product(1))
    rs, ri = ref_float(q, rows, 15, metric)
    assert_ids(i, ri, rs, None, tie=1e-5 * np.abs(rs).max())
    np.testing.assert_allclose(s, rs, rtol=1e-5, atol=1e-4)
    if metric != "dot":  # the query equal to row 3: 15 of its 32 copies
        assert set(i[-1]) <= {3, 450, 899, *range(100, 130)}


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "int8-centred"])
@pytest.mark.parametrize("block_rows", [1, 50, 0])
def test_topk_codes_float_int8_match_reference(metric, precision, block_rows):
    X = _vectors(700, 24, 2, integers=True)
    q = np.concatenate([_vectors(4, 24, 3, dup=False, integers=True) + 0.5, X[3:4]])
    mean = None
    if precision.startswith("int8"):
        from embtool.algorithms.pooling import to_precision
        mean = X.mean(0) if precision == "int8-centred" else None
        codes, scales = to_precision(X - (0 if mean is None else mean), "int8")
        rows = codes.astype(np.float64) * scales[:, None] + (0 if mean is None else mean.astype(np.float64))
        precision = "int8"
    else:
        codes, scales = X.astype(precision), None
        rows = codes
    s, i = S.topk_codes(q, codes, 15, metric, precision, scales=scales, block_rows=block_rows, mean=mean)
    rs, ri = ref_float(q, rows, 15, metric)
    assert_ids(i, ri, rs, metric)
    np.testing.assert_allclose(s, rs, rtol=1e-4, atol=1e-3)
    if metric != "dot":  # the three copies of row 3 come first for the query equal to it, in id order
        assert list(i[-1, :3]) == [3, 350, 699]


def test_unit_rows_skip_the_norms():
    X = _vectors(300, 16, 4)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    q = _vectors(3, 16, 5, dup=False)
    s, i = S.topk_codes(q, X, 10, "cosine", "float32", unit_rows=True)
    rs, ri = ref_float(q, X, 10, "cosine", unit_rows=True)
    np.testing.assert_array_equal(i, ri)
    # rows that are not unit vectors but are declared so are scored by dot product: not the cosine
    Y = X * np.linspace(0.5, 2, 300)[:, None].astype(np.float32)
    _, i_unit = S.topk_codes(q, Y, 10, "cosine", "float32", unit_rows=True)
    _, i_cos = S.topk_codes(q, Y, 10, "cosine", "float32")
    assert not np.array_equal(i_unit, i_cos)


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("unit_rows", [False, True])
def test_int8_scores_of_centred_codes_are_those_of_the_decoded_rows(metric, unit_rows):
    """int8_scores with a mean = block_scores of the rows mean + codes * scales, in float64, for every metric (also
    declared unit rows, and a zero scale: that row decodes to the mean itself)."""
    from embtool.algorithms.pooling import to_precision
    X = _vectors(900, 40, 20, dup=False) * 0.3 + 2
    mean = X.mean(0)
    codes, scales = to_precision(X - mean, "int8")
    scales[7] = 0
    rows = mean.astype(np.float64) + codes.astype(np.float64) * scales.astype(np.float64)[:, None]
    if unit_rows:
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)  # what unit_rows declares (up to float32 rounding)
        codes, scales = to_precision((rows - mean).astype(np.float32), "int8")
        rows = mean.astype(np.float64) + codes.astype(np.float64) * scales.astype(np.float64)[:, None]
    q = S.prepare_queries(_vectors(6, 40, 21, dup=False), metric)
    got = S.int8_scores(q, codes, scales, metric, unit_rows, mean)
    qd = q.astype(np.float64)
    if metric == "l2":
        sq = 1.0 if unit_rows else (rows * rows).sum(1)[None, :]
        want = 2 * qd @ rows.T - sq - (qd * qd).sum(1)[:, None]
    elif metric == "cosine" and not unit_rows:
        want = qd @ (rows / np.linalg.norm(rows, axis=1, keepdims=True)).T
    else:
        want = qd @ rows.T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the index's stored squared norms of the decoded rows give the same scores (one query too), and are used
    sqn = (rows * rows).sum(1).astype(np.float32)
    np.testing.assert_allclose(S.int8_scores(q, codes, scales, metric, unit_rows, mean, sqn), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(S.int8_scores(q[:1], codes, scales, metric, unit_rows, mean, sqn), want[:1], rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    if metric != "dot" and not unit_rows:
        assert not np.allclose(S.int8_scores(q, codes, scales, metric, unit_rows, mean, 4 * sqn), want, rtol=1e-3)
    if unit_rows:
        return
    plain = S.int8_scores(q, codes, scales, metric, unit_rows)  # the same codes without their mean: other scores
    assert np.abs(plain - want).max() > 100 * np.abs(got - want).max()


def test_int8_centring_lowers_the_score_error(tmp_path):
    """On vectors with a strong common direction (as e5's), int8 codes of x - mean (what the writer stores) score
    closer to the float scores than plain codes of x, and find at least as many of the true neighbours."""
    from embtool.algorithms.pooling import to_precision
    rng = np.random.default_rng(22)
    base = rng.standard_normal(64)
    X = (3 * base + rng.standard_normal((3000, 64)) @ np.diag(np.linspace(2, 0.2, 64))).astype(np.float32)
    q = X[:100] + 0.3 * rng.standard_normal((100, 64)).astype(np.float32)
    p = _write(tmp_path / "c.safetensors", X, "int8")
    ix = open_index(p)
    assert ix.int8_mean is not None
    plain_codes, plain_scales = to_precision(X, "int8")
    for metric in ("cosine", "dot"):
        qp = S.prepare_queries(q, metric)
        exact = S.block_scores(qp, X, metric)
        centred = S.int8_scores(qp, ix.emb, ix.scales, metric, mean=ix.int8_mean)
        plain = S.int8_scores(qp, plain_codes, plain_scales, metric)
        err_c, err_p = np.sqrt(np.mean((centred - exact) ** 2)), np.sqrt(np.mean((plain - exact) ** 2))
        assert err_c < 0.7 * err_p, (metric, err_c, err_p)  # measured 0.36-0.50 of it over 4 seeds
        truth = np.argsort(-exact, 1, kind="stable")[:, :10]

        def recall(s):
            got = np.argsort(-s, 1, kind="stable")[:, :10]
            return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])

        assert recall(centred) >= recall(plain), metric


@pytest.mark.parametrize("k", [1, 20, 100, 700])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_running_topk_merges_like_a_full_sort(k, dtype):
    """Blocks of 64 (k larger and smaller than a block, so merges wait for several blocks), many ties, increasing
    scores late in the stream (the threshold of an old merge is stale): the order of a full sort."""
    rng = np.random.default_rng(6)
    s = rng.integers(0, 5, (4, 1000)).astype(dtype)  # many ties
    s[:, 600:] += rng.integers(0, 3, (4, 400)).astype(dtype)
    run = S.RunningTopK(4, k)
    for r0 in range(0, 1000, 64):
        run.push(s[:, r0:r0 + 64], r0)
    rs, ri = run.result()
    want = _ref_order(-s, k)
    np.testing.assert_array_equal(ri, want)
    np.testing.assert_array_equal(rs, np.take_along_axis(s, want, 1))


# ------------------------------------------------------------------------------------------ through the CLI
@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("precision", ["float32", "float16", "int8"])
def test_cli_float_int8_reference_across_shards(tmp_path, metric, precision):
    X = _vectors(500, 32, 7, integers=True)
    q = np.concatenate([_vectors(3, 32, 8, dup=False, integers=True) + 0.5, X[3:4]])
    np.save(tmp_path / "q.npy", q)
    even, odd = np.arange(0, 500, 2), np.arange(1, 500, 2)
    a = _write(tmp_path / "a.safetensors", X[even], precision, ids=even)
    b = _write(tmp_path / "b.safetensors", X[odd], precision, ids=odd)
    ids, sc, _ = _cli_hits([a, "--shard", b, "--query-embeddings", tmp_path / "q.npy", "-k", "12", "--metric", metric,
                            "--block-rows", "16", "--rescore", "0"])
    if precision == "int8":
        # each shard: its own mean, codes of x - mean; rows decoded here from the tensors (format docstring)
        rows = []
        for path, part in ((a, even), (b, odd)):
            t = load_file(str(path))
            np.testing.assert_allclose(t["int8_mean"], X[part].astype(np.float64).mean(0), atol=1e-5)
            rows.append(t["int8_mean"].astype(np.float64) + t["embeddings"].astype(np.float64) * t["scales"].astype(np.float64)[:, None])
        rows = np.concatenate(rows)
        np.testing.assert_allclose(np.concatenate([open_index(a).block(0, 250), open_index(b).block(0, 250)]), rows, rtol=1e-6, atol=1e-5)
    else:
        rows = np.concatenate([open_index(a).block(0, 250), open_index(b).block(0, 250)])
    order = np.concatenate([even, odd])
    full = np.empty_like(rows)
    full[order] = rows
    rs, ri = ref_float(q, full, 12, metric)
    assert_ids(ids, ri, rs, metric)
    np.testing.assert_allclose(sc, rs, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("code", ["sign", "centred", "itq"])
@pytest.mark.parametrize("nq", [4, S.PRODUCT_MIN_QUERIES + 4])  # XOR + popcount; onnxruntime's integer product
def test_cli_binary_hamming_reference_across_shards(tmp_path, metric, code, nq):
    d = 40  # 5 bytes: not a whole uint64 word
    X = _vectors(400, d, 9)
    q = np.concatenate([_vectors(nq - 1, d, 10, dup=False), X[3:4]])
    np.save(tmp_path / "q.npy", q)
    a = _write(tmp_path / "a.safetensors", X[:150], "binary", code=code)
    b = _write(tmp_path / "b.safetensors", X[150:], "binary", code=code)
    ids, sc, r = _cli_hits([a, "--shard", b, "--query-embeddings", tmp_path / "q.npy", "-k", "9", "--metric", metric,
                            "--block-rows", "32"])
    assert "no rescoring" in r.stderr  # no float or int8 vectors stored: said, not skipped silently
    # reference: per shard, bits of (x - mean) @ R with that shard's stored mean/rotation, Hamming, merged
    per = []
    for path, base in ((a, 0), (b, 150)):
        ix = open_index(path)
        mean = None if ix.binary_mean is None else np.asarray(ix.binary_mean, np.float64)
        rot = None if ix.binary_rotation is None else np.asarray(ix.binary_rotation)
        assert (mean is None) == (code == "sign") and (rot is None) == (code != "itq")
        if mean is not None:  # the stored mean is the shard's own mean
            np.testing.assert_allclose(mean, X[base:base + len(ix)].astype(np.float64).mean(0), atol=1e-5)
        if rot is not None:
            np.testing.assert_allclose(rot @ rot.T, np.eye(d), atol=1e-4)
        xb = ref_bits(X[base:base + len(ix)], mean, rot)
        np.testing.assert_array_equal(np.unpackbits(np.asarray(ix.emb), axis=1, count=d), xb)
        h, i = ref_hamming(ref_bits(q, mean, rot), xb, 9)
        per.append((h, i + base))
    h = np.concatenate([p[0] for p in per], 1)
    gi = np.concatenate([p[1] for p in per], 1)
    o = np.stack([np.lexsort((gi[r], h[r]))[:9] for r in range(len(q))])
    want_i, want_h = np.take_along_axis(gi, o, 1), np.take_along_axis(h, o, 1)
    np.testing.assert_array_equal(ids, want_i)
    want_s = 4 * want_h / d if metric == "l2" else 1 - 2 * want_h / d
    np.testing.assert_allclose(sc, want_s, atol=1e-6)
    assert list(ids[-1, :3]) == [3, 200, 399]  # the copies of row 3: distance 0, in id order


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("keep", ["float", "int8"])
def test_cli_binary_rescoring_reference(tmp_path, metric, keep):
    d = 64
    X = _vectors(600, d, 11)
    q = _vectors(5, d, 12, dup=False)
    np.save(tmp_path / "q.npy", q)
    p = _write(tmp_path / "i.safetensors", X, "binary", keep_float=keep == "float", keep_int8=keep == "int8")
    ix = open_index(p)
    ids, sc, r = _cli_hits([p, "--query-embeddings", tmp_path / "q.npy", "-k", "5", "--metric", metric, "--rescore", "40"])
    assert "no rescoring" not in r.stderr
    # reference: 40 candidates by Hamming (ties by id), re-ranked by the exact metric on the stored rescoring rows
    mean, rot = np.asarray(ix.binary_mean, np.float64), np.asarray(ix.binary_rotation)
    _, cand = ref_hamming(ref_bits(q, mean, rot), ref_bits(X, mean, rot), 40)
    if keep == "float":
        rows = np.asarray(ix.float, np.float64)
    else:  # int8 codes of x - the same corpus mean the bits use
        np.testing.assert_array_equal(ix.int8_mean, ix.binary_mean)
        rows = np.asarray(ix.int8_mean, np.float64) + np.asarray(ix.int8, np.float64) * np.asarray(ix.int8_scales, np.float64)[:, None]
    for r_, c in enumerate(cand):
        c = np.sort(c)
        rs, ri = ref_float(q[r_:r_ + 1], rows[c], 5, metric)
        np.testing.assert_array_equal(ids[r_], c[ri[0]])
        np.testing.assert_allclose(sc[r_], rs[0], rtol=1e-4, atol=1e-3)


def test_default_rescoring_depth_grows_with_the_index():
    assert S.auto_rescore(100, 10, "binary") == 100
    small, large = S.auto_rescore(10_000, 10, "binary"), S.auto_rescore(1_000_000, 10, "binary")
    assert 10 < small < large <= 1_000_000
    assert S.auto_rescore(1_000_000, 10, "int8") < small


def test_binary_centring_and_rotation_lift_recall():
    """On vectors with a strong common direction (as e5's), centred and ITQ codes find more of the true
    neighbours than plain signs."""
    rng = np.random.default_rng(13)
    base = rng.standard_normal(64)
    X = (3 * base + rng.standard_normal((3000, 64)) @ np.diag(np.linspace(2, 0.2, 64))).astype(np.float32)
    q = X[:100] + 0.3 * rng.standard_normal((100, 64)).astype(np.float32)
    _, truth = ref_float(q, X, 10, "cosine")
    recall = {}
    for code in ("sign", "centred", "itq"):
        mean = None if code == "sign" else X.mean(0)
        rot = S.fit_rotation(X, mean) if code == "itq" else None
        _, i = S.topk_codes(q, S.binarize(X, mean, rot), 10, "cosine", "binary", dim=64, query_bits=S.binarize(q, mean, rot))
        recall[code] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, truth)])
    assert recall["sign"] < recall["centred"] < recall["itq"], recall


def test_old_binary_index_without_mean_still_searches(tmp_path):
    """An index written before binary codes were centred: plain sign bits, no binary_mean; queries use plain signs."""
    d = 32
    X = _vectors(200, d, 14)
    q = np.concatenate([_vectors(2, d, 15, dup=False), X[3:4]])
    np.save(tmp_path / "q.npy", q)
    old = tmp_path / "old.safetensors"
    offsets = np.zeros(201, np.int64)
    write_safetensors(old, {"embeddings": np.packbits(X > 0, axis=1), "embeddings_float": X.astype(np.float16),
                            "texts": np.zeros(0, np.uint8), "text_offsets": offsets},
                      {"embtool_index": "1", "precision": "binary", "dim": str(d), "count": "200"})
    ids, _, r = _cli_hits([old, "--query-embeddings", tmp_path / "q.npy", "-k", "6", "--rescore", "0"])
    _, want = ref_hamming(ref_bits(q), ref_bits(X), 6)
    np.testing.assert_array_equal(ids, want)
    ids, _, r = _cli_hits([old, "--query-embeddings", tmp_path / "q.npy", "-k", "6"])  # rescored with its float16 rows
    _, cand = ref_hamming(ref_bits(q), ref_bits(X), S.auto_rescore(200, 6, "binary"))
    for r_, c in enumerate(cand):
        c = np.sort(c)
        _, ri = ref_float(q[r_:r_ + 1], X.astype(np.float16)[c], 6, "cosine")
        np.testing.assert_array_equal(ids[r_], c[ri[0]])


def test_old_int8_index_and_bad_binary_tensors(tmp_path):
    """An int8 index written before codes were centred (no int8_mean: the mean is 0) searches and reads back as
    before: rows codes * scales. Tensors of the wrong shape are refused."""
    d = 16
    X = _vectors(100, d, 16)
    from embtool.algorithms.pooling import to_precision
    codes, scales = to_precision(X, "int8")
    base = {"texts": np.zeros(0, np.uint8), "text_offsets": np.zeros(101, np.int64)}
    old = tmp_path / "old8.safetensors"
    write_safetensors(old, {"embeddings": codes, "scales": scales, **base}, {"embtool_index": "1", "precision": "int8", "dim": str(d)})
    q = _vectors(2, d, 17, dup=False)
    np.save(tmp_path / "q.npy", q)
    rows = codes.astype(np.float64) * scales[:, None]
    assert open_index(old).int8_mean is None
    np.testing.assert_array_equal(open_index(old).block(0, 100), codes.astype(np.float32) * scales[:, None])
    for metric in S.METRICS:
        ids, sc, _ = _cli_hits([old, "--query-embeddings", tmp_path / "q.npy", "-k", "5", "--metric", metric])
        ws, want = ref_float(q, rows, 5, metric)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_allclose(sc, ws, rtol=1e-5, atol=1e-4)
    bad8 = tmp_path / "bad8.safetensors"
    write_safetensors(bad8, {"embeddings": codes, "scales": scales, "int8_mean": np.zeros(d - 1, np.float32), **base},
                      {"embtool_index": "1", "precision": "int8", "dim": str(d)})
    r = run_cli(["search", bad8, "--query-embeddings", tmp_path / "q.npy"])
    assert r.exit_code == 1 and "int8_mean" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, {"embeddings": np.packbits(X > 0, axis=1), "binary_mean": np.zeros(d + 1, np.float32), **base},
                      {"embtool_index": "1", "precision": "binary", "dim": str(d)})
    r = run_cli(["search", bad, "--query-embeddings", tmp_path / "q.npy"])
    assert r.exit_code == 1 and "binary_mean" in r.stderr and "Traceback" not in r.stderr


def test_embed_cli_binary_options(tmp_path, tiny_bert):
    from conftest import SENTENCES
    out = tmp_path / "b.safetensors"
    r = run_cli(["embed", tiny_bert, *SENTENCES, "-o", out, "--precision", "binary", "--keep-int8", "--quiet"])
    assert r.exit_code == 0, r.stderr
    ix = open_index(out)
    assert ix.meta["binary_code"] == "itq" and ix.int8 is not None and ix.rescore_source == "embeddings_int8"
    r = run_cli(["search", out, SENTENCES[1], "-k", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["id"] == 1
    r = run_cli(["embed", tiny_bert, "x", "-o", tmp_path / "c.safetensors", "--keep-int8"])
    assert r.exit_code == 2 and "--keep-int8 goes with --precision binary" in r.stderr


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("sweep", [0, 10**9])
def test_rescore_both_ways_equal_reference(monkeypatch, metric, sweep):
    """Rescoring by chunks of queries (sweep 0) and by one sweep over all queries' distinct rows (sweep 10**9),
    with small chunks: each query's best k of its own candidates by the exact metric, ties by id, as a brute-force
    reference over the candidates alone."""
    monkeypatch.setattr(S, "SWEEP_ROWS_PER_CANDIDATE", sweep)
    monkeypatch.setattr(S, "RESCORE_BYTES", 4 * 40 * 30)  # a few rows per chunk
    rng = np.random.default_rng(8)
    X = _vectors(500, 24, 9, integers=True)
    q = _vectors(7, 24, 10, dup=False, integers=True) + 0.5
    cand = np.stack([rng.choice(500, 30, replace=False) for _ in range(7)])
    cand[0, :3] = [3, 250, 499]  # equal rows: ties
    seen = []
    s, i = S.rescore(q, cand, lambda ids: (seen.append(ids), X[ids])[1], metric, 10)
    for qi in range(7):
        c = np.sort(cand[qi])  # the reference breaks ties by position: ids in order
        rs, ri = ref_float(q[qi:qi + 1], X[c], 10, metric)
        assert_ids(i[qi:qi + 1], c[ri], rs, metric)
        np.testing.assert_allclose(s[qi], rs[0], rtol=1e-5, atol=1e-4)
    reads = np.concatenate(seen)
    if sweep:  # every distinct candidate row read once, in id order
        np.testing.assert_array_equal(reads, np.unique(cand))


def test_search_does_not_import_onnx(tmp_path):
    """The kernels' graphs are shipped serialized (embtool/runtime/kernel_graphs, kept current by tools/gen_docs.py):
    a search process never imports the onnx package (0.1 s of its start), for any precision and query count."""
    import subprocess
    import sys

    code = f"""
import sys, numpy as np
from embtool import api
X = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
for prec in ("binary", "int8", "float32"):
    api.write_embeddings(r"{tmp_path}/x-" + prec + ".safetensors", X, precision=prec)
    for nq in (1, 9, 30):
        api.search([r"{tmp_path}/x-" + prec + ".safetensors"], X[:nq], k=5)
print(sorted(m for m in sys.modules if m == "onnx" or m.startswith("onnx.")))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
