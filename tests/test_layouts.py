"""Model folders users bring (issue 16 item 3): ONNX files without a tokenizer beside them, several
ONNX files in `onnx/`, safetensors of an architecture embtool cannot build next to an ONNX export,
and Git LFS pointers checked out in place of the real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli


def _embed(*args) -> np.ndarray:
    r = run_cli(["embed", *args, "--quiet"])
    assert r.exit_code == 0, r.stderr
    return np.array([json.loads(line)["embedding"] for line in r.stdout.splitlines()])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """The tiny BERT as an ONNX folder, and its 8-bit quantized ONNX."""
    base = tmp_path_factory.mktemp("layouts")
    assert run_cli(["export-onnx", tiny_bert, "-o", base / "onnx", "--quiet"]).exit_code == 0
    assert run_cli(["quantize", base / "onnx", "--bits", "8", "-o", base / "q8", "--quiet"]).exit_code == 0
    return {"onnx": base / "onnx", "q8": base / "q8"}


TEXTS = ["hello world", "Le renard brun saute."]


def test_onnx_file_without_tokenizer_needs_tokenizer_option(tmp_path, exported):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(exported["onnx"] / "model.onnx", bare / "model.onnx")
    r = run_cli(["embed", bare / "model.onnx", "hi"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "pass --tokenizer PATH" in r.stderr
    want = _embed(exported["onnx"], *TEXTS, "--normalize")  # the bare file has no sentence-transformers config
    for tok in (exported["onnx"] / "tokenizer.json", exported["onnx"]):  # the file, or a folder holding it
        np.testing.assert_allclose(_embed(bare / "model.onnx", *TEXTS, "--tokenizer", tok, "--normalize"), want, atol=1e-6)
    # a model-writing command copies the tokenizer in, so that its output runs on its own
    (tmp_path / "short.txt").write_text("\n".join(TEXTS * 3) + "\n")  # the bare file does not say how many positions it has
    r = run_cli(["quantize", bare / "model.onnx", "--tokenizer", exported["onnx"], "--bits", "8", "-o", tmp_path / "q", "--quiet",
                 "--eval", tmp_path / "short.txt"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "q" / "tokenizer.json").is_file()
    assert _embed(tmp_path / "q", *TEXTS).shape == want.shape
    r = run_cli(["inspect", bare / "model.onnx", "--tokenizer", exported["onnx"]])
    assert r.exit_code == 0 and "WordPiece" in r.stdout


def test_several_onnx_files_model_onnx_by_default_or_onnx_file(tmp_path, exported):
    m = tmp_path / "m"
    (m / "onnx").mkdir(parents=True)
    for f in exported["onnx"].iterdir():
        if f.is_file() and f.suffix == ".json":
            shutil.copy(f, m / f.name)
    shutil.copy(exported["onnx"] / "model.onnx", m / "onnx" / "model.onnx")
    shutil.copy(exported["q8"] / "model.onnx", m / "onnx" / "model_quantized.onnx")
    r = run_cli(["embed", m, *TEXTS])
    assert r.exit_code == 0
    assert "note: using onnx/model.onnx (also in the folder: onnx/model_quantized.onnx; choose with --onnx-file NAME)" in r.stderr
    full, q8 = _embed(exported["onnx"], *TEXTS), _embed(exported["q8"], *TEXTS)
    np.testing.assert_allclose(_embed(m, *TEXTS), full, atol=1e-6)
    for name in ("model_quantized.onnx", "onnx/model_quantized.onnx"):
        np.testing.assert_allclose(_embed(m, *TEXTS, "--onnx-file", name), q8, atol=1e-6)
    assert not np.allclose(full, q8, atol=1e-6)
    r = run_cli(["embed", m, "x", "--onnx-file", "nope.onnx"])
    assert r.exit_code == 1 and "no ONNX file 'nope.onnx' (it has: onnx/model.onnx, onnx/model_quantized.onnx)" in r.stderr
    # an output never carries the other variants (they would be stale)
    r = run_cli(["quantize", m, "--bits", "8", "-o", tmp_path / "out"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / "onnx" / "model.onnx").is_file() and not (tmp_path / "out" / "onnx" / "model_quantized.onnx").exists()
    assert "not copied to the output" in r.stderr
    # no model.onnx and several others: the user chooses
    (m / "onnx" / "model.onnx").rename(m / "onnx" / "model_fp32.onnx")
    r = run_cli(["embed", m, "x"])
    assert r.exit_code == 1 and "choose one with --onnx-file NAME" in r.stderr and r.stderr.count("\n") == 1


def test_other_frameworks_weights_are_never_copied_to_an_output(tmp_path, tiny_bert):
    """A Hub cache snapshot often holds pytorch_model.bin, tf_model.h5, ... beside model.safetensors: an output
    carries none of them (they would be stale, and pickles are never handed on)."""
    m = tmp_path / "m"
    shutil.copytree(tiny_bert, m)
    others = ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot", "model.ckpt", "openvino/openvino_model.bin"]
    for rel in others:
        (m / rel).parent.mkdir(exist_ok=True)
        (m / rel).write_bytes(b"\x80\x04never loaded")
    r = run_cli(["quantize", m, "--bits", "8", "-o", tmp_path / "out", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    assert not [rel for rel in others if (tmp_path / "out" / rel).exists()] and not (tmp_path / "out" / "openvino").exists()
    assert "not copied to the output (other weights, they would be stale)" in r.stderr


def test_unsupported_safetensors_architecture_falls_back_to_onnx(tmp_path, tiny_bert, exported):
    m = tmp_path / "m"
    shutil.copytree(tiny_bert, m)
    cfg = json.loads((m / "config.json").read_text())
    cfg["model_type"] = "funnel"  # an architecture the graph builder does not know
    (m / "config.json").write_text(json.dumps(cfg))
    r = run_cli(["embed", m, "x"])
    assert r.exit_code == 1 and "not supported" in r.stderr
    (m / "onnx").mkdir()
    shutil.copy(exported["onnx"] / "model.onnx", m / "onnx" / "model.onnx")
    r = run_cli(["embed", m, *TEXTS])
    assert r.exit_code == 0, r.stderr
    assert "note: embtool cannot build architecture 'funnel' from safetensors; using onnx/model.onnx instead" in r.stderr
    np.testing.assert_allclose(_embed(m, *TEXTS), _embed(exported["onnx"], *TEXTS), atol=1e-6)
    r = run_cli(["inspect", m, "--json"])
    assert json.loads(r.stdout)["format"] == "onnx"


@pytest.mark.parametrize("victim", ["model.safetensors", "tokenizer.json", "onnx"])
def test_git_lfs_pointer_instead_of_the_file(tmp_path, tiny_bert, exported, victim):
    pointer = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 90868376\n")
    m = tmp_path / "m"
    shutil.copytree(exported["onnx"] if victim == "onnx" else tiny_bert, m)
    target = m / ("model.onnx" if victim == "onnx" else victim)
    target.write_text(pointer)
    for args in (["inspect", m], ["embed", m, "x"], ["quantize", m, "-o", tmp_path / "q"]):
        r = run_cli(args)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert f"{target}: this is a Git LFS pointer, not the " in r.stderr and "run git lfs pull" in r.stderr
    assert not (tmp_path / "q").exists()


def test_init_subwords_takes_the_source_tokenizer_of_a_bare_onnx_file(tmp_path, tiny_models, exported):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(exported["onnx"] / "model.onnx", bare / "model.onnx")
    (tmp_path / "short.txt").write_text("\n".join(TEXTS * 3) + "\n")
    new_tok = tiny_models["distilbert"] / "tokenizer.json"
    r = run_cli(["init-subwords", bare / "model.onnx", "--tokenizer", new_tok, "-o", tmp_path / "o1", "--no-eval"])
    assert r.exit_code == 1 and "pass --tokenizer PATH" in r.stderr
    r = run_cli(["init-subwords", bare / "model.onnx", "--source-tokenizer", exported["onnx"], "--tokenizer", new_tok,
                 "-o", tmp_path / "o", "--eval", tmp_path / "short.txt", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["eval"]["cosine_mean"] > 0.5
    assert json.loads((tmp_path / "o" / "tokenizer.json").read_text()) == json.loads(new_tok.read_text())


def test_search_embeds_queries_with_the_tokenizer_the_index_was_made_with(tmp_path, exported):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(exported["onnx"] / "model.onnx", bare / "model.onnx")
    (tmp_path / "docs.txt").write_text("\n".join(TEXTS) + "\n")
    r = run_cli(["embed", bare / "model.onnx", "--tokenizer", exported["onnx"], "-i", tmp_path / "docs.txt",
                 "-o", tmp_path / "ix.safetensors", "--quiet"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["search", tmp_path / "ix.safetensors", TEXTS[1], "-k", "1"])  # the index records the tokenizer
    assert r.exit_code == 0 and r.stdout.split("\t")[4].strip() == TEXTS[1], r.stderr
    r = run_cli(["search", tmp_path / "ix.safetensors", "x", "--model", bare / "model.onnx"])
    assert r.exit_code == 1 and "pass --tokenizer PATH" in r.stderr
    r = run_cli(["search", tmp_path / "ix.safetensors", TEXTS[0], "-k", "1", "--model", bare / "model.onnx",
                 "--tokenizer", exported["onnx"] / "tokenizer.json"])
    assert r.exit_code == 0 and r.stdout.split("\t")[4].strip() == TEXTS[0], r.stderr
