"""The graph builder and encoder against an independent numpy forward pass."""

from __future__ import annotations

import json
from pathlib import Path

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


# ----------------------------------------------------------------------------------------------
# a model that yields NaN or infinity: an error in every command, nothing written (issue 28 item 6)
# ----------------------------------------------------------------------------------------------

ARCH = Path(__file__).parent / "data" / "arch"


def _broken_qwen3(folder: Path, how: str) -> Path:
    """The Qwen3 fixture with float weights that no config check sees: "row" sets the token table's row of the
    first token of "zebra" to infinity (texts without it stay finite), "all" the final norm's weight to NaN (every
    Linear input stays finite), "early" layer 0's input norm to NaN (every Linear's input is NaN)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(ARCH / "qwen3", folder)
    w = load_file(folder / "model.safetensors")
    if how == "row":
        w["model.embed_tokens.weight"][open_model(folder).tokenizer.runtime().encode("zebra").ids[0]] = np.inf
    else:
        w["model.norm.weight" if how == "all" else "model.layers.0.input_layernorm.weight"][:] = np.nan
    save_file(w, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("nan")
    models = {how: _broken_qwen3(base / how, how) for how in ("row", "all", "early")}
    # a quantized and a factorized form, written unchecked (--no-eval), for the conversions' own checks
    for name, args in (("q8", ["quantize", "--bits", "8", "--method", "rtn"]), ("f", ["factorize", "--rank", "16"])):
        assert run_cli([args[0], models["all"], *args[1:], "-o", base / name, "--no-eval", "--quiet"]).exit_code == 0
        models[name] = base / name
    return models


def _one_error_line(r, folder: Path) -> None:
    assert r.exit_code == 1, (r.exit_code, r.stdout[:300], r.stderr[-500:])
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith(("note: ", "warning: "))]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {folder}: the model gives NaN or infinite values"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("out", ["-", "x.npy", "x.safetensors", "x.jsonl", "x.txt", "x.parquet"])
def test_embed_refuses_non_finite_embeddings(broken, tmp_path, out):
    """`hello` embeds finite, `zebra` reads the infinite row: exit 1, one line, no NaN on stdout, no file."""
    if out.endswith(".parquet"):
        pytest.importorskip("pyarrow", reason="the parquet extra is installed by `make test`")
    r = run_cli(["embed", broken["row"], "hello", "zebra", *([] if out == "-" else ["-o", tmp_path / out])])
    _one_error_line(r, broken["row"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert run_cli(["embed", broken["row"], "hello"]).exit_code == 0  # the finite text alone is fine


def test_search_refuses_non_finite_query_embeddings(broken, tmp_path):
    assert run_cli(["embed", ARCH / "qwen3", "hello", "a zebra", "-o", tmp_path / "i.safetensors", "--quiet"]).exit_code == 0
    _one_error_line(run_cli(["search", tmp_path / "i.safetensors", "zebra", "--model", broken["row"]]), broken["row"])


@pytest.mark.parametrize("command,model,args", [
    ("quantize", "all", ["--bits", "8", "--method", "rtn"]),
    ("quantize", "all", ["--bits", "4", "--method", "gptq"]),
    ("quantize", "all", ["--bits", "2,4,8", "--target-bits", "5"]),  # the probe's float reference is NaN
    ("quantize", "early", ["--bits", "4", "--method", "gptq"]),  # sequential GPTQ's statistics are NaN
    ("quantize", "early", ["--bits", "2,4,8", "--target-bits", "5"]),  # the planner's input statistics are NaN
    ("quantize", "all", ["--bits", "8", "--method", "rtn", "--min-cosine", "0.1"]),
    ("trim-vocab", "all", ["-c", ARCH / "qwen3" / "train.txt", "--min-cosine-min", "0.1"]),
    ("factorize", "all", ["--rank", "16"]),
    ("init-subwords", "all", ["--tokenizer", ARCH / "modernbert" / "tokenizer.json"]),
    ("export-onnx", "all", []),
    ("shrink", "all", ["-c", ARCH / "qwen3" / "train.txt", "--max-size", "1MB"]),
    ("dequantize", "q8", []),
    ("defactorize", "f", []),
])
def test_model_writing_commands_refuse_non_finite_embeddings(broken, tmp_path, command, model, args):
    """Each command's fidelity check (and the calibration before it) meets the NaN: exit 1 with one line, nothing
    written, no JSON summary (never `"passed": true` with null figures), with or without a gate; and before it, no
    computation on NaN (numpy's invalid-value warnings are errors here)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = run_cli([command, broken[model], *args, "-o", tmp_path / "out", "--json"])
    _one_error_line(r, broken[model])
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_graph_onnxruntime_cannot_load_is_one_error_line(tmp_path, tiny_bert):
    """Weights that contradict each other where no config check looks (an MLP whose two Linears disagree): the graph
    built from them fails onnxruntime's shape inference, which is one `Error:` line, not a traceback."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(tiny_bert, tmp_path / "m")
    w = load_file(tmp_path / "m" / "model.safetensors")
    w["encoder.layer.0.output.dense.weight"] = np.zeros((32, 48), np.float32)
    save_file(w, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    r = run_cli(["embed", tmp_path / "m", "hello"])
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("Error: onnxruntime cannot load the graph built from this model: ") and "MatMul" in r.stderr


def test_one_pass_gptq_statistics_refuse_nan(broken, tmp_path):
    """GPTQ from one pass of the float model (`gptq_sequential=False`, the requests' own option): NaN input statistics
    are refused before any weight is quantized against them."""
    import warnings

    from embtool.core.errors import CorruptFile
    from embtool.jobs.quantize import QuantRequest, run_quantize

    with warnings.catch_warnings(), pytest.raises(CorruptFile, match="NaN or infinite values .* calibration statistics"):
        warnings.simplefilter("error", RuntimeWarning)
        run_quantize(QuantRequest(str(broken["early"]), str(tmp_path / "out"), bits=[4], method="gptq", gptq_sequential=False))
    assert not (tmp_path / "out").exists()
