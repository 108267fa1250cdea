"""The I/O core: safetensors validation, layouts, refusals, atomic outputs, text input."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from embtool.core.errors import CorruptFile, InputError, ModelNotFound, OutputExists, UnsafeModel
from embtool.core.model import find_vocab_tensors, open_model
from embtool.core.safetensors_io import SafetensorsFile, write_safetensors
from embtool.core.texts import iter_file, iter_texts
from embtool.core.writer import OutputFile, OutputFolder


def _raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["float32", "float16", "int8", "uint8", "int64"]),
                          st.lists(st.integers(0, 5), min_size=0, max_size=3)), min_size=1, max_size=5))
def test_safetensors_roundtrip(tmp_path_factory, specs):
    d = tmp_path_factory.mktemp("st")
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": (rng.standard_normal(shape) * 10).astype(dt) for i, (dt, shape) in enumerate(specs)}
    write_safetensors(d / "a.safetensors", tensors, {"k": "v"})
    f = SafetensorsFile(d / "a.safetensors")
    assert f.metadata == {"k": "v"}
    for k, v in tensors.items():
        np.testing.assert_array_equal(f.get(k), v)
    # the official reader agrees with the file we wrote
    from safetensors.numpy import load_file

    for k, v in load_file(str(d / "a.safetensors")).items():
        np.testing.assert_array_equal(v, tensors[k])


@pytest.mark.parametrize("case", ["truncated", "header_too_long", "not_json", "offsets_past_end", "overlap",
                                  "bad_dtype", "shape_mismatch", "negative_shape", "tiny"])
def test_safetensors_lies_are_refused(tmp_path, case):
    p = tmp_path / "m.safetensors"
    good = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    if case == "truncated":
        write_safetensors(p, {"a": np.ones((100, 100), np.float32)})
        p.write_bytes(p.read_bytes()[:20000])
    elif case == "header_too_long":
        p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    elif case == "not_json":
        p.write_bytes(struct.pack("<Q", 5) + b"nope!")
    elif case == "offsets_past_end":
        _raw_safetensors(p, {"a": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}, b"\0" * 16)
    elif case == "overlap":
        _raw_safetensors(p, {**good, "b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}, b"\0" * 24)
    elif case == "bad_dtype":
        _raw_safetensors(p, {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16)
    elif case == "shape_mismatch":
        _raw_safetensors(p, {"a": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}}, b"\0" * 16)
    elif case == "negative_shape":
        _raw_safetensors(p, {"a": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, b"\0" * 16)
    elif case == "tiny":
        p.write_bytes(b"abc")
    with pytest.raises(CorruptFile):
        SafetensorsFile(p)


def test_open_model_errors(tmp_path, tiny_bert):
    with pytest.raises(ModelNotFound, match="no such file"):
        open_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="looked for model.safetensors"):
        open_model(tmp_path / "empty")
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeModel, match="arbitrary code"):
        open_model(tmp_path / "pickle")
    with pytest.raises(UnsafeModel):
        open_model(tmp_path / "pickle" / "pytorch_model.bin")
    bad_tok = tmp_path / "badtok"
    shutil.copytree(tiny_bert, bad_tok)
    (bad_tok / "tokenizer.json").write_text("{ this is not json")
    with pytest.raises(CorruptFile, match="tokenizer.json"):
        open_model(bad_tok)


def test_vocab_tensors_and_shards(tmp_path, tiny_bert):
    m = open_model(tiny_bert)
    vt = find_vocab_tensors(m)
    assert vt[0].name == "embeddings.word_embeddings.weight" and vt[0].shape[0] == m.tokenizer.vocab_size()
    # add an untied LM head and a bias: both are found on the vocabulary axis
    d = tmp_path / "withhead"
    shutil.copytree(tiny_bert, d)
    f = SafetensorsFile(d / "model.safetensors")
    t = {k: np.array(f.get(k)) for k in f.keys()}
    V, H = t["embeddings.word_embeddings.weight"].shape
    t["cls.predictions.decoder.weight"] = np.zeros((V, H), np.float32)
    t["cls.predictions.bias"] = np.zeros(V, np.float32)
    f.close()
    # sharded: two files + index
    (d / "model.safetensors").unlink()
    keys = sorted(t)
    half = len(keys) // 2
    write_safetensors(d / "model-00001-of-00002.safetensors", {k: t[k] for k in keys[:half]})
    write_safetensors(d / "model-00002-of-00002.safetensors", {k: t[k] for k in keys[half:]})
    wm = {k: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors") for i, k in enumerate(keys)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    m2 = open_model(d)
    roles = {v.name: v.role for v in find_vocab_tensors(m2)}
    assert roles == {"embeddings.word_embeddings.weight": "input embedding", "cls.predictions.decoder.weight": "LM head",
                     "cls.predictions.bias": "output bias"}
    assert len(m2.weights.files) == 2


def test_onnx_external_data_escape_refused(tmp_path, tiny_bert):
    import onnx
    from onnx import TensorProto, helper

    t = TensorProto()
    t.name, t.data_type = "E", TensorProto.FLOAT
    t.dims.extend([4, 4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "64")):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Gather", ["E", "input_ids"], ["y"])], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4])], [t])
    d = tmp_path / "evil"
    d.mkdir()
    onnx.save(helper.make_model(g), str(d / "model.onnx"))
    with pytest.raises(UnsafeModel, match="outside the model folder"):
        open_model(d)
    # a symlink that points outside is refused too
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    (d / "data.bin").symlink_to(tmp_path / "outside.bin")
    g.initializer[0].external_data[0].value = "data.bin"
    onnx.save(helper.make_model(g), str(d / "model.onnx"))
    with pytest.raises(UnsafeModel, match="link"):
        open_model(d)


def test_output_folder_atomic(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputFolder(target) as out:
            out.write_text("a.txt", "half")
            raise RuntimeError("boom")
    assert not target.exists() and not list(tmp_path.iterdir())
    with OutputFolder(target) as out:
        out.write_text("a.txt", "one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(OutputExists):
        OutputFolder(target)
    with OutputFolder(target, force=True) as out:
        out.write_text("a.txt", "two")
    assert (target / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(InputError, match="inside the input"):
        OutputFolder(target / "sub", inputs=[target])
    f = tmp_path / "x.npy"
    with OutputFile(f) as tmp:
        tmp.write_bytes(b"data")
    assert f.read_bytes() == b"data"
    with pytest.raises(OutputExists):
        OutputFile(f)


def test_texts(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"one\r\ntwo\n\xff\xfe bad\n")
    it = iter_file(str(p))
    assert next(it) == "one" and next(it) == "two"
    with pytest.raises(InputError, match=r"t.txt:3: invalid UTF-8"):
        next(it)
    j = tmp_path / "t.jsonl"
    j.write_text('{"text": "a"}\n\n{"body": "b", "text": "c"}\n')
    assert list(iter_texts(["arg"], [str(j)])) == ["arg", "a", "c"]
    with pytest.raises(InputError, match="no field 'body'"):
        list(iter_file(str(j), field="body"))


@pytest.mark.parametrize("make_bad, message", [
    (lambda d: shutil.rmtree(d), "no such file"),
    (lambda d: (d / "model.safetensors").unlink(), "no model weights"),
    (lambda d: ((d / "model.safetensors").unlink(), (d / "pytorch_model.bin").write_bytes(b"x")), "pickle"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:3000]), "truncated"),
    (lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}"), "header claims"),
    (lambda d: (d / "tokenizer.json").write_text("not json"), "tokenizer.json"),
])
def test_cli_one_clear_line(tmp_path, tiny_bert, make_bad, message):
    d = tmp_path / "m"
    shutil.copytree(tiny_bert, d)
    make_bad(d)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_cli(["inspect", d])
    assert r.exit_code == 1
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = run_cli(["export-onnx", d, "-o", tmp_path / "out"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_cli_output_exists(tmp_path, tiny_bert):
    (tmp_path / "out").mkdir()
    r = run_cli(["export-onnx", tiny_bert, "-o", tmp_path / "out"])
    assert r.exit_code == 1 and "already exists (use --force" in r.stderr
    r = run_cli(["export-onnx", tiny_bert, "-o", tmp_path / "out", "--force", "--quiet"])
    assert r.exit_code == 0 and (tmp_path / "out" / "model.onnx").is_file()
