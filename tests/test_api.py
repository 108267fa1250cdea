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
