"""Tests against independent references, written so that the bugs a review planted fail them:
a plain-loop group quantizer and closed-form rounding bounds; an unblocked GPTQ; pooling of padded
batches against one text at a time; trim selection boundaries on hand-made counts; brute-force numpy
search over float, int8 and binary indexes, through the CLI, in one file and across shards; and the
flags that had no test (--script, --rescore, --strict, --max-error, --no-center, --pooling max|last,
the --min-cosine gates of quantize and factorize)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SENTENCES, corpus_lines, make_tiny_model, run_cli
from embtool.algorithms import pooling as P
from embtool.algorithms import quantize as Q
from embtool.algorithms.vocab import select_by_counts
from embtool.core.model import open_model
from embtool.runtime.encoder import EmbedSettings, Encoder

# ----------------------------------------------------------------------------------------------
# group quantization: a plain-loop reference and closed-form bounds
# ----------------------------------------------------------------------------------------------

f32 = np.float32


def _loop_group(x: list, bits: int, symmetric: bool, grid) -> tuple[list[int], float, int]:
    """One group, element by element: the clip factor with the smallest squared error, round to nearest."""
    qmax = 2**bits - 1
    best = None
    for a in grid:
        a = f32(a)
        if symmetric:
            m = max(x, key=abs)  # the first value of largest magnitude, with its sign
            s = float(np.float16(a * f32(m) / f32(-(2 ** (bits - 1)))))
            z = 2 ** (bits - 1)
        else:
            lo, hi = min(min(x), f32(0)), max(max(x), f32(0))
            s = float(np.float16(a * (f32(hi) - f32(lo)) / f32(qmax)))
            z = min(max(round(float(f32(-a * f32(lo)) / f32(s if s else 1))), 0), qmax)
        codes = [min(max(round(float(f32(v) / f32(s if s else 1))) + z, 0), qmax) for v in x]
        err = sum(((c - z) * s - float(v)) ** 2 for c, v in zip(codes, x))
        if best is None or err < best[1] * (1 - 1e-6):  # the first of (nearly) equal errors, as float32 sees them
            best = (codes, err, s, z)
    return best[0], best[2], best[3]


def loop_quantize(W: np.ndarray, bits: int, group: int, symmetric: bool, grid=Q.CLIP_GRID):
    rows, K = W.shape
    codes = np.zeros((rows, K), np.int64)
    scales = np.zeros((rows, K // group))
    zeros = np.zeros((rows, K // group), np.int64)
    for r in range(rows):
        for g in range(K // group):
            c, s, z = _loop_group([f32(v) for v in W[r, g * group:(g + 1) * group]], bits, symmetric, grid)
            codes[r, g * group:(g + 1) * group] = c
            scales[r, g], zeros[r, g] = s, z
    return codes, scales, zeros


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantizer_equals_a_plain_loop(bits, symmetric):
    rng = np.random.default_rng(bits)
    W = (rng.standard_normal((6, 64)) * np.linspace(0.2, 2, 64)).astype(np.float32)
    W[1, :16] = rng.standard_cauchy(16)  # heavy tails: clipping wins
    W[2, 16:32] = np.abs(W[2, 16:32])  # one-signed groups: zero point at an end
    q = Q.quantize(W, bits, 16, symmetric)
    codes, scales, zeros = loop_quantize(W, bits, 16, symmetric)
    np.testing.assert_array_equal(q.scales.astype(np.float64), scales)
    if not symmetric:
        np.testing.assert_array_equal(q.zeros, zeros)
    np.testing.assert_array_equal(q.codes, codes)


@pytest.mark.parametrize("symmetric", [False, True])
def test_quantizer_in_chunks_on_threads_equals_a_plain_loop(monkeypatch, symmetric):
    """Round-to-nearest runs its clipping search on chunks of rows (a few at a time here), on two threads: the
    same codes, scales and zero points as the plain loop."""
    monkeypatch.setattr(Q, "RTN_CHUNK", 3 * 64)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    rng = np.random.default_rng(7)
    W = (rng.standard_normal((20, 64)) * np.linspace(0.2, 2, 64)).astype(np.float32)
    W[5, :16] = rng.standard_cauchy(16)
    for bits in (2, 4, 8):
        q = Q.quantize(W, bits, 16, symmetric)
        codes, scales, zeros = loop_quantize(W, bits, 16, symmetric)
        np.testing.assert_array_equal(q.codes, codes)
        np.testing.assert_array_equal(q.scales.astype(np.float64), scales)
        if not symmetric:
            np.testing.assert_array_equal(q.zeros, zeros)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rounding_error_within_half_a_step(bits, symmetric):
    """Closed form: each value inside its group's representable range is off by at most scale/2; outside
    it, by its distance to the nearest end (clipping)."""
    rng = np.random.default_rng(10 + bits)
    W = (rng.standard_normal((64, 128)) * rng.uniform(0.01, 3, (64, 1))).astype(np.float32)
    q = Q.quantize(W, bits, 32, symmetric)
    s = np.repeat(q.scales.astype(np.float64), 32, 1)
    z = np.full_like(s, 2 ** (bits - 1)) if symmetric else np.repeat(q.zeros.astype(np.float64), 32, 1)
    lo, hi = -z * s, (2**bits - 1 - z) * s
    x = W.astype(np.float64)
    err = np.abs((q.codes - z) * s - x)
    outside = np.maximum(0, np.maximum(lo - x, x - hi))
    assert np.all(err <= s / 2 * (1 + 1e-6) + outside + 1e-12)
    inside = outside == 0
    # and the bound is reached: round-to-nearest spreads errors over the whole [0, scale/2]
    assert np.max(err[inside] / s[inside]) > 0.49 and np.mean(err[inside] / s[inside]) < 0.3


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_span_the_whole_range(bits, symmetric):
    """A group spread evenly from -1 to 1 uses code 0 and the largest code 2**bits - 1, and every code
    is one of the nearest grid points."""
    x = np.linspace(-1, 1, 64, dtype=np.float32)[None, :]
    for method in ("rtn", "gptq"):
        q = Q.quantize(x, bits, 64, symmetric, clip_grid=(1.0,)) if method == "rtn" else \
            Q.gptq(x, np.eye(64), bits, 64, symmetric, clip_grid=(1.0,))
        assert q.codes.min() == 0 and q.codes.max() == 2**bits - 1, (method, q.codes.min(), q.codes.max())
        ref, _, _ = loop_quantize(x, bits, 64, symmetric, grid=(1.0,))
        np.testing.assert_array_equal(q.codes, ref)


# ----------------------------------------------------------------------------------------------
# GPTQ: an unblocked reference (one column at a time, the whole inverse Hessian)
# ----------------------------------------------------------------------------------------------

def gptq_reference(W: np.ndarray, H: np.ndarray, bits: int, group: int, damp: float = 0.01) -> np.ndarray:
    """Frantar et al.'s algorithm without the lazy block updates, in float64; asymmetric groups whose
    parameters come from the error-updated weights when a group starts. Returns the dequantized W."""
    W = np.array(W, np.float64)
    N, K = W.shape
    H = np.array(H, np.float64) + damp * np.mean(np.diag(H)) * np.eye(K)
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    out = np.zeros_like(W)
    qmax = 2**bits - 1
    for col in range(K):
        if col % group == 0:
            params = []
            for r in range(N):
                _, s, z = _loop_group([f32(v) for v in W[r, col:col + group]], bits, False, Q.CLIP_GRID)
                params.append((s, z))
            s = np.array([p[0] for p in params])
            z = np.array([p[1] for p in params], np.float64)
        w = W[:, col]
        q = np.clip(np.rint(w / np.where(s == 0, 1, s)) + z, 0, qmax)
        out[:, col] = (q - z) * s
        e = (w - out[:, col]) / U[col, col]
        W[:, col + 1:] -= np.outer(e, U[col, col + 1:])
    return out


def _objective(W, deq, H):
    d = (deq - W).astype(np.float64)
    return float(((d @ H) * d).sum())


def test_gptq_wider_than_its_block_equals_the_unblocked_algorithm():
    rng = np.random.default_rng(3)
    K = 256
    X = rng.standard_normal((1000, K)) @ (np.eye(K) + 0.3 * rng.standard_normal((K, K)))  # correlated inputs
    H = X.T @ X
    W = rng.standard_normal((8, K)).astype(np.float32)
    ref = gptq_reference(W, H, 3, 32)
    obj_ref = _objective(W, ref, H)
    for block in (32, 128):  # 8 blocks of one group; the default block (2 blocks of 4 groups)
        got = Q.gptq(W, H, 3, 32, block=block).dequantize()
        # float32 against float64: a code may flip where a value sits on a rounding boundary, nothing more
        assert np.mean(np.isclose(got, ref, atol=1e-4)) > 0.98, block
        assert abs(_objective(W, got, H) - obj_ref) < 0.01 * obj_ref, block
    rtn = Q.quantize(W, 3, 32).dequantize()
    assert obj_ref < 0.6 * _objective(W, rtn, H)


def gptq_act_order_reference(W: np.ndarray, H: np.ndarray, bits: int, group: int, symmetric: bool,
                             damp: float = 0.01) -> np.ndarray:
    """Act-order GPTQ without blocks, in float64: columns in descending order of diag(H), each rounded on its
    group's static grid (round-to-nearest of the original weights, tested against the loop above) and its error
    spread over the columns not yet rounded through the Cholesky factor of the inverse of the permuted H.
    Returns the dequantized W."""
    static = Q.quantize(W, bits, group, symmetric)
    s = static.scales.astype(np.float64)
    z = np.full(s.shape, 2 ** (bits - 1), np.float64) if static.zeros is None else static.zeros.astype(np.float64)
    K = W.shape[1]
    H = np.array(H, np.float64) + damp * np.mean(np.diag(H)) * np.eye(K)
    perm = np.argsort(-np.diag(H), kind="stable")
    U = np.linalg.cholesky(np.linalg.inv(H[np.ix_(perm, perm)])).T
    Wp = np.array(W, np.float64)[:, perm]
    out = np.zeros(W.shape)
    for i in range(K):
        col, g = perm[i], perm[i] // group
        w = Wp[:, i]
        q = np.clip(np.rint(w / np.where(s[:, g] == 0, 1, s[:, g])) + z[:, g], 0, 2**bits - 1)
        out[:, col] = (q - z[:, g]) * s[:, g]
        Wp[:, i + 1:] -= np.outer((w - out[:, col]) / U[i, i], U[i, i + 1:])
    return out


def test_gptq_of_several_matrices_and_widths_at_once_equals_each_alone():
    """The mixed-precision planner quantizes the Linears that share an input (q, k, v) at every width in one GPTQ
    run (one factorization of H, their rows stacked, each row with its own grid and code range): each (matrix,
    width) agrees with the unblocked act-order reference as a single GPTQ does."""
    rng = np.random.default_rng(4)
    K = 96
    X = rng.standard_normal((800, K)) * np.exp(rng.standard_normal(K))  # unequal input energies: act-order matters
    H = X.T @ X
    Ws = [rng.standard_normal((n, K)).astype(np.float32) for n in (8, 12)]
    specs = [(2, False), (4, True), (8, False), (8, True)]
    got = Q.gptq_many(Ws, H, specs, 32)
    assert [len(row) for row in got] == [len(specs)] * len(Ws)
    for W, row in zip(Ws, got):
        for (bits, symmetric), q in zip(specs, row):
            ref = gptq_act_order_reference(W, H, bits, 32, symmetric)
            deq = q.dequantize()
            assert q.bits == bits and (q.zeros is None) == symmetric and q.codes.max() <= 2**bits - 1
            np.testing.assert_array_equal(q.scales, Q.quantize(W, bits, 32, symmetric).scales)  # static groups
            # float32 against float64: a code may flip where a value sits on a rounding boundary, nothing more
            assert np.mean(np.isclose(deq, ref, rtol=0, atol=1e-5 * np.abs(ref).max())) > 0.98, (bits, symmetric)
            assert abs(_objective(W, deq, H) - _objective(W, ref, H)) < 0.01 * _objective(W, ref, H), (bits, symmetric)


@pytest.mark.parametrize("K", [7, 64, 150])
def test_inverse_factor_is_the_cholesky_factor_of_the_inverse(K):
    """GPTQ's U (UᵀU = (H + λI)⁻¹, upper triangular) from a Cholesky factorization of the reversed H and a triangular
    inverse by halves, against numpy's inverse and Cholesky factorization; sizes below, at and above the halving's
    base case."""
    rng = np.random.default_rng(K)
    X = rng.standard_normal((3 * K, K)) @ (np.eye(K) + 0.5 * rng.standard_normal((K, K)))
    H = X.T @ X
    U = Q._inverse_factor(H.copy(), 0.01)
    Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(K)
    ref = np.linalg.cholesky(np.linalg.inv(Hd)).T
    assert np.array_equal(U, np.triu(U)) and U.dtype == np.float32
    assert np.abs(U - ref).max() <= 1e-5 * np.abs(ref).max()


# ----------------------------------------------------------------------------------------------
# pooling: padded batches against one text at a time
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", P.POOLINGS)
def test_pool_ignores_padding(mode):
    rng = np.random.default_rng(0)
    lengths = [1, 7, 3, 12]
    S = 12
    tokens = rng.standard_normal((4, S, 5)).astype(np.float32)
    mask = np.zeros((4, S), np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        tokens[b, n:] = 100.0  # padding positions carry large values: reading one shows
    got = P.pool(tokens, mask, mode)
    for b, n in enumerate(lengths):
        t = tokens[b, :n].astype(np.float64)
        ref = {"mean": t.mean(0), "cls": t[0], "last": t[-1], "max": t.max(0)}[mode]
        np.testing.assert_allclose(got[b], ref, rtol=1e-6, atol=1e-6)


LONG = " ".join(corpus_lines("en", 6, 40))
MIXED_TEXTS = ["ok", LONG, SENTENCES[0], "a", LONG[:200] + " " + SENTENCES[3], SENTENCES[8]]


@pytest.mark.parametrize("mode", ["max", "last", "mean"])
def test_embed_pooling_on_padded_batches_equals_one_text_at_a_time(tmp_path, tiny_bert, mode):
    """`embed --pooling MODE` on texts of very different lengths (one padded batch) equals the independent
    numpy forward pass (tests/reference.py) of each text alone, pooled by hand."""
    from safetensors.numpy import load_file

    import reference

    m = open_model(tiny_bert)
    weights, cfg = load_file(str(tiny_bert / "model.safetensors")), json.loads((tiny_bert / "config.json").read_text())
    (tmp_path / "t.txt").write_text("\n".join(MIXED_TEXTS) + "\n")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--pooling", mode, "--no-normalize", "--max-length", "64",
                 "-o", tmp_path / "e.npy", "--quiet"])
    assert r.exit_code == 0, r.stderr
    got = np.load(tmp_path / "e.npy")
    tok = m.tokenizer.runtime()
    tok.enable_truncation(64)
    lengths = []
    for i, text in enumerate(MIXED_TEXTS):
        ids = tok.encode(text).ids
        lengths.append(len(ids))
        t = reference.forward(weights, cfg, ids)
        ref = {"max": t.max(0), "last": t[-1], "mean": t.mean(0)}[mode]
        np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-4, err_msg=f"text {i}")
    assert min(lengths) <= 3 and max(lengths) == 64  # the batch really was padded
    # the same through the API with one text per call and with everything in one call
    enc = Encoder(m, EmbedSettings(pooling=mode, normalize=False, max_length=64, batch_size=len(MIXED_TEXTS)))
    alone = Encoder(m, EmbedSettings(pooling=mode, normalize=False, max_length=64, batch_size=1)).embed(MIXED_TEXTS)
    np.testing.assert_allclose(enc.embed(MIXED_TEXTS), alone, rtol=1e-5, atol=1e-5)
    assert enc.stats.padded_tokens > 100


# ----------------------------------------------------------------------------------------------
# trim-vocab selection boundaries
# ----------------------------------------------------------------------------------------------

#                   id: 0  1  2  3  4  5   6  7
COUNTS = np.array([0, 5, 3, 2, 0, 10, 3, 1])  # total 24; by frequency: 5, 1, 2, 6 (tie: smaller id), 3, 7


def _ids(mask):
    return set(np.flatnonzero(mask).tolist())


@pytest.mark.parametrize("coverage, expected", [
    (10 / 24, {5}),  # reached exactly by the first token
    (10 / 24 + 1e-9, {5, 1}),
    (15 / 24, {5, 1}),  # exactly at the second
    (18 / 24, {5, 1, 2}),  # the tie 2/6 at count 3: the smaller id first
    (18 / 24 + 1e-9, {5, 1, 2, 6}),
    (0.999, {5, 1, 2, 6, 3, 7}),
    (1.0, {5, 1, 2, 6, 3, 7}),
    (0.01, {5}),
])
def test_coverage_boundaries(coverage, expected):
    assert _ids(select_by_counts(COUNTS, coverage=coverage)) == expected


@pytest.mark.parametrize("min_freq, expected", [
    (3, {1, 2, 5, 6}),  # equal to a count: kept
    (4, {1, 5}), (5, {1, 5}), (10, {5}), (11, set()), (1, {1, 2, 3, 5, 6, 7}), (0, {1, 2, 3, 5, 6, 7}),
])
def test_min_freq_boundaries(min_freq, expected):
    assert _ids(select_by_counts(COUNTS, min_freq=min_freq)) == expected


@pytest.mark.parametrize("top, expected", [(1, {5}), (3, {5, 1, 2}), (4, {5, 1, 2, 6}), (8, {5, 1, 2, 6, 3, 7})])
def test_top_boundaries(top, expected):
    assert _ids(select_by_counts(COUNTS, top=top)) == expected


def _single_token_words(model: Path, n: int) -> list[str]:
    tok = open_model(model).tokenizer.runtime()
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and len(w) >= 3 and w.isascii())
    out = [w for w in words if tok.encode(w, add_special_tokens=False).tokens == [w]]
    assert len(out) >= n
    return out[:n]


@pytest.mark.parametrize("flag, value, kept", [
    ("--min-freq", "3", 3),  # the word seen exactly 3 times is kept
    ("--min-freq", "4", 2),
    ("--coverage", "0.75", 2),  # 8 + 4 = 12 of 16 tokens: coverage reached exactly at the second word
    ("--coverage", "0.7501", 3),
])
def test_trim_cli_selection_boundaries(tmp_path, tiny_bert, flag, value, kept):
    """A corpus of 4 single-token words seen 8, 4, 3 and 1 times (16 tokens): the words trim-vocab keeps."""
    words = _single_token_words(tiny_bert, 4)
    lines = [w for w, c in zip(words, (8, 4, 3, 1)) for _ in range(c)]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    r = run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / "c.txt", flag, value, "-o", tmp_path / "o", "--json", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["corpus_tokens"] == 16
    vocab = json.loads((tmp_path / "o" / "tokenizer.json").read_text())["model"]["vocab"]
    assert [w in vocab for w in words] == [i < kept for i in range(4)]


# ----------------------------------------------------------------------------------------------
# search: brute-force numpy over float / int8 / binary indexes, through the CLI, one file and shards
# ----------------------------------------------------------------------------------------------

INDEX_TEXTS = list(dict.fromkeys(SENTENCES + corpus_lines("en", 25, 300) + corpus_lines("fr", 10, 300)))
N_SHARDS = 3


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, tiny_bert) -> dict:
    """Index files of INDEX_TEXTS embedded without normalisation (so cosine, dot and l2 rank differently):
    one file per precision, and N_SHARDS shard files per precision (`embed --shard i/N`)."""
    d = tmp_path_factory.mktemp("idx")
    (d / "texts.txt").write_text("\n".join(INDEX_TEXTS) + "\n")
    out: dict = {}
    for precision in ("float32", "int8", "binary"):
        extra = ["--keep-float"] if precision != "float32" else []
        jobs = [("full", None)] + [(f"s{i}", f"{i}/{N_SHARDS}") for i in range(N_SHARDS)]
        for name, shard in jobs:
            path = d / f"{precision}-{name}.safetensors"
            r = run_cli(["embed", tiny_bert, "-i", d / "texts.txt", "--no-normalize", "--precision", precision, *extra,
                         "-o", path, "--quiet", *(["--shard", shard] if shard else [])])
            assert r.exit_code == 0, r.stderr
            out[(precision, name)] = path
    rng = np.random.default_rng(5)
    queries = Encoder(open_model(tiny_bert), EmbedSettings(normalize=False)).embed(corpus_lines("en", 4, 900) + [SENTENCES[1]])
    queries = np.concatenate([queries, rng.standard_normal((2, queries.shape[1])).astype(np.float32)])
    np.save(d / "q.npy", queries)
    out["queries"] = d / "q.npy"
    out["dir"] = d
    return out


def _float_rows(path) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, global ids) of a float32 index, read with safetensors itself, not embtool's reader."""
    from safetensors.numpy import load_file

    t = load_file(str(path))
    assert t["embeddings"].dtype == np.float32
    return t["embeddings"].astype(np.float64), t["ids"]


def _as_stored(x: np.ndarray, precision: str, files: list | None = None) -> np.ndarray:
    """What an index of `precision` holds for float rows x (by global id), computed here from the documented format.
    int8: each file's rows are int8_mean + codes * scales, with that file's own mean (read from `files`)."""
    if precision == "float32":
        return x
    if precision == "int8":
        from safetensors.numpy import load_file

        out = np.full_like(x, np.nan)
        for f in files:
            t = load_file(str(f))
            own = x[t["ids"]]
            mean = t["int8_mean"].astype(np.float64)
            np.testing.assert_allclose(mean, own.mean(0), atol=1e-6)  # the file's own corpus mean
            scale = np.abs(own - mean).max(1, keepdims=True) / 127
            out[t["ids"]] = mean + np.clip(np.rint((own - mean) / scale), -127, 127) * scale
        assert not np.isnan(out).any()
        return out
    return np.where(x > 0, 1.0, -1.0) / np.sqrt(x.shape[1])  # binary: sign bits


def _binary_scores(q: np.ndarray, files: list, n: int, metric: str) -> np.ndarray:
    """Binary indexes are searched by Hamming distance h between the stored bits and the query's bits, taken the
    way each file's rows were: sign((q - binary_mean) @ binary_rotation) (format docstring); reported as 1 - 2h/D
    (cosine, dot) or 4h/D (l2). Each shard file carries its own mean and rotation. Returns [Q, n] by global id."""
    from safetensors.numpy import load_file

    out = np.zeros((q.shape[0], n))
    for f in files:
        t = load_file(str(f))
        d = q.shape[1]
        x = q - t["binary_mean"].astype(np.float64) if "binary_mean" in t else q
        if "binary_rotation" in t:
            x = x @ t["binary_rotation"].astype(np.float64)
        qb = x > 0
        rows = np.unpackbits(t["embeddings"], axis=1, count=d).astype(bool)
        h = (qb[:, None, :] != rows[None, :, :]).sum(-1)
        out[:, t["ids"]] = 4 * h / d if metric == "l2" else 1 - 2 * h / d
    return out


def _scores(q: np.ndarray, X: np.ndarray, metric: str) -> np.ndarray:
    """Brute force, float64. cosine and dot: higher is closer; l2: squared distance, smaller is closer."""
    if metric == "cosine":
        return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (X / np.linalg.norm(X, axis=1, keepdims=True)).T
    if metric == "dot":
        return q @ X.T
    return ((q[:, None, :] - X[None, :, :]) ** 2).sum(-1)


def _check_hits(hits: list[dict], ref: np.ndarray, ids: np.ndarray, k: int, metric: str, rel: float = 1e-4) -> None:
    """hits (the CLI's JSON lines) are the k best rows by the reference scores `ref` [Q, N] of rows `ids`:
    each hit's score is the reference score of its id, in order, and nothing better was left out (ties
    within float error may go either way)."""
    col = {int(g): j for j, g in enumerate(ids)}
    sign = -1 if metric == "l2" else 1
    Qn = ref.shape[0]
    assert sorted({h["query_no"] for h in hits}) == list(range(Qn))
    for qi in range(Qn):
        row = [h for h in hits if h["query_no"] == qi]
        assert [h["rank"] for h in row] == list(range(1, min(k, len(ids)) + 1))
        tol = rel * max(1.0, float(np.abs(ref[qi]).max()))
        got = np.array([h["score"] for h in row])
        want = np.array([ref[qi, col[h["id"]]] for h in row])
        np.testing.assert_allclose(got, want, atol=tol, err_msg=f"query {qi}")
        assert np.all(np.diff(sign * got) <= tol), f"query {qi}: not in order"
        assert len({h["id"] for h in row}) == len(row)
        kth = np.sort(sign * ref[qi])[::-1][len(row) - 1]
        assert np.min(sign * want) >= kth - tol, f"query {qi}: a closer row was left out"


def _search(args) -> list[dict]:
    r = run_cli(["search", *args, "--json"])
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_search_equals_brute_force(indexes, precision, metric, sharded):
    """`embtool search` (no rescoring) = brute force over what the index stores, computed here from the
    float vectors; across shard files the same as over one file."""
    q = np.load(indexes["queries"]).astype(np.float64)
    X, ids = _float_rows(indexes[("float32", "full")])
    assert ids.tolist() == list(range(len(INDEX_TEXTS)))
    files = [indexes[(precision, f"s{i}")] for i in range(N_SHARDS)] if sharded else [indexes[(precision, "full")]]
    args = [files[0], *[a for f in files[1:] for a in ("--shard", f)]]
    if precision == "binary":
        ref = _binary_scores(q, files, len(ids), metric)
    else:
        ref = _scores(q, _as_stored(X, precision, files), metric)
    k = 7
    hits = _search([*args, "--query-embeddings", indexes["queries"], "--metric", metric, "-k", k, "--rescore", 0,
                    "--block-rows", 5])
    _check_hits(hits, ref, ids, k, metric)
    # the stored vectors are close to the exact ones: scores too (int8: within a rounding step per value)
    if precision == "int8":
        exact = _scores(q, X, metric)
        got = np.array([h["score"] for h in hits])
        want = np.array([exact[h["query_no"], h["id"]] for h in hits])
        bound = {"cosine": 0.01, "dot": 0.01 * np.abs(exact).max(), "l2": 0.01 * np.abs(exact).max()}[metric]
        assert np.max(np.abs(got - want)) < bound
    if sharded:
        for h in hits:  # each hit's text is the text of its global id
            assert h["text"] == INDEX_TEXTS[h["id"]]


def test_int8_index_stores_the_documented_scales(indexes):
    """int8 rows: codes = rint((x - m) / s) with m = int8_mean, the file's corpus mean, and s = max|x - m| / 127;
    read back as m + codes * s (format docstring)."""
    from safetensors.numpy import load_file

    import embtool

    X, _ = _float_rows(indexes[("float32", "full")])
    t = load_file(str(indexes[("int8", "full")]))
    m = t["int8_mean"]
    assert m.dtype == np.float32 and m.shape == (X.shape[1],)
    np.testing.assert_allclose(m, X.mean(0), atol=1e-6)
    d = X.astype(np.float32) - m  # in float32, as written, so that every code matches exactly
    s = np.abs(d).max(1) / np.float32(127)
    np.testing.assert_allclose(t["scales"], s, rtol=1e-6)
    np.testing.assert_array_equal(t["embeddings"], np.rint(d / s[:, None]).astype(np.int8))
    np.testing.assert_allclose(t["embeddings_float"], X, rtol=1e-3, atol=1e-3)
    decoded = m.astype(np.float64) + t["embeddings"].astype(np.float64) * t["scales"].astype(np.float64)[:, None]
    np.testing.assert_allclose(embtool.read_embeddings(indexes[("int8", "full")]), decoded, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_rescore_uses_the_float_vectors(indexes, precision, metric, sharded):
    """--rescore N: the N best by the stored int8/binary vectors, re-ranked by the stored float16 ones;
    with N >= the index size that is brute force over the float16 vectors."""
    q = np.load(indexes["queries"]).astype(np.float64)
    X, ids = _float_rows(indexes[("float32", "full")])
    fine = _scores(q, X.astype(np.float16).astype(np.float64), metric)
    files = [indexes[(precision, f"s{i}")] for i in range(N_SHARDS)] if sharded else [indexes[(precision, "full")]]
    args = [files[0], *[a for f in files[1:] for a in ("--shard", f)]]
    if precision == "binary":
        coarse = _binary_scores(q, files, len(ids), metric)
    else:
        coarse = _scores(q, _as_stored(X, precision, files), metric)
    k = 4
    common = [*args, "--query-embeddings", indexes["queries"], "--metric", metric, "-k", k]
    _check_hits(_search([*common, "--rescore", len(ids)]), fine, ids, k, metric)
    n = 10
    sign = -1 if metric == "l2" else 1
    hits = _search([*common, "--rescore", n])
    parts = [np.arange(len(ids))] if not sharded else [np.arange(i, len(ids), N_SHARDS) for i in range(N_SHARDS)]
    for qi in range(q.shape[0]):
        # candidates: per file, the n best by the coarse scores; binary scores tie a lot, and float32 may order
        # a tie either way, so rows within float error of the n-th score may or may not be candidates
        tol = 1e-4 * max(1.0, float(np.abs(fine[qi]).max()), float(np.abs(coarse[qi]).max()))
        sure, maybe = [], []
        for p in parts:
            c = sign * coarse[qi, p]
            nth = np.sort(c)[::-1][min(n, len(p)) - 1]
            sure += p[c > nth + tol].tolist()
            maybe += p[np.abs(c - nth) <= tol].tolist()
        row = [h for h in hits if h["query_no"] == qi]
        got = [h["id"] for h in row]
        assert len(row) == k and set(got) <= set(sure) | set(maybe), qi
        np.testing.assert_allclose([h["score"] for h in row], fine[qi, got], atol=tol)  # rescored: the float scores
        assert np.all(np.diff(sign * fine[qi, got]) <= tol)
        worst = np.min(sign * fine[qi, got])
        assert all(sign * fine[qi, i] <= worst + tol for i in sure if i not in got), qi


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_int8_index_as_queries(indexes, metric):
    """--query-embeddings with an int8 index file: its rows are read back as int8_mean + codes * scale."""
    X, ids = _float_rows(indexes[("float32", "full")])
    hits = _search([indexes[("float32", "full")], "--query-embeddings", indexes[("int8", "full")], "--metric", metric, "-k", 3])
    _check_hits(hits, _scores(_as_stored(X, "int8", [indexes[("int8", "full")]]), X, metric), ids, 3, metric)


def test_strict_refuses_another_model(indexes, tiny_models):
    idx = indexes[("float32", "full")]
    other = tiny_models["distilbert"]  # (the tiny bert and xlm-roberta share their weights)
    r = run_cli(["search", idx, "a query", "--model", other, "--strict"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "is not the model the index was made with" in r.stderr
    assert r.stdout == ""
    r = run_cli(["search", idx, "a query", "--model", other, "-k", "2"])
    assert r.exit_code == 0 and "warning:" in r.stderr and "not the model the index was made with" in r.stderr
    assert len(r.stdout.splitlines()) == 2
    # the index's own model passes --strict
    r = run_cli(["search", idx, SENTENCES[4], "--model", tiny_models["bert"], "--strict", "-k", "1", "--json"])
    assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["id"] == INDEX_TEXTS.index(SENTENCES[4])



def test_strict_refuses_the_same_weights_with_another_tokenizer(indexes, tiny_models, tmp_path):
    """The index records the tokenizer's fingerprint too: the same weights under another tokenizer.json embed
    differently, so --strict refuses them (and without it a warning says so)."""
    import shutil

    idx = indexes[("float32", "full")]
    other = tmp_path / "retokenized"
    shutil.copytree(tiny_models["bert"], other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": False,
                         "lowercase": False}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    r = run_cli(["search", idx, "a query", "--model", other, "--strict"])
    assert r.exit_code == 1 and "not the one the index was made with" in r.stderr and r.stdout == ""
    r = run_cli(["search", idx, "a query", "--model", other, "-k", "1"])
    assert r.exit_code == 0 and "warning:" in r.stderr and "another tokenizer.json" in r.stderr

# ----------------------------------------------------------------------------------------------
# flags that had no test: --script, --max-error, --no-center, the --min-cosine gates
# ----------------------------------------------------------------------------------------------

GREEK = ["Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.", "Τα μοντέλα μετατρέπουν προτάσεις σε διανύσματα.",
         "Καλημέρα σας, τι κάνετε σήμερα;", "Η γλώσσα είναι ελληνική και το αλφάβητο επίσης."]
CYRILLIC = ["Быстрая коричневая лиса прыгает через ленивую собаку.", "Модели превращают предложения в векторы.",
            "Доброе утро, как у вас дела сегодня?", "Это русский язык и кириллический алфавит."]


@pytest.fixture(scope="module")
def scripts_model(tmp_path_factory) -> Path:
    # words of two scripts, frequent enough to become tokens of their own (kept by neither script alone)
    texts = SENTENCES + corpus_lines("en", 60) + (GREEK + CYRILLIC) * 6 + ["alphaβήτα kappaλάμδα мирpeace 123абв"] * 30
    return make_tiny_model(tmp_path_factory.mktemp("scripts") / "m", "bert", texts=texts)


def _letters_in(token: str, script: str) -> bool:
    """Every letter of the token (## removed) is named SCRIPT ... in the Unicode database."""
    import unicodedata

    body = token[2:] if token.startswith("##") else token
    return all(unicodedata.name(c, "").startswith(script.upper()) for c in body if unicodedata.category(c).startswith("L"))


@pytest.mark.parametrize("script", ["Greek", "Cyrillic", "Latin"])
def test_script_keeps_exactly_the_tokens_of_the_script(tmp_path, scripts_model, script):
    vocab = json.loads((scripts_model / "tokenizer.json").read_text())["model"]["vocab"]
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    expected = {t for t in vocab if _letters_in(t, script)} | specials
    assert 30 < len(expected) < len(vocab) - 30  # the model has tokens of each script, and others
    assert {"alphaβητα", "мирpeace"} <= set(vocab) and not {"alphaβητα", "мирpeace"} & expected
    r = run_cli(["trim-vocab", scripts_model, "--script", script, "-o", tmp_path / "o", "--json", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    kept = json.loads((tmp_path / "o" / "tokenizer.json").read_text())["model"]["vocab"]
    assert set(kept) == expected
    assert json.loads(r.stdout)["vocab_after"] == len(expected)
    if script != "Greek":
        return
    # with a corpus: the corpus's tokens and the script's
    (tmp_path / "c.txt").write_text("\n".join(corpus_lines("en", 20)) + "\n")
    r = run_cli(["trim-vocab", scripts_model, "-c", tmp_path / "c.txt", "--script", script, "--extra", "none", "-o", tmp_path / "oc",
                 "--no-eval"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["trim-vocab", scripts_model, "-c", tmp_path / "c.txt", "--extra", "none", "-o", tmp_path / "onlyc", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    both = set(json.loads((tmp_path / "oc" / "tokenizer.json").read_text())["model"]["vocab"])
    corpus_only = set(json.loads((tmp_path / "onlyc" / "tokenizer.json").read_text())["model"]["vocab"])
    assert both == corpus_only | expected


def _rel_errors(E: np.ndarray) -> np.ndarray:
    """Relative Frobenius error of the best rank-k approximation, k = 0..D, from numpy's SVD."""
    s = np.linalg.svd(E.astype(np.float64), compute_uv=False)
    tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
    return np.sqrt(tail / (s**2).sum())


def test_max_error_picks_the_smallest_rank(tmp_path, tiny_bert):
    from safetensors.numpy import load_file

    err = _rel_errors(load_file(str(tiny_bert / "model.safetensors"))["embeddings.word_embeddings.weight"])
    k = 10
    for e, rank in ((err[k] * (1 + 1e-6), k), (err[k] * (1 - 1e-6), k + 1)):
        out = tmp_path / f"r{rank}"
        r = run_cli(["factorize", tiny_bert, "--max-error", repr(float(e)), "-o", out, "--json", "--no-eval"])
        assert r.exit_code == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["rank"] == rank and s["rel_frobenius_error"] == pytest.approx(err[rank], rel=1e-4)
        assert load_file(str(out / "model.safetensors"))["embeddings.word_embeddings.factor_F"].shape[1] == rank


def test_no_center_uses_the_word_vectors_as_given(tmp_path, tiny_models):
    """--center subtracts the mean word vector first: on centred vectors --no-center gives the same table,
    and on the raw (anisotropic) vectors --no-center gives another one."""
    from safetensors.numpy import load_file

    target = tiny_models["xlm-roberta"]  # a Unigram vocabulary for the WordPiece model: shared and new tokens
    words = sorted({w for line in corpus_lines("fr", 200, 1000) for w in line.split() if w.isalpha()})[:800]
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((len(words), 16)) + 3.0).astype(np.float32)  # a common direction, as sentence models give
    (tmp_path / "w.vocab").write_text("\n".join(words) + "\n")
    np.save(tmp_path / "w.npy", W)
    np.save(tmp_path / "c.npy", W - W.mean(0, dtype=np.float64).astype(np.float32))

    def table(vectors, *flags):
        out = tmp_path / f"o-{vectors}-{'-'.join(flags)}"
        r = run_cli(["init-subwords", tiny_models["bert"], "--tokenizer", target, "--word-vectors", tmp_path / vectors,
                     "--word-vocab", tmp_path / "w.vocab", "-o", out, "--json", "--no-eval", *flags])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["rows"]["neighbours"] >= 10
        return load_file(str(out / "model.safetensors"))["embeddings.word_embeddings.weight"]

    centred = table("w.npy")
    np.testing.assert_allclose(table("c.npy", "--no-center"), centred, atol=1e-6)
    raw = table("w.npy", "--no-center")
    assert np.abs(raw - centred).max() > 0.01


def _gate(args: list, out: Path) -> None:
    """Measure the held-out cosine, then gate just above it (refused, nothing written) and just below (written)."""
    r = run_cli([*args, "-o", out / "measure", "--json"])
    assert r.exit_code == 0, r.stderr
    cos = json.loads(r.stdout)["eval"]["cosine_mean"]
    assert cos < 0.9999  # lossy enough for the gate to matter
    r = run_cli([*args, "--min-cosine", f"{cos + 1e-4:.6f}", "-o", out / "above"])
    assert r.exit_code == 3 and r.stderr.splitlines()[-1].startswith("Error: ") and "below --min-cosine" in r.stderr
    assert not (out / "above").exists()
    r = run_cli([*args, "--min-cosine", f"{cos - 1e-4:.6f}", "-o", out / "below", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["eval"]["cosine_mean"] == pytest.approx(cos, abs=1e-9)
    assert (out / "below" / "model.safetensors").is_file()


def test_quantize_min_cosine_gate(tmp_path, tiny_bert):
    (tmp_path / "h.txt").write_text("\n".join(corpus_lines("en", 30, 2000)) + "\n")
    _gate(["quantize", tiny_bert, "--bits", "2", "--group-size", "16", "--method", "rtn", "--eval", tmp_path / "h.txt"], tmp_path)


def test_factorize_min_cosine_gate(tmp_path, tiny_bert):
    (tmp_path / "h.txt").write_text("\n".join(corpus_lines("en", 30, 2000)) + "\n")
    _gate(["factorize", tiny_bert, "--rank", "6", "--eval", tmp_path / "h.txt"], tmp_path)


# ----------------------------------------------------------------------------------------------
# mixed precision: the budget checked against the written file, not against the job's own report
# ----------------------------------------------------------------------------------------------

def _quantized_bytes(folder: Path) -> tuple[int, int, dict]:
    """(bytes of the packed codes, scales and zero points in the file, bytes of the other tensors, the record)."""
    from safetensors.numpy import load_file

    t = load_file(str(folder / "model.safetensors"))
    q = sum(a.nbytes for k, a in t.items() if k.endswith((".qweight", ".scales", ".qzeros")))
    rest = sum(a.nbytes for k, a in t.items() if not k.endswith((".qweight", ".scales", ".qzeros")))
    from embtool.core.safetensors_io import SafetensorsFile

    return q, rest, json.loads(SafetensorsFile(folder / "model.safetensors").metadata["embtool_quantization"])


def test_target_bits_holds_in_the_written_file(tmp_path, tiny_bert):
    """--target-bits B: the codes, scales and zero points stored in the output file come to at most B bits per
    quantized weight (the weights counted from the input model), and not far below (measured 3.99)."""
    from safetensors.numpy import load_file

    (tmp_path / "calib.txt").write_text("\n".join(SENTENCES[:4]) + "\n")
    r = run_cli(["quantize", tiny_bert, "--bits", "2,4,8", "--target-bits", "4.0", "--group-size", "32", "--method", "rtn",
                 "--calib", tmp_path / "calib.txt", "--probes", "1", "-o", tmp_path / "m", "--quiet", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    q, _, record = _quantized_bytes(tmp_path / "m")
    src = load_file(str(tiny_bert / "model.safetensors"))
    n = sum(src[base + ".weight"].size for base in record)
    assert len(record) == 13  # the embedding table and the 12 linear layers
    assert len({v["bits"] for v in record.values()}) > 1  # a real mix
    assert 3.8 <= 8 * q / n <= 4.0
