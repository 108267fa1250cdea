"""`embed` outputs and input sources; `search` exactness against a brute-force reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SENTENCES, run_cli
from embtool.algorithms import search as S
from embtool.core.formats.index import open_index
from embtool.core.model import open_model
from embtool.runtime.encoder import Encoder


def _reference(q, X, k, metric):
    if metric == "cosine":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        s = qn @ X.T / np.maximum(np.linalg.norm(X, axis=1), 1e-12)
        key = -s
    elif metric == "dot":
        s = q @ X.T
        key = -s
    else:
        s = ((q[:, None, :] - X[None, :, :]) ** 2).sum(-1)
        key = s
    ids = np.stack([np.lexsort((np.arange(X.shape[0]), key[r]))[:k] for r in range(q.shape[0])])
    return np.take_along_axis(s, ids, 1), ids


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("block_rows", [1, 7, 64, 10_000])
def test_topk_exact(metric, block_rows):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    X[50] = X[10]  # exact ties
    X[250] = X[10]
    q = np.concatenate([rng.standard_normal((5, 16)).astype(np.float32), X[10:11]])
    s, i = S.topk(q, len(X), lambda a, b: X[a:b], 12, metric, block_rows)
    rs, ri = _reference(q.astype(np.float64), X.astype(np.float64), 12, metric)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 20), st.integers(1, 13), st.sampled_from(S.METRICS), st.integers(0, 10**6))
def test_topk_property(n, k, block, metric, seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)  # small integers: many ties
    X[np.all(X == 0, axis=1)] = 1
    q = rng.integers(-2, 3, size=(3, 4)).astype(np.float32) + 0.5
    s, i = S.topk(q, n, lambda a, b: X[a:b], k, metric, block)
    rs, ri = _reference(q.astype(np.float64), X.astype(np.float64), min(k, n), metric)
    np.testing.assert_allclose(s, rs, rtol=1e-5, atol=1e-4)
    if metric != "cosine":
        # dot and l2 on small integers are exact in float32, so ties are real ties and must be broken
        # by the smaller id exactly as the reference does (cosine ties of parallel vectors of different
        # length differ by an ulp after normalisation, so only its scores are compared)
        np.testing.assert_array_equal(i, ri)


@pytest.mark.parametrize("source", ["args", "file", "stdin", "jsonl"])
@pytest.mark.parametrize("fmt", ["npy", "safetensors", "jsonl", "stdout"])
def test_embed_formats_and_sources(tmp_path, tiny_bert, source, fmt):
    texts = SENTENCES[:5]
    ref = Encoder(open_model(tiny_bert)).embed(texts)
    args, stdin = ["embed", tiny_bert], None
    if source == "args":
        args += texts
    elif source == "file":
        (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
        args += ["-i", tmp_path / "t.txt"]
    elif source == "stdin":
        args += ["-i", "-"]
        stdin = "\n".join(texts) + "\n"
    else:
        (tmp_path / "t.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
        args += ["-i", tmp_path / "t.jsonl", "--field", "body"]
    out = tmp_path / f"o.{fmt}"
    if fmt != "stdout":
        args += ["-o", out, "--quiet"]
    r = run_cli(args, input=stdin)
    assert r.exit_code == 0, r.stderr
    if fmt == "npy":
        got = np.load(out)
    elif fmt == "safetensors":
        ix = open_index(out)
        got = ix.block(0, len(ix))
        assert [ix.text(i) for i in range(len(ix))] == texts
        from safetensors.numpy import load_file

        assert load_file(str(out))["embeddings"].shape == (5, 32)
    elif fmt == "jsonl":
        got = np.array([json.loads(line)["embedding"] for line in out.read_text().splitlines()])
    else:
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert [x["text"] for x in rows] == texts
        got = np.array([x["embedding"] for x in rows])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_embed_errors(tmp_path, tiny_bert):
    (tmp_path / "empty.txt").write_text("")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "empty.txt", "-o", tmp_path / "e.npy"])
    assert r.exit_code == 1 and "no texts" in r.stderr and not (tmp_path / "e.npy").exists()
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xc3\x28\n")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "bad.txt", "-o", tmp_path / "b.npy"])
    assert r.exit_code == 1 and "bad.txt:2: invalid UTF-8" in r.stderr and not (tmp_path / "b.npy").exists()
    r = run_cli(["embed", tiny_bert, "x", "--dim", "999"])
    assert r.exit_code == 1 and "larger than the model's embedding size 32" in r.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "empty.txt", tmp_path / "bad.txt"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "empty.txt"]


@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "binary"])
def test_search_cli_matches_reference(tmp_path, tiny_bert, precision):
    texts = SENTENCES * 3
    idx = tmp_path / "i.safetensors"
    extra = ["--keep-float"] if precision in ("int8", "binary") else []
    r = run_cli(["embed", tiny_bert, *texts, "-o", idx, "--precision", precision, "--quiet", *extra])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["search", idx, SENTENCES[2], "-k", "3", "--json", "--block-rows", "4"])
    assert r.exit_code == 0, r.stderr
    hits = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(hits) == 3
    # the query's own text (3 identical copies) comes first, ties broken by the smaller id
    assert [h["id"] for h in hits] == [2, 13, 24]
    assert all(h["text"] == SENTENCES[2] for h in hits)
    if precision in ("float32", "float16"):
        assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_search_shards_and_errors(tmp_path, tiny_bert):
    texts = SENTENCES * 2
    for i in range(2):
        r = run_cli(["embed", tiny_bert, *texts, "--shard", f"{i}/2", "-o", tmp_path / f"s{i}.safetensors", "--quiet"])
        assert r.exit_code == 0, r.stderr
    r = run_cli(["search", tmp_path / "s0.safetensors", tmp_path / "s1.safetensors", SENTENCES[3], "-k", "2", "--json"])
    assert r.exit_code == 0, r.stderr
    hits = [json.loads(x) for x in r.stdout.splitlines()]
    assert [h["id"] for h in hits] == [3, 3 + len(SENTENCES)]  # global ids across shards
    np.save(tmp_path / "q.npy", np.ones((1, 7), np.float32))
    r = run_cli(["search", tmp_path / "s0.safetensors", "--query-embeddings", tmp_path / "q.npy"])
    assert r.exit_code == 1 and "7 dimensions but the index has 32" in r.stderr
    r = run_cli(["search", tmp_path / "s0.safetensors", "x", "-k", "1000"])
    assert r.exit_code == 0 and "larger than the index" in r.stderr


def test_embed_int8_codes_centred_in_the_index_plain_in_npy(tmp_path, tiny_bert):
    """`embed --precision int8`: the index stores codes of x - int8_mean (the corpus mean) and reads back as
    int8_mean + codes * scales; a .npy output has no room for the mean and keeps the plain codes rint(x / scale).
    Search over the index equals brute force over the decoded rows, with q . int8_mean added back."""
    from safetensors.numpy import load_file

    import embtool

    texts = [f"{s} ({i})" for i, s in enumerate(SENTENCES * 3)]
    X = Encoder(open_model(tiny_bert)).embed(texts).astype(np.float64)
    idx, npy = tmp_path / "i.safetensors", tmp_path / "i.npy"
    for out in (idx, npy):
        r = run_cli(["embed", tiny_bert, *texts, "-o", out, "--precision", "int8", "--quiet"])
        assert r.exit_code == 0, r.stderr
    t = load_file(str(idx))
    mean = t["int8_mean"].astype(np.float64)
    np.testing.assert_allclose(mean, X.mean(0), atol=1e-5)
    rows = mean + t["embeddings"].astype(np.float64) * t["scales"].astype(np.float64)[:, None]
    assert np.all(np.abs(rows - X) <= t["scales"][:, None] / 2 + 1e-6)  # within half a step of each row's grid
    np.testing.assert_allclose(embtool.read_embeddings(idx), rows, rtol=1e-6, atol=1e-6)
    plain = np.load(npy)
    X32 = X.astype(np.float32)  # in float32, as written, so that every code matches exactly
    assert plain.dtype == np.int8
    np.testing.assert_array_equal(plain, np.rint(X32 / (np.abs(X32).max(1, keepdims=True) / np.float32(127))))
    q = np.concatenate([X[4:5] + 0.1, np.random.default_rng(3).standard_normal((2, X.shape[1]))]).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    for metric in S.METRICS:
        r = run_cli(["search", idx, "--query-embeddings", tmp_path / "q.npy", "-k", "5", "--metric", metric, "--json"])
        assert r.exit_code == 0, r.stderr
        hits = [json.loads(x) for x in r.stdout.splitlines()]
        rs, ri = _reference(q.astype(np.float64), rows, 5, metric)
        np.testing.assert_array_equal([[h["id"] for h in hits if h["query_no"] == i] for i in range(3)], ri)
        np.testing.assert_allclose([[h["score"] for h in hits if h["query_no"] == i] for i in range(3)], rs,
                                   rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# the index records how its texts were embedded, through every writer (tests/test_ray.py: the --ray writer)

@pytest.fixture(scope="module")
def options_bert(tiny_bert, tmp_path_factory):
    from index_helpers import options_model

    return options_model(tiny_bert, tmp_path_factory.mktemp("options") / "model")


def test_every_encoder_option_changes_the_embedding(options_bert):
    """The options the writer tests use each change the vectors of their model (else those tests could not fail)."""
    from index_helpers import ENCODER_OPTIONS, TEXTS

    def vectors(args):
        r = run_cli(["embed", options_bert, *TEXTS, *args, "--quiet"])
        assert r.exit_code == 0, r.stderr
        return [json.loads(line)["embedding"] for line in r.stdout.splitlines()]

    base = vectors([])
    for name, args in ENCODER_OPTIONS.items():
        v = vectors(args)
        assert len(v[0]) != len(base[0]) or not np.allclose(v, base, atol=1e-3), name


@pytest.mark.parametrize("option", sorted(["pooling-cls", "pooling-mean", "no-normalize", "prefix", "prompt-name",
                                           "max-length", "dim"]))
@pytest.mark.parametrize("writer", ["plain", "shard", "parquet"])
def test_search_embeds_text_queries_as_the_index_records(options_bert, tmp_path, writer, option):
    from index_helpers import ENCODER_OPTIONS, TEXTS, assert_search_embeds_queries_like_the_documents, embed_with

    files = embed_with(writer, options_bert, ENCODER_OPTIONS[option], TEXTS, tmp_path / "index")
    assert_search_embeds_queries_like_the_documents(files, TEXTS)


# ---------------------------------------------------------------------------------------------------------------
# hits are rows: ids as stored, repeated or not

def _write_index(path, X, texts, ids):
    from embtool.core.embeddings_io import EmbeddingSink

    sink = EmbeddingSink(path.suffix[1:], "float32")
    try:
        sink.add(texts, X)
        sink.ids = np.asarray(ids, np.int64)
        sink.finish(path)
    finally:
        sink.close()
    return path


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_hits_are_rows_whatever_the_ids(tmp_path_factory, data):
    """Several index files with ids assigned at random (the same range in every file, all zero, random, shuffled,
    or the global numbering embed writes): each hit is a row, with that row's id, text and score, and the hits are
    the brute-force top-k (ties to the smaller id then position; by position alone once a file's ids do not
    increase). Repeated ids are a warning, and with strict an error."""
    import embtool
    from embtool.errors import InputError

    pytest.importorskip("pyarrow")
    sizes = data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=4), label="rows per file")
    mode = data.draw(st.sampled_from(["global", "range", "zero", "random", "shuffled"]), label="ids")
    metric = data.draw(st.sampled_from(S.METRICS), label="metric")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    total = sum(sizes)
    order = rng.permutation(total)
    folder = tmp_path_factory.mktemp("ids")
    files, rows = [], []  # rows: (file, row, id, text, vector) in position order
    start = 0
    for f, n in enumerate(sizes):
        X = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)
        X[np.all(X == 0, axis=1)] = 1  # no zero rows: cosine is defined
        ids = {"global": np.arange(start, start + n), "range": np.arange(n), "zero": np.zeros(n, int),
               "random": rng.integers(-3, 4, n), "shuffled": order[start:start + n]}[mode]
        texts = [f"file {f} row {r}" for r in range(n)]
        ext = data.draw(st.sampled_from([".safetensors", ".parquet"]), label=f"format {f}")
        files.append(str(_write_index(folder / f"f{f}{ext}", X, texts, ids)))
        rows += [(files[-1], r, int(ids[r]), texts[r], X[r].astype(np.float64)) for r in range(n)]
        start += n
    q = rng.integers(-2, 3, size=(2, 4)).astype(np.float32) + 0.5
    k = data.draw(st.integers(1, total + 2), label="k")
    warnings: list[str] = []
    hits = embtool.search(files, q, k=k, metric=metric, warn=warnings.append, threads=1)

    all_ids = [r[2] for r in rows]
    repeated = len(set(all_ids)) < len(all_ids)
    assert any("ids repeat" in w for w in warnings) == repeated, warnings
    increasing = all(np.all(np.diff([r[2] for r in rows if r[0] == f]) > 0) for f in files)
    for qi, got in enumerate(hits):
        qv = q[qi].astype(np.float64)
        score = {"dot": lambda x: qv @ x, "l2": lambda x: ((qv - x) ** 2).sum(),
                 "cosine": lambda x: qv @ x / np.linalg.norm(qv) / np.linalg.norm(x)}[metric]
        sign = 1 if metric == "l2" else -1
        ref = sorted(range(total), key=lambda p: (sign * score(rows[p][4]), *((rows[p][2],) if increasing else ()), p))
        ref = ref[:min(k, total)]
        assert len(got) == len(ref)
        for h in got:
            file, row, gid, text, x = next(r for r in rows if (r[0], r[1]) == (h.file, h.row))
            assert (h.id, h.text) == (gid, text)  # the row's own id and text
            assert abs(h.score - score(x)) <= 1e-5 * max(1.0, abs(score(x)))
        if metric != "cosine":  # small integers: exact scores, so the order is the rule's exactly
            assert [(h.file, h.row) for h in got] == [(rows[p][0], rows[p][1]) for p in ref]
        else:  # normalising makes equal cosines differ by an ulp: the scores are the reference's
            np.testing.assert_allclose([h.score for h in got], [score(rows[p][4]) for p in ref], atol=1e-5)
    if repeated:
        with pytest.raises(InputError, match="ids repeat"):
            embtool.search(files, q, k=k, metric=metric, strict=True)


def test_search_cli_repeated_ids_show_each_rows_text(tmp_path, tiny_bert):
    """Two indexes embedded apart both hold ids 0..N-1: each hit shows its own row's text (JSON: with its file and
    row), a warning says the ids repeat, and --strict refuses."""
    from conftest import corpus_lines

    a_texts, b_texts = corpus_lines("en", 30), corpus_lines("fr", 30)
    for name, texts in (("a", a_texts), ("b", b_texts)):
        (tmp_path / f"{name}.txt").write_text("\n".join(texts) + "\n")
        assert run_cli(["embed", tiny_bert, "-i", tmp_path / f"{name}.txt", "-o", tmp_path / f"{name}.safetensors",
                        "--quiet"]).exit_code == 0
    args = ["search", tmp_path / "a.safetensors", tmp_path / "b.safetensors", b_texts[7], a_texts[7], "-k", "6"]
    r = run_cli([*args, "--json"])
    assert r.exit_code == 0 and "warning: ids repeat: 30 id(s) name more than one row" in r.stderr
    hits = [json.loads(line) for line in r.stdout.splitlines()]
    by_file = {str(tmp_path / "a.safetensors"): a_texts, str(tmp_path / "b.safetensors"): b_texts}
    assert all(h["text"] == by_file[h["file"]][h["row"]] and h["id"] == h["row"] for h in hits)
    assert [h["text"] for h in hits if h["rank"] == 1] == [b_texts[7], a_texts[7]]
    assert {h["file"] for h in hits} == set(by_file)
    r = run_cli(args)  # TSV: the same rows
    assert [line.split("\t")[4] for line in r.stdout.splitlines()] == [h["text"] for h in hits]
    r = run_cli([*args, "--strict"])
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.startswith("Error: ids repeat")


# ---------------------------------------------------------------------------------------------------------------
# --force replaces what embed wrote, checked by the whole content (not the first line, not a column name)

def _lookalikes(kind: str, path, first: bytes) -> dict[str, bytes]:
    """Files a user may have at an embed target that share a start, a header or a column name with what embed
    writes, built from embed's own output `first`."""
    import io

    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        def parquet(table) -> bytes:
            buf = io.BytesIO()
            pq.write_table(table, buf)
            return buf.getvalue()

        mine = pq.read_table(io.BytesIO(first))
        meta = json.loads(mine.schema.metadata[b"embtool"])
        return {"a dataset with an embedding column": parquet(pa.table({"label": [1, 2], "author": ["x", "y"],
                                                                         "embedding": [[0.1, 0.2], [0.3, 0.4]]})),
                "embed's file with a column added": parquet(mine.append_column("label", pa.array([1] * mine.num_rows))),
                "embed's metadata, other rows": parquet(mine.slice(0, 1)),
                "embed's file without its metadata": parquet(mine.replace_schema_metadata(None)),
                "a newer format": parquet(mine.replace_schema_metadata({b"embtool": json.dumps({**meta, "embtool_index": "2"})}))}
    if kind == "safetensors":
        from safetensors.numpy import load_file

        from embtool.core.safetensors_io import SafetensorsFile, write_safetensors

        t, m = load_file(str(path)), dict(SafetensorsFile(path).metadata)
        out = {}
        for name, (tt, mm) in {"embed's index with a tensor added": ({**t, "labels": np.zeros(2, np.int64)}, m),
                               "embed's index with a count changed": (t, {**m, "count": "7"})}.items():
            write_safetensors(path.with_name("x.safetensors"), tt, mm)
            out[name] = path.with_name("x.safetensors").read_bytes()
        out["embed's index with bytes appended"] = first + b"appended"
        return out
    if kind == "npy":
        buf = io.BytesIO()
        np.save(buf, np.zeros((2, 2, 2), np.float32))
        return {"a 3-D array": buf.getvalue(), "a cut matrix": first[:-3], "bytes appended": first + b"\0\0\0\0"}
    if kind == "jsonl":
        head = first.split(b"\n")[0] + b"\n"
        return {"embed's first row, then data": head + b'{"name": "my data"}\n',
                "a row without its vector": b'{"id": 0, "text": "a"}\n',
                "ids out of order": head + head}
    lines = first.split(b"\n")  # word2vec: .vec, .txt
    return {"a diary starting like a header": b"2024 12\nmy diary\n", "a header and fewer rows": b"\n".join(lines[:2]) + b"\n",
            "a row of words": lines[0] + b"\n" + lines[1] + b"\nmy notes " + b" ".join([b"x"] * 31) + b"\n"}


@pytest.mark.parametrize("ext", ["npy", "safetensors", "parquet", "jsonl", "vec", "txt"])
def test_embed_force_replaces_only_what_embed_wrote(tmp_path, tiny_bert, ext):
    """`embed -o X --force` replaces X only when X is, in whole, an output of embed: embtool's metadata (indexes)
    and content that agrees with it; a file that only starts like one, or holds more, is refused and kept."""
    if ext == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"e.{ext}"
    args = ["embed", tiny_bert, "alpha", "beta", "-o", out, "--quiet"]
    assert run_cli(args).exit_code == 0
    first = out.read_bytes()
    assert run_cli([*args, "--force"]).exit_code == 0 and out.read_bytes() == first  # its own output: replaced
    for name, other in _lookalikes(ext, out, first).items():
        out.write_bytes(other)
        r = run_cli([*args, "--force"])
        assert r.exit_code == 1 and "--force only replaces what embtool wrote" in r.stderr, (name, r.stderr)
        assert out.read_bytes() == other, name


@settings(max_examples=30, deadline=None)
@given(ext=st.sampled_from(["npy", "safetensors", "parquet"]), cut=st.floats(0, 1), tail=st.binary(min_size=1, max_size=40))
def test_embed_force_refuses_a_cut_and_patched_binary_output(tmp_path_factory, tiny_bert, ext, cut, tail):
    """An embed output cut anywhere and given other bytes is refused, unless those bytes restore it exactly."""
    from embtool.core.embeddings_io import not_embeddings_file

    d = tmp_path_factory.mktemp("cut")
    out = d / f"e.{ext}"
    assert run_cli(["embed", tiny_bert, "alpha", "beta", "-o", out, "--quiet"]).exit_code == 0
    first = out.read_bytes()
    patched = first[:int(cut * len(first))] + tail
    out.write_bytes(patched)
    fmt = {"npy": "npy", "safetensors": "safetensors", "parquet": "parquet"}[ext]
    assert (not_embeddings_file(out, fmt) is None) == (patched == first)


def test_api_search_refuses_bad_requests_by_name(tmp_path, tiny_bert):
    """search(k=0) and its siblings: a named error that says what is wrong (validation belongs to the request, so
    the CLI and the API share it), before any file is read."""
    import re

    import embtool
    from embtool.errors import BadUsage, InputError

    idx = tmp_path / "t.safetensors"
    assert run_cli(["embed", tiny_bert, *SENTENCES[:4], "-o", idx, "--quiet"]).exit_code == 0
    q = embtool.read_embeddings(idx)[:2]
    for kwargs, error, says in (({"k": 0}, BadUsage, "k must be at least 1 (got 0)"),
                                ({"k": -3}, BadUsage, "k must be at least 1"),
                                ({"k": "5"}, TypeError, "k must be an integer, not str"),
                                ({"k": True}, TypeError, "k must be an integer, not bool"),
                                ({"k": 2.0}, TypeError, "k must be an integer, not float"),
                                ({"metric": "cos"}, BadUsage, "unknown metric 'cos'"),
                                ({"rescore": -1}, BadUsage, "rescore must be at least 0"),
                                ({"block_rows": -1}, BadUsage, "block_rows must be at least 0"),
                                ({"query_embeddings": str(idx)}, BadUsage, "give queries one way")):
        with pytest.raises(error, match=re.escape(says)):
            embtool.search(idx, q, **kwargs)
    with pytest.raises(BadUsage, match="no index files"):
        embtool.search([], q)
    with pytest.raises(TypeError, match="queries are strings"):
        embtool.search(idx, [1, 2])
    for bad, says in ((q[None], "2-D array"), (q[:0], "no query vectors"), (np.array([["a"]]), "2-D array of numbers"),
                      (np.where(q == q[0, 0], np.nan, q), "query 0 holds a value that is not a finite number")):
        with pytest.raises(InputError, match=says):
            embtool.search(idx, bad)
    hits = embtool.search(idx, q[0], k=1)  # one vector: one query
    assert len(hits) == 1 and hits[0][0].row == hits[0][0].id == 0 and hits[0][0].file == str(idx)
    import pickle

    again = pickle.loads(pickle.dumps(hits[0][0]))  # a hit survives multiprocessing and Ray
    assert again == hits[0][0] and (again.file, again.row) == (str(idx), 0)
    r = run_cli(["search", idx, "a", "-k", "0"])
    assert r.exit_code == 2 and "-k" in r.stderr
