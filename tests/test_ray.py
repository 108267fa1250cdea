"""Ray scale-out (optional extra, installed by `make test`): embed_dataset equals Encoder.embed row for row, a
worker killed mid-run changes nothing, `embed --ray` shards search like one local index."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import SENTENCES, corpus_lines

ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test` (pip install 'embtool[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    from embtool.distributed import FAULT_ENV, init

    marker = tmp_path_factory.mktemp("fault") / "killed"
    # workers inherit the environment of the Ray instance: a worker exits hard once, when it meets text id 150
    os.environ[FAULT_ENV] = f"150:{marker}"
    init("local", num_cpus=2)
    yield marker
    ray.shutdown()
    os.environ.pop(FAULT_ENV, None)


def test_embed_dataset_equals_encoder_and_survives_a_killed_worker(ray_local, tiny_bert):
    import embtool

    texts = SENTENCES + corpus_lines("fr", 300, 2000)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = embtool.embed_dataset(ds, tiny_bert, batch_size=32, concurrency=2, threads=1).take_all()
    assert ray_local.exists(), "the fault hook did not fire: no worker was killed"
    got = {int(r["id"]): np.asarray(r["embedding"]) for r in out}
    assert sorted(got) == list(range(len(texts)))  # every row once, none lost or doubled by the retry
    ref = embtool.Encoder(tiny_bert).embed(texts)
    V = np.stack([got[i] for i in range(len(texts))])
    assert V.dtype == np.float32 and V.shape == ref.shape
    np.testing.assert_allclose(V, ref, rtol=0, atol=2e-6)


def _readme_block(marker: str) -> str:
    """The documented Python example that contains `marker` (the shared reader: tests/helpers.py)."""
    from helpers import doc_block

    return doc_block("python", containing=marker)


def test_readme_ray_and_spark_examples_run(ray_local, tiny_bert):
    scope: dict = {"model": str(tiny_bert)}
    code = _readme_block("embtool.embed_dataset(").replace("ray.init()", "pass  # the fixture started Ray")
    exec(compile(code, "README.md", "exec"), scope)
    assert [r["id"] for r in sorted(scope["rows"], key=lambda r: r["id"])] == [0, 1]
    assert np.asarray(scope["rows"][0]["embedding"]).shape == (32,)

    import pandas as pd

    spark = _readme_block("def embed_partition").replace("/models/all-MiniLM-L6-v2", str(tiny_bert))
    exec(compile(spark, "README.md", "exec"), scope)
    frames = [pd.DataFrame({"id": [0, 1], "text": SENTENCES[:2]}), pd.DataFrame({"id": [2], "text": SENTENCES[2:3]})]
    out = pd.concat(list(scope["embed_partition"](iter(frames))))
    import embtool

    np.testing.assert_allclose(np.stack(out["embedding"].to_list()), embtool.Encoder(tiny_bert).embed(SENTENCES[:3]), atol=2e-6, rtol=0)


def test_embed_ray_shards_search_like_one_local_index(ray_local, tiny_bert, tmp_path):
    import json

    from conftest import run_cli

    texts = corpus_lines("en", 230, 3000)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--ray", "--workers", "2", "--shard-rows", "100",
                 "-o", tmp_path / "shards", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["texts"] == 230 and s["shards"] == 3
    shards = sorted(str(p) for p in (tmp_path / "shards").glob("part-*.safetensors"))
    assert len(shards) == 3
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "-o", tmp_path / "one.safetensors", "--quiet"]).exit_code == 0
    q = tmp_path / "q.txt"
    q.write_text("\n".join(t[: len(t) // 2] for t in texts[::23]) + "\n")
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--ray", "--workers", "1", "--shard-rows", "150",
                    "--format", "parquet", "-o", tmp_path / "pq", "--quiet"]).exit_code == 0
    hits = {}
    for name, idx in (("ray", shards), ("local", [tmp_path / "one.safetensors"]), ("folder", [tmp_path / "shards"]),
                      ("ray-search", [tmp_path / "shards", "--ray"]), ("parquet", [tmp_path / "pq"])):
        r = run_cli(["search", *idx, "-q", q, "-k", "10", "--json"])
        assert r.exit_code == 0, r.stderr
        hits[name] = [(h["query_no"], h["id"], h["score"]) for h in map(json.loads, r.stdout.splitlines())]
    assert len(hits["local"]) == 10 * len(texts[::23])
    for name in ("ray", "folder", "ray-search", "parquet"):
        _assert_same_hits(hits[name], hits["local"], name)


def _assert_same_hits(got, want, name, tol=1e-5):
    """The shards were embedded in other batches than the one local file, so a score may differ in its last float32
    bits (padding changes the summation order): rounding both to 5 places can still split 0.991465 into ...46 and
    ...47. Same queries, same ids at each rank, scores within tol; two ids may swap only where their scores tie."""
    assert len(got) == len(want), name
    for (qg, ig, sg), (qw, iw, sw) in zip(got, want):
        assert qg == qw and abs(sg - sw) <= tol, (name, qg, ig, sg, iw, sw)
        if ig != iw:
            tied = {i for q, i, s in want if q == qw and abs(s - sw) <= tol}
            assert ig in tied, (name, qg, ig, iw)


@pytest.fixture(scope="module")
def options_bert(tiny_bert, tmp_path_factory):
    from index_helpers import options_model

    return options_model(tiny_bert, tmp_path_factory.mktemp("options") / "model")


@pytest.mark.parametrize("writer, option", [("ray", o) for o in ("pooling-cls", "pooling-mean", "no-normalize", "prefix",
                                                                   "prompt-name", "max-length", "dim")]
                         + [("ray-parquet", "pooling-cls")])
def test_ray_shards_record_every_encoder_option(ray_local, options_bert, tmp_path, writer, option):
    """`embed --ray` parts record how their texts were embedded (they once recorded only the model), so `search
    FOLDER "a query"` embeds queries as the documents were (the plain, --shard and Parquet writers:
    tests/test_embed_search.py; the Parquet parts share the metadata path, one option shows it)."""
    from index_helpers import ENCODER_OPTIONS, TEXTS, assert_search_embeds_queries_like_the_documents, embed_with

    files = embed_with(writer, options_bert, ENCODER_OPTIONS[option], TEXTS, tmp_path / "shards")
    assert len(files) == 2
    assert_search_embeds_queries_like_the_documents(files, TEXTS)
