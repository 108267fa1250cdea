"""Parquet output of embed: the layout the engines read (id, text, fixed-size-list embedding, embtool metadata)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SENTENCES, run_cli

pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is installed by `make test`")


def test_embed_parquet_equals_the_index(tiny_bert, tmp_path):
    from embtool.core.formats.index import ParquetIndex, SafetensorsIndex

    texts = SENTENCES + ["", "ünïcödé ✓ 漢字"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for out in ("t.parquet", "t.safetensors"):
        r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "-o", tmp_path / out, "--quiet"])
        assert r.exit_code == 0, r.stderr
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.schema.names == ["id", "text", "embedding"]
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[32]"
    assert table.column("id").to_pylist() == list(range(len(texts)))
    assert table.column("text").to_pylist() == texts
    meta = json.loads(table.schema.metadata[b"embtool"])
    assert meta["embtool_index"] == "1" and meta["pooling"] == "mean"
    ix, pix = SafetensorsIndex(tmp_path / "t.safetensors"), ParquetIndex(tmp_path / "t.parquet")
    np.testing.assert_array_equal(pix.block(0, len(pix)), np.asarray(ix.block(0, len(ix))))
    assert [pix.text(i) for i in range(len(pix))] == texts


def test_parquet_refusals(tiny_bert, tmp_path):
    (tmp_path / "t.txt").write_text("a\nb\n")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "-o", tmp_path / "t.parquet", "--precision", "int8"])
    assert r.exit_code == 1 and r.stderr == "Error: --precision int8 is only stored in .npy or .safetensors outputs\n"
    (tmp_path / "notes.parquet").write_text("my notes, not embeddings\n")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "-o", tmp_path / "notes.parquet", "--force"])
    assert r.exit_code == 1 and (tmp_path / "notes.parquet").read_text() == "my notes, not embeddings\n"
    from embtool.core.errors import CorruptFile
    from embtool.core.formats.index import ParquetIndex

    with pytest.raises(CorruptFile):
        ParquetIndex(tmp_path / "notes.parquet")


def test_search_over_parquet_equals_safetensors(tiny_bert, tmp_path):
    import json

    from conftest import corpus_lines

    texts = corpus_lines("fr", 120, 4000)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    q = tmp_path / "q.txt"
    q.write_text("\n".join(t[: len(t) // 2] for t in texts[::10]) + "\n")
    hits = {}
    for ext in ("parquet", "safetensors"):
        assert run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "-o", tmp_path / f"t.{ext}", "--quiet"]).exit_code == 0
        r = run_cli(["search", tmp_path / f"t.{ext}", "-q", q, "-k", "5", "--json"])
        assert r.exit_code == 0, r.stderr
        hits[ext] = [(h["query_no"], h["id"], h["text"], round(h["score"], 5)) for h in map(json.loads, r.stdout.splitlines())]
    assert hits["parquet"] == hits["safetensors"] and len(hits["parquet"]) == 5 * len(texts[::10])
