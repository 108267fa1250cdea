"""The public Python API: embtool.Encoder equals the CLI bit for bit; the README's Python examples run."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import ROOT, SENTENCES, run_cli


def test_encoder_equals_cli_bit_for_bit(tiny_model, tmp_path):
    import embtool
    from embtool.core.embeddings_io import Index

    enc = embtool.Encoder(tiny_model)
    vecs = enc.embed(SENTENCES)
    assert vecs.dtype == np.float32 and vecs.shape[0] == len(SENTENCES)
    (tmp_path / "t.txt").write_text("\n".join(SENTENCES) + "\n")
    r = run_cli(["embed", tiny_model, "-i", tmp_path / "t.txt", "-o", tmp_path / "t.safetensors", "--quiet"])
    assert r.exit_code == 0, r.stderr
    ix = Index(tmp_path / "t.safetensors")
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
