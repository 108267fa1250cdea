"""`embtool shrink`: trim + quantize to a budget, measured against the original on held-out corpus lines."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from conftest import corpus_lines, run_cli


def _corpus(tmp_path, n=400):
    lines = corpus_lines("en", n)
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p, lines


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """A temp folder of this test's own: the leftover check must not see another xdist worker's (or another
    process's) shrink running at the same time."""
    d = tmp_path / "sys-tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _leftovers() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("embtool-shrink-")}


def test_shrink_trims_quantizes_to_the_budget_and_measures_on_held_out_lines(tiny_bert, tmp_path):
    import embtool

    corpus, lines = _corpus(tmp_path)
    before = _leftovers()
    size = embtool.inspect(tiny_bert)["bytes"]["weights_file"]
    budget = int(0.45 * size)
    r = run_cli(["shrink", tiny_bert, "-c", corpus, "--max-size", str(budget), "-o", tmp_path / "out", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["schema"] == "embtool.shrink/1" and s["written"] and s["passed"]
    assert [st["step"] for st in s["steps"]] == ["trim-vocab", "quantize"]
    out_size = os.path.getsize(tmp_path / "out" / "model.safetensors")
    assert out_size == s["bytes_after"] <= budget  # the budget holds for the file, header included
    # the held-out lines are every 10th line of the corpus, measured against the original model
    held = [t for i, t in enumerate(lines, 1) if i % 10 == 0][:300]
    assert s["eval"]["texts"] == len(held) and s["training_lines"] == len(lines) - len(held)
    ref = embtool.compare_models(tiny_bert, tmp_path / "out", held)
    assert abs(ref["cosine_mean"] - s["eval"]["cosine_mean"]) < 1e-5 and 0.5 < s["eval"]["cosine_mean"] < 1.0
    # what was lost is named: the held-out texts tokenized as before, the worst texts by their first words
    from embtool.core.model import open_model

    from embtool.jobs.fidelity import identical_tokenization

    a, b = open_model(tiny_bert).tokenizer.runtime(), open_model(tmp_path / "out").tokenizer.runtime()
    same = np.mean([a.encode(t).tokens == b.encode(t).tokens for t in held])
    assert s["eval"]["identical_tokenization"] == pytest.approx(same) and same > 0.5
    fr = corpus_lines("fr", 60, 500)  # text of another language, on the corpus' own tokens: some of it splits differently
    assert run_cli(["trim-vocab", tiny_bert, "-c", corpus, "--extra", "none", "-o", tmp_path / "en", "--no-eval"]).exit_code == 0
    c = open_model(tmp_path / "en").tokenizer.runtime()
    share = np.mean([a.encode(t).tokens == c.encode(t).tokens for t in fr])
    assert identical_tokenization(open_model(tiny_bert), open_model(tmp_path / "en"), fr) == pytest.approx(share) and share < 0.9
    worst = s["eval"]["worst"]
    assert len(worst) == 3 and worst[0]["cosine"] == pytest.approx(s["eval"]["cosine_min"], abs=1e-6)
    assert [w["cosine"] for w in worst] == sorted(w["cosine"] for w in worst)
    assert any(t.startswith(worst[0]["text"].removesuffix(" ...")) for t in held)
    # where the time went: every phase of the pipeline, wall and CPU seconds
    ph = s["phases"]
    for name in ("split", "trim", "trim.counting", "quantize", "quantize.statistics", "quantize.probe_setup",
                 "quantize.sensitivity", "quantize.gptq", "measurement"):
        assert ph["seconds"][name] >= 0 and name in ph["seconds"], name
    assert ph["seconds"]["trim.counting"] <= ph["seconds"]["trim"] and ph["seconds"]["quantize.sensitivity"] <= ph["seconds"]["quantize"]
    # what it wrote runs, and says how it was made
    info = embtool.inspect(tmp_path / "out")
    assert [p["command"] for p in info["provenance"]][-3:] == ["trim-vocab", "quantize", "shrink"]
    assert embtool.Encoder(tmp_path / "out").embed(["a text"]).shape[0] == 1
    assert _leftovers() == before  # the intermediate models are gone


def test_shrink_stops_after_trimming_when_the_budget_allows(tiny_bert, tmp_path):
    corpus, _ = _corpus(tmp_path)
    r = run_cli(["shrink", tiny_bert, "-c", corpus, "--max-size", "10MB", "-o", tmp_path / "out", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert [st["step"] for st in s["steps"]] == ["trim-vocab"] and s["eval"]["cosine_min"] > 0.999


def test_shrink_gate_infeasible_budget_and_bad_input_write_nothing(tiny_bert, tmp_path):
    import embtool

    corpus, _ = _corpus(tmp_path)
    before = _leftovers()
    budget = str(int(0.45 * embtool.inspect(tiny_bert)["bytes"]["weights_file"]))
    r = run_cli(["shrink", tiny_bert, "-c", corpus, "--max-size", budget, "--min-cosine", "0.999999", "-o", tmp_path / "g", "--json"])
    assert r.exit_code == 3 and not (tmp_path / "g").exists()
    s = json.loads(r.stdout)
    assert not s["passed"] and not s["written"] and "below --min-cosine 0.999999" in s["gate"]["message"]
    r = run_cli(["shrink", tiny_bert, "-c", corpus, "--max-size", "1KB", "-o", tmp_path / "i", "--quiet"])
    assert r.exit_code == 1 and "infeasible" in r.stderr and r.stderr.count("\n") == 1 and not (tmp_path / "i").exists()
    (tmp_path / "tiny.txt").write_text("one line\ntwo lines\n")
    r = run_cli(["shrink", tiny_bert, "-c", tmp_path / "tiny.txt", "--max-size", "1MB", "-o", tmp_path / "t", "--quiet"])
    assert r.exit_code == 1 and "too small to keep held-out text" in r.stderr and not (tmp_path / "t").exists()
    r = run_cli(["shrink", tiny_bert, "--max-size", "1MB", "-o", tmp_path / "t"])
    assert r.exit_code == 2 and "--corpus" in r.stderr
    assert _leftovers() == before
    np.testing.assert_equal(sorted(os.listdir(tmp_path)), ["corpus.txt", "sys-tmp", "tiny.txt"])


def test_max_size_holds_for_the_file_header_included(tiny_bert, tmp_path):
    """quantize --max-size (and so shrink) budgets the whole weights file: the tensors, their scales and zero
    points, and the safetensors header with the quantization record, across a sweep of budgets."""
    import embtool

    size = embtool.inspect(tiny_bert)["bytes"]["weights_file"]
    over = []
    for i, share in enumerate(np.linspace(0.4, 0.7, 7)):
        budget = int(share * size)
        r = embtool.quantize(tiny_bert, tmp_path / f"q{i}", bits=[2, 4, 8], max_size=budget, method="rtn",
                             sensitivity="hessian", probes=1, no_eval=True)
        got = os.path.getsize(tmp_path / f"q{i}" / "model.safetensors")
        assert got == r.bytes_after
        if got > budget:
            over.append((budget, got))
    assert over == []
