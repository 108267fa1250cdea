"""The public Python API: embtool.Encoder equals the CLI bit for bit; the README's Python examples run."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import ROOT, SENTENCES, run_cli


def test_encoder_equals_cli_bit_for_bit(tiny_model, tmp_path):
    import embtool
    from embtool.core.formats.index import open_index

    enc = embtool.Encoder(tiny_model)
    vecs = enc.embed(SENTENCES)
    assert vecs.dtype == np.float32 and vecs.shape[0] == len(SENTENCES)
    (tmp_path / "t.txt").write_text("\n".join(SENTENCES) + "\n")
    r = run_cli(["embed", tiny_model, "-i", tmp_path / "t.txt", "-o", tmp_path / "t.safetensors", "--quiet"])
    assert r.exit_code == 0, r.stderr
    ix = open_index(tmp_path / "t.safetensors")
    assert np.array_equal(np.asarray(ix.block(0, len(ix))), vecs)
    # the stream form gives the same rows, whatever the chunking
    assert np.array_equal(np.concatenate(list(enc.embed_iter(iter(SENTENCES), chunk=3))), vecs)
    assert np.array_equal(enc.embed(SENTENCES[0]), vecs[:1])


def test_encoder_options_and_errors(tiny_bert):
    import embtool
    from embtool.core.errors import EmbtoolError, ModelNotFound

    plain = embtool.Encoder(tiny_bert, normalize=False, pooling="cls").embed(SENTENCES[:3])
    assert not np.allclose(np.linalg.norm(plain, axis=1), 1.0)
    short = embtool.Encoder(tiny_bert, dim=8).embed(SENTENCES[:3])
    assert short.shape == (3, 8) and np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ModelNotFound):
        embtool.Encoder(tiny_bert.parent / "no-such-model")
    with pytest.raises(TypeError):
        embtool.Encoder(tiny_bert, poolin="mean")
    assert issubclass(ModelNotFound, EmbtoolError)


def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_api_example_runs(tiny_bert):
    blocks = [b for b in _readme_python_blocks() if "embtool.Encoder(model)" in b]
    assert blocks, "the README's Python API example is gone"
    code = blocks[0].replace('model = "all-MiniLM-L6-v2/"', f"model = {str(tiny_bert)!r}")
    code = code.replace("range(10_000)", "range(300)")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["vecs"].shape == (2, 32) and scope["total"] == 300


def _strip_volatile(d):
    """Summaries of two runs differ only in timings (and the output path, when the outputs differ)."""
    if isinstance(d, dict):
        return {k: _strip_volatile(v) for k, v in d.items() if k not in ("seconds", "wall_s", "output", "texts_per_second")
                and not k.endswith("_seconds")}
    if isinstance(d, list):
        return [_strip_volatile(v) for v in d]
    return d


def test_api_functions_equal_the_cli(tiny_bert, tmp_path):
    import json

    import embtool

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES * 3) + "\n")
    runs = {
        "trim-vocab": (lambda out: embtool.trim_vocab(tiny_bert, out, corpus=corpus, no_eval=True),
                       ["trim-vocab", tiny_bert, "-c", corpus, "--no-eval"]),
        "quantize": (lambda out: embtool.quantize(tiny_bert, out, bits=[4], group_size=16, method="rtn", no_eval=True),
                     ["quantize", tiny_bert, "--bits", "4", "--group-size", "16", "--method", "rtn", "--no-eval"]),
        "factorize": (lambda out: embtool.factorize(tiny_bert, out, rank=8, no_eval=True),
                      ["factorize", tiny_bert, "--rank", "8", "--no-eval"]),
    }
    for command, (api_call, argv) in runs.items():
        res = api_call(tmp_path / f"{command}-api")
        assert isinstance(res, embtool.Result) and res.written and res.passed and res.command == command
        r = run_cli([*argv, "-o", tmp_path / f"{command}-cli", "--json"])
        assert r.exit_code == 0, r.stderr
        cli = json.loads(r.stdout.strip().splitlines()[-1])
        assert _strip_volatile(res.summary) == _strip_volatile(cli), command
        assert res.bytes_after == cli["bytes_after"] and res.summary["schema"] == f"embtool.{command}/1"
        # the written models are the same bytes
        for f in ("model.safetensors",):
            assert (tmp_path / f"{command}-api" / f).read_bytes() == (tmp_path / f"{command}-cli" / f).read_bytes()


def test_api_gate_raises_the_cli_error(tiny_bert, tmp_path):
    import embtool
    from embtool.core.errors import FidelityError

    held = tmp_path / "h.txt"
    held.write_text("\n".join(SENTENCES) + "\n")
    with pytest.raises(FidelityError) as e:
        embtool.quantize(tiny_bert, tmp_path / "q", bits=[2], group_size=16, method="rtn", eval_file=str(held), min_cosine=0.9999)
    assert e.value.exit_code == 3 and e.value.result.passed is False and not (tmp_path / "q").exists()
    assert e.value.result.cosine_mean is not None and e.value.result.cosine_mean < 0.9999


def test_api_inspect_and_search_equal_the_cli(tiny_bert, tmp_path):
    import json

    import embtool

    info = embtool.inspect(tiny_bert)
    r = run_cli(["inspect", tiny_bert, "--json"])
    assert info == json.loads(r.stdout)
    (tmp_path / "t.txt").write_text("\n".join(SENTENCES) + "\n")
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "-o", tmp_path / "t.safetensors", "--quiet"]).exit_code == 0
    hits = embtool.search(tmp_path / "t.safetensors", SENTENCES[:2], k=3)
    r = run_cli(["search", tmp_path / "t.safetensors", *SENTENCES[:2], "-k", "3", "--json"])
    cli = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(h["id"], h["text"]) for h in cli] == [(g, t) for row in hits for _, g, t in row]
    vec_hits = embtool.search(tmp_path / "t.safetensors", embtool.Encoder(tiny_bert).embed(SENTENCES[:2]), k=3)
    assert [[g for _, g, _ in row] for row in vec_hits] == [[g for _, g, _ in row] for row in hits]


def test_readme_model_functions_example_runs(tiny_bert, tmp_path, monkeypatch):
    blocks = [b for b in _readme_python_blocks() if "embtool.trim_vocab(" in b]
    assert blocks, "the README's model-functions example is gone"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fr-train.txt").write_text("\n".join(SENTENCES * 3) + "\n")
    (tmp_path / "fr-heldout.txt").write_text("\n".join(SENTENCES) + "\n")
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "fr-heldout.txt", "-o", tmp_path / "docs.safetensors", "--quiet"]).exit_code == 0
    scope = {"embtool": __import__("embtool"), "model": str(tiny_bert)}
    exec(compile(blocks[0].replace("rank=128", "rank=16"), "README.md", "exec"), scope)  # the tiny model has 32 dims
    assert scope["r"].cosine_mean > 0.999 and scope["q"].written and scope["f"].written
    assert scope["info"]["schema"] == "embtool.inspect/1" and len(scope["hits"][0]) == 5


def test_readme_shrink_and_helpers_example_runs(tiny_bert, tmp_path, monkeypatch):
    from conftest import corpus_lines

    blocks = [b for b in _readme_python_blocks() if "embtool.shrink(" in b]
    assert blocks, "the README's shrink / helpers example is gone"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fr.txt").write_text("\n".join(corpus_lines("fr", 300)) + "\n")
    (tmp_path / "docs.txt").write_text("\n".join(SENTENCES) + "\n")
    size = __import__("embtool").inspect(tiny_bert)["bytes"]["weights_file"]
    code = blocks[0].replace("max_size=16_000_000, min_cosine=0.98", f"max_size={int(0.6 * size)}, min_cosine=0.5")
    code = code.replace('prompt_name="passage"', 'prefix="passage: "')  # the tiny model has no prompts
    scope = {"embtool": __import__("embtool"), "model": str(tiny_bert)}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["s"].bytes_after <= int(0.6 * size) and scope["s"].summary["steps"][-1]["step"] == "quantize"
    assert scope["vecs"].shape == (len(SENTENCES), 32) and (tmp_path / "mine.safetensors").exists()
    assert (tmp_path / "model-plan" / "model.safetensors").exists()


def test_api_embed_writes_what_the_cli_writes(tiny_bert, tmp_path):
    """`embtool.embed` is the function behind `embtool embed`: the same file, the same summary."""
    import json

    import embtool

    (tmp_path / "t.txt").write_text("\n".join(SENTENCES) + "\n")
    res = embtool.embed(tiny_bert, tmp_path / "api.safetensors", inputs=[tmp_path / "t.txt"], prefix="q: ")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--prefix", "q: ", "-o", tmp_path / "cli.safetensors", "--json"])
    assert r.exit_code == 0, r.stderr
    cli = json.loads(r.stdout)
    assert res.summary["schema"] == cli["schema"] == "embtool.embed/1"
    drop = {"seconds", "texts_per_second", "output", "model"}
    assert {k: v for k, v in res.summary.items() if k not in drop} == {k: v for k, v in cli.items() if k not in drop}
    a, b = embtool.read_embeddings(tmp_path / "api.safetensors"), embtool.read_embeddings(tmp_path / "cli.safetensors")
    assert a.shape == (len(SENTENCES), cli["dim"]) and np.array_equal(a, b)
    assert np.array_equal(a, embtool.Encoder(tiny_bert, prefix="q: ").embed(SENTENCES))
    # contradictory options are a usage error (exit 2 in the CLI), raised before any work
    with pytest.raises(embtool.errors.BadUsage, match="--keep-float goes with"):
        embtool.embed(tiny_bert, tmp_path / "x.npy", texts=["a"], keep_float=True)
    assert not (tmp_path / "x.npy").exists()


def test_write_read_and_compare_embeddings(tmp_path):
    import embtool

    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    p = embtool.write_embeddings(tmp_path / "x.safetensors", X, [f"t{i}" for i in range(50)], metadata={"normalize": "true"})
    ix = embtool.open_index(p)
    assert len(ix) == 50 and ix.text(7) == "t7" and np.array_equal(embtool.read_embeddings(p), X)
    with pytest.raises(embtool.errors.OutputExists):
        embtool.write_embeddings(p, X)
    q8 = embtool.write_embeddings(tmp_path / "q8.safetensors", X * 3 + 1, precision="int8")  # with a shared direction
    ix8 = embtool.open_index(q8)
    dec = ix8.block(0, 50).astype(np.float64)
    np.testing.assert_allclose(ix8.int8_sqnorms, (dec * dec).sum(1), rtol=1e-5)  # stored: search reads no norms
    assert [h[0][1] for h in embtool.search(q8, (X * 3 + 1)[:3], k=1)] == [0, 1, 2]
    with pytest.raises(embtool.errors.BadUsage, match="--keep-int8 goes with --precision binary"):
        embtool.write_embeddings(tmp_path / "i8.safetensors", X, precision="int8", keep_int8=True)
    assert not (tmp_path / "i8.safetensors").exists()
    hits = embtool.search(p, X[:3], k=1)
    assert [h[0][1] for h in hits] == [0, 1, 2] and hits.query_texts is None
    same = embtool.compare_embeddings(X, X)
    assert same["cosine_mean"] == pytest.approx(1.0, abs=1e-6) and same["recall_at_10"] == 1.0
    noisy = X + 0.3 * rng.standard_normal(X.shape).astype(np.float32)
    worse = embtool.compare_embeddings(X, noisy)
    cos = np.sum(X * noisy, 1) / np.linalg.norm(noisy, axis=1)
    assert worse["cosine_mean"] == pytest.approx(float(cos.mean()), rel=1e-5)
    assert worse["cosine_min"] == pytest.approx(float(cos.min()), rel=1e-5) and worse["recall_at_10"] < 1.0


def test_compare_models_and_quantization_helpers(tiny_bert, tmp_path):
    import embtool

    texts = SENTENCES * 2
    same = embtool.compare_models(tiny_bert, tiny_bert, texts)
    assert same["cosine_min"] == pytest.approx(1.0, abs=1e-6) and same["texts"] == len(texts)
    tensors = embtool.quantizable_tensors(tiny_bert)
    assert sum(t.token_table for t in tensors) == 1 and all(len(t.shape) == 2 for t in tensors)
    plan = {t.name: (8 if t.token_table else 4) for t in tensors}
    res = embtool.quantize(tiny_bert, tmp_path / "q", bits=[4, 8], plan=plan, no_eval=True)
    want = sum(embtool.quantized_bytes(t.shape, plan[t.name]) for t in tensors)
    info = embtool.inspect(tmp_path / "q")
    assert info["bytes"]["weights_file"] == res.bytes_after and res.bytes_after > want  # the packed tensors plus the float rest
    q = embtool.compare_models(tiny_bert, tmp_path / "q", texts)
    assert 0.9 < q["cosine_mean"] < 1.0
    words, distinct = embtool.frequent_words(["b a b", "c b a"], 2)
    assert words == ["b", "a"] and distinct == 3
    assert len(embtool.sample_corpus("fr", "heldout", limit=5)) == 5


@pytest.mark.parametrize("command", ["export-onnx", "dequantize", "defactorize"])
def test_lossless_conversions_are_checked_and_a_broken_one_is_refused(command, tiny_bert, tmp_path, monkeypatch):
    """export-onnx, dequantize and defactorize must not change the embeddings: each checks its output on the
    built-in sample (min cosine >= 0.9999 unless a gate is given) and refuses (exit 3, nothing written) when a
    conversion goes wrong — simulated here by corrupting the token table the command writes."""
    import json

    import embtool

    src = tiny_bert
    if command == "dequantize":
        src = tmp_path / "q8"
        embtool.quantize(tiny_bert, src, bits=[8], no_eval=True)
    elif command == "defactorize":
        src = tmp_path / "f"
        embtool.factorize(tiny_bert, src, rank=8, no_eval=True)
    r = run_cli([command, src, "-o", tmp_path / "ok", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["passed"] and s["written"] and s["eval"]["source"] == "built-in sample"
    assert s["eval"]["cosine_min"] >= 0.9999 and s["gate"]["min_cosine_min"] == 0.9999
    # a conversion that goes wrong: the written token table is scrambled
    if command == "export-onnx":
        from onnx import numpy_helper

        from embtool.jobs import export

        real_save = export.save_onnx

        def broken_save(onnx_model, *a, **k):
            for t in onnx_model.graph.initializer:
                if "word_embeddings" in t.name:
                    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(t)[::-1]), t.name))
            return real_save(onnx_model, *a, **k)

        monkeypatch.setattr(export, "save_onnx", broken_save)
    else:
        from embtool.core import model_out

        real_write = model_out.write_weights

        def broken_write(model, out, tensors, *a, **k):
            tensors = {n: (np.ascontiguousarray(t[::-1]) if "word_embeddings" in n else t) for n, t in tensors.items()}
            return real_write(model, out, tensors, *a, **k)

        monkeypatch.setattr(model_out, "write_weights", broken_write)
    r = run_cli([command, src, "-o", tmp_path / "bad", "--json"])
    assert r.exit_code == 3, r.stderr
    s = json.loads(r.stdout)
    assert not s["passed"] and not s["written"] and "min cosine" in s["gate"]["message"]
    assert not (tmp_path / "bad").exists()
    # --no-eval writes it unchecked (the user's call)
    r = run_cli([command, src, "-o", tmp_path / "unchecked", "--json", "--no-eval"])
    assert r.exit_code == 0 and "eval" not in json.loads(r.stdout) and (tmp_path / "unchecked").is_dir()
