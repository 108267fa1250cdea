"""The graph builder and encoder against an independent numpy forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest

import reference
from conftest import SENTENCES, run_cli
from embtool.core.model import open_model
from embtool.core.safetensors_io import SafetensorsFile
from embtool.runtime.encoder import EmbedSettings, Encoder


def _weights(folder):
    f = SafetensorsFile(folder / "model.safetensors")
    return {k: np.array(f.get(k)) for k in f.keys()}


def test_matches_numpy_reference(tiny_model):
    m = open_model(tiny_model)
    cfg = json.loads((tiny_model / "config.json").read_text())
    enc = Encoder(m, EmbedSettings(batch_size=4))
    got = enc.embed(SENTENCES)
    w = _weights(tiny_model)
    tok = m.tokenizer.runtime()
    for i, s in enumerate(SENTENCES):
        ids = tok.encode(s).ids
        ref = reference.sentence(w, cfg, ids)
        cos = float(got[i] @ ref / np.linalg.norm(got[i]) / np.linalg.norm(ref))
        assert cos >= 0.99999, (s, cos)


def test_batching_and_sorting_do_not_change_results(tiny_model):
    m = open_model(tiny_model)
    texts = SENTENCES * 7
    a = Encoder(m, EmbedSettings(batch_size=1, sort=False)).embed(texts)
    b = Encoder(m, EmbedSettings(batch_size=64, sort=True)).embed(texts)
    c = Encoder(m, EmbedSettings(batch_size=5, sort=True)).embed(texts)
    assert np.min(np.sum(a * b, 1)) >= 0.99999
    np.testing.assert_allclose(b, c, atol=1e-5)


def test_pooling_dim_prefix(tiny_bert):
    m = open_model(tiny_bert)
    full = Encoder(m, EmbedSettings(normalize=False)).embed(SENTENCES)
    d8 = Encoder(m, EmbedSettings(dim=8)).embed(SENTENCES)
    np.testing.assert_allclose(d8, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-5)
    cls = Encoder(m, EmbedSettings(pooling="cls", normalize=False)).embed(SENTENCES)
    assert not np.allclose(cls, full)
    pre = Encoder(m, EmbedSettings(prefix="query: ")).embed(SENTENCES[:2])
    plain = Encoder(m, EmbedSettings()).embed(["query: " + s for s in SENTENCES[:2]])
    np.testing.assert_allclose(pre, plain, atol=1e-6)


@pytest.mark.parametrize("portable", [False, True])
def test_export_onnx_equals_in_memory(tmp_path, tiny_model, portable):
    import onnx

    out = tmp_path / "onnx"
    r = run_cli(["export-onnx", tiny_model, "-o", out, "--json"] + (["--portable"] if portable else []))
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["file"] == "model.onnx"
    a = Encoder(open_model(tiny_model)).embed(SENTENCES)
    b = Encoder(open_model(out)).embed(SENTENCES)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert json.loads((out / "embtool.json").read_text())["command"] == "export-onnx"
    domains = {n.domain for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert domains == ({""} if portable else {"", "com.microsoft"})


def test_truncation_counted(tiny_bert):
    m = open_model(tiny_bert)
    enc = Encoder(m, EmbedSettings(max_length=8))
    v = enc.embed(["a " * 50, "short"])
    assert v.shape[0] == 2 and enc.stats.truncated == 1


def test_unsupported_architecture(tmp_path, tiny_bert):
    import shutil

    d = tmp_path / "gpt"
    shutil.copytree(tiny_bert, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    r = run_cli(["embed", d, "hello"])
    assert r.exit_code == 1 and "not supported" in r.stderr and "bert" in r.stderr


def test_large_float_linears_are_fed_zero_copy_and_embed_the_same(tiny_model, monkeypatch):
    """Above FEED_LINEARS_ABOVE the float Linear weights are session inputs fed from numpy (no protobuf and
    serialized copies while the session is made); the embeddings equal those of the constant graph."""
    from embtool.runtime import encoder as E

    m = open_model(tiny_model)
    assert E.fed_linears(m) == frozenset()  # a tiny model keeps its weights as prepacked constants
    const = Encoder(m)
    assert not any(i.name.endswith(".weight_T") for i in const.sess.get_inputs())
    monkeypatch.setattr(E, "FEED_LINEARS_ABOVE", 0)
    fed = E.fed_linears(m)
    assert fed and all(k.endswith(".weight") and "embeddings" not in k for k in fed)  # not the vocabulary/position tables
    enc = Encoder(open_model(tiny_model))
    inputs = {i.name for i in enc.sess.get_inputs()}
    assert {k[: -len(".weight")] + ".weight_T" for k in fed if "embeddings" not in k} <= inputs
    np.testing.assert_allclose(enc.embed(SENTENCES), const.embed(SENTENCES), atol=2e-6)
