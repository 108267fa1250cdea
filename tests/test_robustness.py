"""Hostile inputs, interrupted runs, full disks, concurrent writers (issue: hardening)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SENTENCES, corpus_lines, run_cli
from embtool.core.errors import EmbtoolError
from embtool.core.model import open_model
from embtool.core.safetensors_io import SafetensorsFile

FUZZ = int(os.environ.get("EMBTOOL_FUZZ_EXAMPLES", "60"))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "embtool", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


# ---------------------------------------------------------------------------------------------- fuzzing
@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.integers(-5, 2**40), st.text(max_size=5),
    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I8", "U8", "BF16", "X9", ""]),
                           "shape": st.lists(st.integers(-2, 2**33), max_size=3),
                           "data_offsets": st.lists(st.integers(-5, 2**34), min_size=0, max_size=3)})), max_size=4),
    data=st.binary(max_size=64), claimed=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_fuzz_safetensors_header(tmp_path_factory, header, data, claimed):
    raw = json.dumps(header).encode()
    n = len(raw) if claimed is None else claimed
    p = tmp_path_factory.mktemp("fz") / "m.safetensors"
    p.write_bytes(struct.pack("<Q", n) + raw + data)
    try:
        f = SafetensorsFile(p)
        for k in f.keys():
            f.get(k)  # whatever is accepted must be readable within the file
    except EmbtoolError:
        pass


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=st.sampled_from(["drop_model", "vocab_list", "dup_ids", "neg_id", "merge_unknown", "bad_type", "added_bad",
                                 "unk_missing", "truncate"]), cut=st.integers(1, 400))
def test_fuzz_tokenizer_json(tmp_path_factory, tiny_models, mutation, cut):
    src = tiny_models["distilbert"] if mutation == "merge_unknown" else tiny_models["bert"]
    d = tmp_path_factory.mktemp("tok")
    shutil.copytree(src, d / "m")
    tj = d / "m" / "tokenizer.json"
    doc = json.loads(tj.read_text())
    m = doc["model"]
    if mutation == "drop_model":
        del doc["model"]
    elif mutation == "vocab_list":
        m["vocab"] = list(m["vocab"])
    elif mutation == "dup_ids":
        k = list(m["vocab"])
        m["vocab"][k[5]] = m["vocab"][k[6]]
    elif mutation == "neg_id":
        m["vocab"][next(iter(m["vocab"]))] = -3
    elif mutation == "merge_unknown":
        m["merges"] = [["zzqq", "qqzz"]] + list(m["merges"])
    elif mutation == "bad_type":
        m["type"] = "Fancy"
    elif mutation == "added_bad":
        doc["added_tokens"] = [{"id": "x", "content": 5}]
    elif mutation == "unk_missing":
        m["unk_token"] = "[NOPE]"
        del m["vocab"]["[UNK]"]
    text = json.dumps(doc)
    if mutation == "truncate":
        text = text[: cut * 10]
    tj.write_text(text)
    r = run_cli(["trim-vocab", d / "m", "-c", "/dev/null", "-o", d / "out"])
    assert r.exit_code in (1, 2), r.stdout
    assert "Traceback" not in r.stderr and r.stderr.startswith(("Error:", "Usage:"))
    assert not (d / "out").exists()


@pytest.mark.parametrize("case", ["negative", "huge", "string", "heads"])
def test_hostile_config(tmp_path, tiny_bert, case):
    shutil.copytree(tiny_bert, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update({"negative": {"hidden_size": -384}, "huge": {"num_hidden_layers": 10**15}, "string": {"vocab_size": "lots"},
                "heads": {"num_attention_heads": 5}}[case])
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    r = run_cli(["embed", tmp_path / "m", "hello"])
    assert r.exit_code == 1 and r.stderr.startswith("Error:") and r.stderr.count("\n") == 1


def test_hostile_onnx(tmp_path, tiny_bert):
    import onnx
    from onnx import TensorProto, helper

    assert run_cli(["export-onnx", tiny_bert, "-o", tmp_path / "o", "--quiet"]).exit_code == 0
    data = (tmp_path / "o" / "model.onnx").read_bytes()
    bad = tmp_path / "trunc"
    shutil.copytree(tmp_path / "o", bad)
    (bad / "model.onnx").write_bytes(data[: len(data) // 3])
    for args in (["inspect", bad], ["embed", bad, "x"]):
        r = run_cli(args)
        assert r.exit_code == 1 and r.stderr.startswith("Error:") and "Traceback" not in r.stderr
    # a cycle, and a tensor that claims 10^12 elements: refused without allocating
    cyc = tmp_path / "cyc"
    shutil.copytree(tmp_path / "o", cyc)
    big = TensorProto(name="E", data_type=TensorProto.FLOAT, dims=[10**6, 10**6])
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Add", ["c", "c"], ["b"]),
                           helper.make_node("Gather", ["E", "input_ids"], ["last_hidden_state"])], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                           helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 4])], [big])
    onnx.save(helper.make_model(g), str(cyc / "model.onnx"))
    for args in (["embed", cyc, "x"], ["trim-vocab", cyc, "-c", "/dev/null", "-o", tmp_path / "out"]):
        r = run_cli(args)
        assert r.exit_code == 1 and r.stderr.startswith("Error:") and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_pickle_is_never_opened(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    r = run_cli(["inspect", d])
    assert r.exit_code == 1 and "pickle" in r.stderr and not marker.exists()


# ---------------------------------------------------------------------------------------------- interruptions
def _commands(tmp_path: Path, model: Path) -> dict[str, list]:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(corpus_lines("en", 3000)) + "\n")
    return {"trim-vocab": ["trim-vocab", model, "-c", corpus],
            "quantize": ["quantize", model, "--bits", "2,4,8", "--target-bits", "4", "--group-size", "16", "--probes", "8"],
            "embed": ["embed", model, "-i", corpus, "--batch-size", "4"]}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["trim-vocab", "quantize", "embed"])
def test_sigkill_leaves_input_intact_and_output_absent_or_complete(tmp_path, tiny_bert, command):
    """SIGKILL at points spread over a run's own measured duration, from early in start-up to after the
    final rename: every kill leaves the output absent or complete, and both outcomes are reached."""
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    before = _digest(model)
    suffix = ".safetensors" if command == "embed" else ""
    t0 = time.perf_counter()
    p = _cli(*_commands(tmp_path, model)[command], "-o", tmp_path / f"timing{suffix}", "--quiet")
    assert p.wait() == 0, p.stderr.read()
    duration = time.perf_counter() - t0
    outcomes = []
    for trial, share in enumerate((0.15, 0.5, 0.8, 0.95, 1.6)):
        out = tmp_path / f"out{trial}{suffix}"
        p = _cli(*_commands(tmp_path, model)[command], "-o", out, "--quiet")
        time.sleep(share * duration)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():
            if command == "embed":
                from embtool.core.formats.index import open_index

                assert len(open_index(out)) == 3000
            else:
                m = open_model(out)
                assert m.weights is not None and (out / "embtool.json").is_file()
            outcomes.append("complete")
        else:
            outcomes.append("absent")
        assert _digest(model) == before
    assert "complete" in outcomes and "absent" in outcomes, (duration, outcomes)
    # the next run cleans stale temporary folders of killed runs
    final = tmp_path / f"final{suffix}"
    p = _cli(*_commands(tmp_path, model)[command], "-o", final, "--quiet")
    assert p.wait() == 0, p.stderr.read()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".embtool-tmp-")]


@pytest.mark.slow
def test_sigint_and_sigterm_exit_cleanly(tmp_path, tiny_bert):
    corpus = tmp_path / "long.txt"
    corpus.write_text("\n".join(corpus_lines("en", 2000) * 10) + "\n")
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / f"out{code}.npy"
        p = _cli("embed", tiny_bert, "-i", corpus, "--batch-size", "1", "-o", out)
        time.sleep(1.5)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        assert p.returncode == code, err
        assert b"nothing was written" in err and b"Traceback" not in err
        assert not out.exists() and not list(tmp_path.glob(f".embtool-tmp-out{code}*"))


def test_two_writers_one_wins(tmp_path, tiny_bert):
    out = tmp_path / "out"
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES * 50) + "\n")
    procs = [_cli("trim-vocab", tiny_bert, "-c", corpus, "-o", out, "--quiet") for _ in range(2)]
    results = [(p.wait(), p.stderr.read().decode()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    loser = next(err for c, err in results if c == 1)
    assert loser.startswith("Error:") and ("exists" in loser or "another process" in loser)
    assert open_model(out).tokenizer is not None and (out / "embtool.json").is_file()


def test_disk_full_leaves_nothing(tmp_path, tiny_bert):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip()}); the disk-full path is covered only where the platform allows it")
    try:
        before = _digest(tiny_bert)
        res = run_cli(["export-onnx", tiny_bert, "-o", mnt / "out"])
        assert res.exit_code == 1 and "No space left" in res.stderr and res.stderr.count("\n") == 1
        assert not (mnt / "out").exists() and not list(mnt.iterdir())
        assert _digest(tiny_bert) == before
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_input(tmp_path, tiny_bert):
    """Counting and embedding stream: 10x more text costs (almost) no more memory."""
    def peak(n: int, cmd: str) -> float:
        f = tmp_path / f"c{n}.txt"
        lines = corpus_lines("en", 2000)
        with open(f, "w") as fh:
            for i in range(n):
                fh.write(lines[i % len(lines)] + "\n")
        out = tmp_path / f"{cmd}{n}"
        args = ["trim-vocab", tiny_bert, "-c", f, "-o", out] if cmd == "trim" else ["embed", tiny_bert, "-i", f, "-o", str(out) + ".npy",
                                                                                     "--max-length", "16", "--batch-size", "256"]
        r = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "embtool", *map(str, args), "--quiet"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return int(r.stderr.strip().splitlines()[-1]) / 1024

    for cmd, small, large in (("trim", 20_000, 200_000), ("embed", 4_000, 40_000)):
        a, b = peak(small, cmd), peak(large, cmd)
        assert b < a * 1.25 + 30, (cmd, a, b)


# ---------------------------------------------------------------------------------------------- issue 16: hostile files
def _deep_json(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_config_nested_200000_deep(tmp_path, tiny_bert, kind):
    shutil.copytree(tiny_bert, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(_deep_json(200_000, kind))
    for args in (["inspect", tmp_path / "m"], ["embed", tmp_path / "m", "hello"],
                 ["quantize", tmp_path / "m", "-o", tmp_path / "q"]):
        r = run_cli(args)
        assert r.exit_code == 1 and r.stderr.startswith("Error:") and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "nested too deeply" in r.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("change,expect", [
    ({"num_hidden_layers": 10**9}, "num_hidden_layers = 1,000,000,000 but the weights have 2 layers"),
    ({"hidden_size": 48, "num_attention_heads": 4}, "hidden_size = 48 but the token embeddings have 32 columns"),
    ({"num_attention_heads": 5}, "num_attention_heads = 5 does not divide hidden_size = 32"),
    ({"vocab_size": 1000}, "vocab_size = 1,000 but the token-embedding table has"),
])
def test_config_contradicting_weights_is_refused(tmp_path, tiny_bert, change, expect):
    shutil.copytree(tiny_bert, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    for args in (["inspect", tmp_path / "m"], ["quantize", tmp_path / "m", "-o", tmp_path / "q"],
                 ["embed", tmp_path / "m", "hello"]):
        r = run_cli(args)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "contradicts the weights" in r.stderr, (args, r.stderr)
        assert expect in r.stderr
    assert not (tmp_path / "q").exists()


@settings(max_examples=min(FUZZ, 15), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size", "intermediate_size"]),
       value=st.one_of(st.integers(0, 2**31), st.sampled_from([1, 2, 3, 4, 8, 16, 31, 32, 33, 64])))
def test_fuzz_config_against_weights(tmp_path_factory, tiny_bert, key, value):
    """Whatever config.json claims, opening the model and building its graph is either consistent
    or one named error: never a traceback, never a graph of the wrong shape."""
    from embtool.runtime.encoder import Encoder

    d = tmp_path_factory.mktemp("cfg") / "m"
    shutil.copytree(tiny_bert, d)
    cfg = json.loads((d / "config.json").read_text())
    original = cfg[key]
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        vec = Encoder(open_model(d, need_tokenizer=True)).embed(["hello world"])
    except EmbtoolError:
        return
    # sizes the weights pin down must agree with them (heads and the MLP width are not in the shapes)
    assert key not in ("num_hidden_layers", "hidden_size", "vocab_size") or value == original
    assert vec.shape == (1, 32) and np_isfinite(vec)


def np_isfinite(a) -> bool:
    import numpy as np

    return bool(np.isfinite(a).all())


def _panicking_tokenizer(src: Path, dst: Path) -> Path:
    """A copy of `src` whose pre-tokenizer regex backtracks catastrophically on runs of 'a' followed
    by another letter (the `tokenizers` Rust side panics: a BaseException, not an Exception)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "tokenizer.json").read_text())
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}, doc["pre_tokenizer"]]}
    (dst / "tokenizer.json").write_text(json.dumps(doc))
    return dst


EVIL = "a" * 40 + "b"


def test_tokenizer_panic_is_one_error_naming_the_line(tmp_path, tiny_bert):
    m = _panicking_tokenizer(tiny_bert, tmp_path / "m")
    texts = tmp_path / "in.txt"
    texts.write_text("hello world\nall fine here\n" + EVIL + "\nafter\n")
    r = run_cli(["embed", m, "-i", texts, "-o", tmp_path / "e.npy"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("Error: input text 3 ('aaaa") and "backtracks catastrophically" in r.stderr
    assert not (tmp_path / "e.npy").exists()
    r = run_cli(["trim-vocab", m, "-c", texts, "-o", tmp_path / "t"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: corpus line 3 ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "t").exists()
    # the same tokenizer on harmless text works
    assert run_cli(["embed", m, "hello world"]).exit_code == 0


def test_tokenizer_panic_in_a_real_process_prints_no_rust_backtrace(tmp_path, tiny_bert):
    m = _panicking_tokenizer(tiny_bert, tmp_path / "m")
    p = _cli("embed", m, "fine", EVIL, env={**os.environ, "RUST_BACKTRACE": "1"})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert err.decode().splitlines() == [err.decode().splitlines()[0]] and err.startswith(b"Error: input text 2 ")


# ---------------------------------------------------------------------------------------------- hostile index files
# (the index record's owner: embtool/core/formats/index.py). Each hostile file gives one `Error:` line and exit 1, or
# a search whose every hit is right: its row's text and id, the score of its stored vector, the brute-force top-k.

@pytest.fixture(scope="module")
def index_files(tiny_bert, tmp_path_factory):
    import numpy as np

    import embtool

    d = tmp_path_factory.mktemp("indexes")
    texts = corpus_lines("en", 40)
    (d / "t.txt").write_text("\n".join(texts) + "\n")
    for name, args in (("f32.safetensors", []), ("i8.safetensors", ["--precision", "int8", "--keep-float"]),
                       ("bin.safetensors", ["--precision", "binary", "--keep-int8"]), ("f32.parquet", []),
                       ("raw.safetensors", ["--no-normalize"])):
        r = run_cli(["embed", tiny_bert, "-i", d / "t.txt", "-o", d / name, *args, "--quiet"])
        assert r.exit_code == 0, r.stderr
    rng = np.random.default_rng(0)
    q = embtool.read_embeddings(d / "f32.safetensors")[[3, 17, 30]] + rng.normal(0, 0.05, (3, 32)).astype(np.float32)
    np.save(d / "q.npy", q)
    return d


def _hostile_search(path, q, k=5, metric="cosine", extra=()):
    """The CLI's search over `path`: None after one `Error:` line and exit 1 (warnings aside), else the JSON hits."""
    r = run_cli(["search", path, "--query-embeddings", q, "-k", k, "--metric", metric, "--json", *extra])
    if r.exit_code != 0:
        errors = [line for line in r.stderr.splitlines() if not line.startswith("warning: ")]
        assert r.exit_code == 1 and r.stdout == "" and len(errors) == 1 and errors[0].startswith("Error: "), r.stderr
        return None
    return [json.loads(line) for line in r.stdout.splitlines()]


def _check_hits_against(hits, vectors, texts, ids, q, k, metric):
    """Hits read independently of embtool: each hit's text, id and score are its row's, and the hits are the
    brute-force top-k by those scores (ties within float error either way)."""
    import numpy as np

    X = np.asarray(vectors, dtype=np.float64)
    Q = np.asarray(q, dtype=np.float64)
    if metric == "cosine":
        S = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).T
    elif metric == "dot":
        S = Q @ X.T
    else:
        S = -((Q[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    assert len(hits) == Q.shape[0] * min(k, len(X))
    for h in hits:
        r, s = h["row"], S[h["query_no"]]
        assert h["text"] == texts[r] and h["id"] == ids[r]
        tol = 1e-4 * max(1.0, float(np.abs(s).max()))
        got = h["score"] if metric != "l2" else -h["score"]
        assert abs(got - s[r]) <= tol, (h, s[r])
        assert got >= np.sort(s)[::-1][min(k, len(X)) - 1] - tol  # nothing better left out


def _st_parts(path):
    """(tensors, metadata) of a safetensors file, read with the safetensors package itself."""
    from safetensors.numpy import load_file

    return load_file(str(path)), dict(SafetensorsFile(path).metadata)


def _st_texts(t):
    o = t["text_offsets"]
    return [bytes(t["texts"][o[i]:o[i + 1]]).decode("utf-8", "replace") for i in range(len(o) - 1)]


_NAMED = {  # name -> (file, mutation of (tensors, metadata), what the error says)
    "dim abc": ("f32", lambda t, m: m.update(dim="abc"), "dim = 'abc' is not an integer"),
    "dim 0": ("f32", lambda t, m: m.update(dim="0"), "dim = '0' is not an integer >= 1"),
    "max_length lots": ("f32", lambda t, m: m.update(max_length="lots"), "max_length = 'lots'"),
    "normalize maybe": ("f32", lambda t, m: m.update(normalize="maybe"), "normalize = 'maybe'"),
    "newer format": ("f32", lambda t, m: m.update(embtool_index="2"), "a newer embtool"),
    "count off": ("f32", lambda t, m: m.update(count="41"), "says 41 rows"),
    "1-D embeddings": ("f32", lambda t, m: t.update(embeddings=t["embeddings"].reshape(-1)), "an index stores a matrix"),
    "3-D embeddings": ("f32", lambda t, m: t.update(embeddings=t["embeddings"].reshape(40, 4, 8)), "an index stores a matrix"),
    "float64 embeddings": ("f32", lambda t, m: t.update(embeddings=t["embeddings"].astype("float64")), "'embeddings' is F64"),
    "2-D ids": ("f32", lambda t, m: t.update(ids=t["ids"].reshape(40, 1)), "'ids' has shape [40, 1]"),
    "float ids": ("f32", lambda t, m: t.update(ids=t["ids"].astype("float32")), "'ids' is F32"),
    "float text_offsets": ("f32", lambda t, m: t.update(text_offsets=t["text_offsets"].astype("float64")), "'text_offsets' is F64"),
    "decreasing text_offsets": ("f32", lambda t, m: t["text_offsets"].__setitem__(5, t["text_offsets"][7]), "text_offsets decrease at row"),
    "text_offsets past the texts": ("f32", lambda t, m: t["text_offsets"].__setitem__(40, 10**9), "text_offsets run from 0 to"),
    "texts without offsets": ("f32", lambda t, m: t.pop("text_offsets"), "'texts' and 'text_offsets' go together"),
    "NaN in a row": ("f32", lambda t, m: t["embeddings"].__setitem__((17, 3), float("nan")), "row 17 scores nan"),
    "infinity in a row": ("f32", lambda t, m: t["embeddings"].__setitem__((3, 0), float("inf")), "row 3 scores"),
    "huge row": ("raw", lambda t, m: t["embeddings"].__setitem__(30, 1e30), "row 30 scores"),
    "unit claim broken": ("f32", lambda t, m: t["embeddings"].__setitem__(30, t["embeddings"][30] * 3), "row 30 has norm 3"),
    "2-D scales": ("i8", lambda t, m: t.update(scales=t["scales"].reshape(40, 1)), "'scales' has shape [40, 1]"),
    "NaN scale": ("i8", lambda t, m: t["scales"].__setitem__(4, float("nan")), "'scales' holds nan at 4"),
    "negative scale": ("i8", lambda t, m: t["scales"].__setitem__(4, -0.5), "'scales' holds -0.5 at 4"),
    "NaN int8 mean": ("i8", lambda t, m: t["int8_mean"].__setitem__(2, float("nan")), "'int8_mean' holds nan"),
    "int8 norms lie": ("i8", lambda t, m: (t.pop("embeddings_float"), t["int8_sqnorms"].__setitem__(17, t["int8_sqnorms"][17] / 4)),
                       "int8_sqnorms of row 17"),  # (without the float copy: rescoring would correct the scores)
    "NaN float copy": ("i8", lambda t, m: t["embeddings_float"].__setitem__((17, 0), float("nan")), "row 17 scores nan"),
    "int8 without scales": ("i8", lambda t, m: t.pop("scales"), "an int8 index without 'scales'"),
    "NaN binary mean": ("bin", lambda t, m: t["binary_mean"].__setitem__(0, float("nan")), "'binary_mean' holds nan"),
    "infinite rotation": ("bin", lambda t, m: t["binary_rotation"].__setitem__((1, 1), float("inf")), "'binary_rotation' holds inf"),
    "NaN rescoring scale": ("bin", lambda t, m: t["scales_int8"].__setitem__(9, float("nan")), "'scales_int8' holds nan"),
    "binary rows too short": ("bin", lambda t, m: m.update(dim="40"), "do not hold dim 40"),
}


@pytest.mark.parametrize("case", sorted(_NAMED))
def test_hostile_safetensors_index_is_one_error(index_files, tmp_path, case):
    """Each hostile safetensors index (issue 28 §9, §10) stops search with one `Error:` line naming what is wrong;
    the file stays as it was."""
    from embtool.core.safetensors_io import write_safetensors

    src, mutate, says = _NAMED[case]
    t, m = _st_parts(index_files / f"{src}.safetensors")
    mutate(t, m)
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, t, m)
    before = bad.read_bytes()
    r = run_cli(["search", bad, "--query-embeddings", index_files / "q.npy", "-k", "40", "--json"])
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert says in r.stderr and str(bad) in r.stderr, r.stderr
    assert bad.read_bytes() == before


def test_hostile_npy_index_is_one_error(index_files, tmp_path):
    import numpy as np

    for name, arr, says in (("strings", np.array([["a", "b"], ["c", "d"]]), "a .npy of <U1 is not a matrix of numbers"),
                            ("3-D", np.zeros((2, 2, 2), np.float32), "expected a 2-D matrix"),
                            ("NaN", np.full((3, 32), np.nan, np.float32), "row 0 scores nan")):
        np.save(tmp_path / f"{name}.npy", arr)
        r = run_cli(["search", tmp_path / f"{name}.npy", "--query-embeddings", index_files / "q.npy", "-k", "2"])
        assert r.exit_code == 1 and r.stderr.startswith("Error: ") and says in r.stderr, (name, r.stderr)
    r = run_cli(["search", index_files / "f32.safetensors", "--query-embeddings", tmp_path / "NaN.npy"])
    assert r.exit_code == 1 and "row 0 holds a value that is not a finite number" in r.stderr


_PQ = {  # name -> (mutation of the pyarrow table and its metadata dict, what the error says)
    "metadata a list": (lambda pa, t: t.replace_schema_metadata({b"embtool": b"[1, 2]"}), "not a JSON object"),
    "metadata not JSON": (lambda pa, t: t.replace_schema_metadata({b"embtool": b"{nope"}), "is not JSON"),
    "metadata numbers": (lambda pa, t: t.replace_schema_metadata({b"embtool": b'{"dim": 32}'}), "'dim' is int 32, not a string"),
    "nested lists": (lambda pa, t: t.set_column(2, "embedding", pa.array([[[x] for x in r] for r in t.column(2).to_pylist()])),
                     "expected a list of floats"),
    "string ids": (lambda pa, t: t.set_column(0, "id", pa.array([str(i) for i in range(t.num_rows)])), "'id' is string"),
    "int texts": (lambda pa, t: t.set_column(1, "text", pa.array(list(range(t.num_rows)))), "'text' is int64"),
    "null text": (lambda pa, t: t.set_column(1, "text", pa.array([None] + t.column(1).to_pylist()[1:])), "row 0 has no text"),
    "null id": (lambda pa, t: t.set_column(0, "id", pa.array([0, None] + list(range(2, t.num_rows)), pa.int64())), "row 1 has no id"),
    "rows of 31 and 33": (lambda pa, t: t.set_column(2, "embedding", pa.array(
        [r[:-1] if i == 4 else r + [0.5] if i == 5 else r for i, r in enumerate(t.column(2).to_pylist())], pa.list_(pa.float32()))),
        "row 4 has 31 values"),
    "null inside a vector": (lambda pa, t: t.set_column(2, "embedding", pa.array(
        [[None] + r[1:] if i == 6 else r for i, r in enumerate(t.column(2).to_pylist())], pa.list_(pa.float32()))),
        "row 6 has a null inside its vector"),
    "null vector": (lambda pa, t: t.set_column(2, "embedding", pa.array(
        [None if i == 2 else r for i, r in enumerate(t.column(2).to_pylist())], pa.list_(pa.float32()))), "row 2 has no vector"),
    "NaN in a vector": (lambda pa, t: t.set_column(2, "embedding", pa.array(
        [[float("nan")] + r[1:] if i == 8 else r for i, r in enumerate(t.column(2).to_pylist())], pa.list_(pa.float32()))),
        "row 8 holds a value that is not a finite number"),
    "no embedding column": (lambda pa, t: t.drop_columns(["embedding"]), "no 'embedding' column"),
}


@pytest.mark.parametrize("case", sorted(_PQ))
def test_hostile_parquet_index_is_one_error(index_files, tmp_path, case):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    mutate, says = _PQ[case]
    bad = tmp_path / "bad.parquet"
    pq.write_table(mutate(pa, pq.read_table(index_files / "f32.parquet")), bad)
    for fmt in ([], ["--json"]):  # the TSV output once failed where --json worked
        r = run_cli(["search", bad, "--query-embeddings", index_files / "q.npy", "-k", "3", *fmt])
        assert r.exit_code == 1 and r.stdout == "" and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
        assert says in r.stderr, r.stderr


def test_parquet_without_text_or_metadata_searches(index_files, tmp_path, tiny_bert):
    """A Parquet file of only ids and vectors (no texts, no embtool metadata) is an index: TSV and JSON both work,
    the text is empty, and text queries need --model."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    t = pq.read_table(index_files / "f32.parquet").drop_columns(["text"]).replace_schema_metadata(None)
    pq.write_table(t, tmp_path / "bare.parquet")
    for fmt in ([], ["--json"]):
        r = run_cli(["search", tmp_path / "bare.parquet", "--query-embeddings", index_files / "q.npy", "-k", "2", *fmt])
        assert r.exit_code == 0 and len(r.stdout.splitlines()) == 6, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["text"] == ""
    r = run_cli(["search", tmp_path / "bare.parquet", "a query"])
    assert r.exit_code == 1 and "give --model" in r.stderr
    r = run_cli(["search", tmp_path / "bare.parquet", "a query", "--model", tiny_bert, "-k", "1"])
    assert r.exit_code == 0 and r.stderr == "" and len(r.stdout.splitlines()) == 1


_META_VALUES = st.one_of(st.sampled_from(["", "0", "-1", "1", "2", "31", "32", "33", "abc", "1e3", " 32", "true", "false",
                                          "nan", "float16", "int8", "binary", "mean", "cls", "itq"]), st.text(max_size=6))


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_safetensors_index_mutations(index_files, tmp_path_factory, data):
    """Random mutations of a float32 index (metadata values, absurd numbers in rows, rows scaled up under the unit
    claim, text offsets, tensors reshaped, retyped or dropped): one `Error:` line, or hits that are right by the
    file's own tensors read with the safetensors package."""
    import numpy as np

    from embtool.core.formats.index import KEYS
    from embtool.core.safetensors_io import write_safetensors

    src = data.draw(st.sampled_from(["f32", "raw"]), label="index")
    t, m = _st_parts(index_files / f"{src}.safetensors")
    t = {k: np.array(v) for k, v in t.items()}
    n, d = t["embeddings"].shape
    kind = data.draw(st.sampled_from(["meta", "value", "scale", "offsets", "retype", "reshape", "drop", "ids"]), label="kind")
    if kind == "meta":
        m[data.draw(st.sampled_from(KEYS), label="key")] = data.draw(_META_VALUES, label="value")
    elif kind == "value":  # (under the unit claim a value that shortens its row is the documented case left out:
        # such a row can only drop out of the hits, as if it held other values; without the claim, anything goes)
        t["embeddings"][data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1))] = data.draw(
            st.sampled_from([float("nan"), float("inf"), -float("inf"), 3e38, 1e20, *([0.0, 1e-3] if src == "raw" else [])]),
            label="value")
    elif kind == "scale":  # rows longer than the claim would score too high: they are among the hits, and checked
        t["embeddings"][data.draw(st.integers(0, n - 1))] *= data.draw(
            st.sampled_from([1.0001, 3.0, 1e3, -1.0, 0.0, *([0.5, 1e-30] if src == "raw" else [])]), label="by")
    elif kind == "offsets":
        o = t["text_offsets"]
        o[data.draw(st.integers(0, n))] += data.draw(st.integers(-50, 50), label="shift")
    elif kind == "retype":
        name = data.draw(st.sampled_from(sorted(t)), label="tensor")
        t[name] = t[name].astype(data.draw(st.sampled_from(["float64", "float32", "float16", "int32", "int64", "uint8"]), label="dtype"))
    elif kind == "reshape":
        name = data.draw(st.sampled_from(sorted(t)), label="tensor")
        t[name] = t[name].reshape(data.draw(st.sampled_from([(-1,), (1, -1), (-1, 1), (1, 1, -1)]), label="shape"))
    elif kind == "drop":
        t.pop(data.draw(st.sampled_from(sorted(t)), label="tensor"))
    else:
        t["ids"] = data.draw(st.sampled_from([np.zeros(n, np.int64), np.arange(n)[::-1].copy(), np.full(n, -7, np.int32)]))
    p = tmp_path_factory.mktemp("fz") / "x.safetensors"
    write_safetensors(p, t, m)
    metric = data.draw(st.sampled_from(["cosine", "dot", "l2"]), label="metric")
    k = data.draw(st.sampled_from([1, 5, n]), label="k")
    hits = _hostile_search(p, index_files / "q.npy", k, metric)
    if hits is not None:  # accepted: then right by the tensors as stored
        texts = _st_texts(t) if "texts" in t else [""] * n
        ids = t["ids"].tolist() if "ids" in t else list(range(n))
        _check_hits_against(hits, t["embeddings"], texts, ids, np.load(index_files / "q.npy"), k, metric)


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_parquet_index_mutations(index_files, tmp_path_factory, data):
    """Random mutations of a Parquet index (a column dropped or retyped, nulls, ragged or nested vectors, absurd
    values, metadata replaced by any JSON): one `Error:` line, or hits right by the file read with pyarrow."""
    pa = pytest.importorskip("pyarrow")
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(index_files / "f32.parquet")
    n = t.num_rows
    cols = {name: t.column(name).to_pylist() for name in t.column_names}
    meta = t.schema.metadata
    kind = data.draw(st.sampled_from(["drop", "null", "ragged", "value", "retype", "metadata"]), label="kind")
    row = data.draw(st.integers(0, n - 1), label="row")
    types = {"id": pa.int64(), "text": pa.string(), "embedding": pa.list_(pa.float32(), 32)}
    if kind == "drop":
        cols.pop(data.draw(st.sampled_from(sorted(cols)), label="column"))
    elif kind == "null":
        name = data.draw(st.sampled_from(sorted(cols)), label="column")
        cols[name][row] = None
        types["embedding"] = pa.list_(pa.float32())
    elif kind == "ragged":
        v = cols["embedding"][row]
        cols["embedding"][row] = data.draw(st.sampled_from([v[:-1], v + [0.1], [], v[:16]]), label="vector")
        types["embedding"] = pa.list_(pa.float32())
    elif kind == "value":
        cols["embedding"][row][data.draw(st.integers(0, 31))] = data.draw(
            st.sampled_from([None, float("nan"), float("inf"), 3e38, 0.0]), label="value")
        types["embedding"] = pa.list_(pa.float32())
    elif kind == "retype":
        name = data.draw(st.sampled_from(sorted(cols)), label="column")
        types[name] = data.draw(st.sampled_from([pa.string(), pa.float64(), pa.int32(), pa.uint64(), pa.list_(pa.float64()),
                                                 pa.large_string(), pa.list_(pa.float16(), 32)]), label="type")
    else:
        value = data.draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=4),
                                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                                       max_leaves=6), label="metadata")
        meta = {b"embtool": json.dumps(value).encode()}
    try:
        table = pa.table({k: pa.array(v, types[k]) if types[k] != pa.string() or k != "text" or True else v
                          for k, v in cols.items()}, metadata=meta)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return  # pyarrow itself cannot hold this mutation
    p = tmp_path_factory.mktemp("pq") / "x.parquet"
    pq.write_table(table, p)
    k = data.draw(st.sampled_from([1, 5, n]), label="k")
    hits = _hostile_search(p, index_files / "q.npy", k, "cosine")
    if hits is not None:
        back = pq.read_table(p)
        vec = np.array(back.column("embedding").to_pylist(), dtype=np.float64)
        texts = back.column("text").to_pylist() if "text" in back.column_names else [""] * n
        ids = back.column("id").to_pylist() if "id" in back.column_names else list(range(n))
        _check_hits_against(hits, vec, texts, ids, np.load(index_files / "q.npy"), k, "cosine")
