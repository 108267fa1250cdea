"""factorize: equals the truncated SVD, lossless at full rank, ONNX form, chained pipelines, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SENTENCES, corpus_lines, run_cli
from embtool.algorithms import factorize as FA
from embtool.core.model import open_model
from embtool.core.safetensors_io import SafetensorsFile
from embtool.runtime.encoder import Encoder


@pytest.mark.parametrize("k", [1, 3, 8, 16])
def test_equals_truncated_svd(k):
    rng = np.random.default_rng(0)
    E = (rng.standard_normal((500, 16)) @ np.diag(np.linspace(3, 0.1, 16))).astype(np.float32)
    spec = FA.spectrum(E)
    F, P = FA.factors(E, spec, k)
    U, S, Vt = np.linalg.svd(E.astype(np.float64), full_matrices=False)
    best = (U[:, :k] * S[:k]) @ Vt[:k]
    np.testing.assert_allclose(F @ P, best, atol=1e-4)
    assert spec.rel_error(k) == pytest.approx(np.linalg.norm(E - best) / np.linalg.norm(E), rel=1e-4, abs=1e-6)
    assert spec.rank_for_energy(spec.energy(k)) == k


def _emb(folder, texts=SENTENCES):
    return Encoder(open_model(folder)).embed(texts)


def test_full_rank_is_lossless_and_onnx_matches(tmp_path, tiny_model):
    D = 32
    r = run_cli(["factorize", tiny_model, "--rank", str(D), "-o", tmp_path / "full", "--json"])
    assert r.exit_code == 0, r.stderr
    assert "saves nothing" in json.loads(r.stdout)["notes"][0]
    assert np.min(np.sum(_emb(tiny_model) * _emb(tmp_path / "full"), 1)) >= 0.99999
    r = run_cli(["factorize", tiny_model, "--rank", "8", "-o", tmp_path / "f8", "--quiet"])
    assert r.exit_code == 0, r.stderr
    f = SafetensorsFile(tmp_path / "f8" / "model.safetensors")
    assert f.tensors["embeddings.word_embeddings.factor_F"].shape[1] == 8
    assert f.tensors["embeddings.word_embeddings.factor_P"].shape == (8, D)
    assert json.loads((tmp_path / "f8" / "config.json").read_text())["embtool_factorization"]["rank"] == 8
    assert json.loads(run_cli(["inspect", tmp_path / "f8", "--json"]).stdout)["state"]["factorized"]["rank"] == 8
    # ONNX output from safetensors, and from an ONNX input, equal embtool's run of the safetensors form
    assert run_cli(["factorize", tiny_model, "--rank", "8", "--format", "onnx", "-o", tmp_path / "f8o", "--quiet"]).exit_code == 0
    assert run_cli(["export-onnx", tiny_model, "-o", tmp_path / "onnx", "--quiet"]).exit_code == 0
    assert run_cli(["factorize", tmp_path / "onnx", "--rank", "8", "-o", tmp_path / "f8oo", "--quiet"]).exit_code == 0
    ref = _emb(tmp_path / "f8")
    for other in ("f8o", "f8oo"):
        assert np.min(np.sum(ref * _emb(tmp_path / other), 1)) >= 0.99999, other
    # defactorize restores a plain E = F·P with the same embeddings
    assert run_cli(["defactorize", tmp_path / "f8", "-o", tmp_path / "dense", "--quiet"]).exit_code == 0
    assert "embeddings.word_embeddings.weight" in SafetensorsFile(tmp_path / "dense" / "model.safetensors").tensors
    assert np.min(np.sum(ref * _emb(tmp_path / "dense"), 1)) >= 0.99999


def test_chained_pipelines(tmp_path, tiny_bert):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES + corpus_lines("en", 50)) + "\n")
    texts = SENTENCES
    # factorize -> trim-vocab: F is trimmed; the trimmed model embeds the corpus like the factorized one
    assert run_cli(["factorize", tiny_bert, "--rank", "16", "-o", tmp_path / "f", "--quiet"]).exit_code == 0
    r = run_cli(["trim-vocab", tmp_path / "f", "-c", corpus, "-o", tmp_path / "ft", "--json"])
    assert r.exit_code == 0, r.stderr
    F = SafetensorsFile(tmp_path / "ft" / "model.safetensors").tensors["embeddings.word_embeddings.factor_F"]
    assert F.shape == (json.loads(r.stdout)["vocab_after"], 16)
    assert np.min(np.sum(_emb(tmp_path / "f", texts) * _emb(tmp_path / "ft", texts), 1)) >= 0.99999
    # trim-vocab -> factorize -> quantize: F quantized (P float); embeds as predicted by the dequantized model
    assert run_cli(["trim-vocab", tiny_bert, "-c", corpus, "-o", tmp_path / "t", "--quiet"]).exit_code == 0
    assert run_cli(["factorize", tmp_path / "t", "--rank", "16", "-o", tmp_path / "tf", "--quiet"]).exit_code == 0
    r = run_cli(["quantize", tmp_path / "tf", "--bits", "8", "--group-size", "16", "-o", tmp_path / "tfq", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert "embeddings.word_embeddings.factor_F.qweight" in SafetensorsFile(tmp_path / "tfq" / "model.safetensors").tensors
    assert run_cli(["dequantize", tmp_path / "tfq", "-o", tmp_path / "tfqd", "--quiet"]).exit_code == 0
    assert np.min(np.sum(_emb(tmp_path / "tfq", texts) * _emb(tmp_path / "tfqd", texts), 1)) >= 0.99999
    assert np.min(np.sum(_emb(tmp_path / "tf", texts) * _emb(tmp_path / "tfq", texts), 1)) >= 0.99


@pytest.mark.parametrize("args, message", [
    (["--rank", "33"], "saves nothing"),
    (["--rank", "0"], "at least 1"),
    (["--energy", "1.5"], "1.5"),
    ([], "exactly one of"),
    (["--rank", "4", "--energy", "0.9"], "exactly one of"),
])
def test_factorize_bad_input(tmp_path, tiny_bert, args, message):
    r = run_cli(["factorize", tiny_bert, *args, "-o", tmp_path / "out"])
    assert r.exit_code in (1, 2) and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_factorize_needs_an_embedding_table(tmp_path, tiny_bert):
    assert run_cli(["factorize", tiny_bert, "--rank", "8", "-o", tmp_path / "f", "--quiet"]).exit_code == 0
    r = run_cli(["factorize", tmp_path / "f", "--rank", "4", "-o", tmp_path / "ff"])
    assert r.exit_code == 1 and "already" in r.stderr
