"""Every model-writing command checks its output by default, and never writes a model embtool cannot
run unless told to (issue 16 item 4)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import corpus_lines, run_cli
from embtool.core.tokenizer_io import TokenizerJson
from embtool.jobs import fidelity as F


def _wordpiece(texts: list[str]) -> TokenizerJson:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=3000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    return TokenizerJson.from_data(json.loads(tok.to_str()))


def test_sample_languages_follow_the_vocabulary():
    """English-only vocabulary: English; multilingual: all four; French-only: French."""
    assert F.sample_languages(_wordpiece(corpus_lines("en", 2000))) == ["en"]
    assert F.sample_languages(_wordpiece(corpus_lines("fr", 2000))) == ["fr"]
    mixed = [t for lang in ("en", "fr", "es", "pl") for t in corpus_lines(lang, 800)]
    tj = _wordpiece(mixed)
    assert F.sample_languages(tj) == ["en", "fr", "es", "pl"]
    texts, langs = F.builtin_sample(tj)
    assert langs == ["en", "fr", "es", "pl"] and len(texts) == F.SAMPLE_TEXTS
    # held-out lines only: none of them is in a training split
    from embtool.core import corpora

    train = set(corpora.corpus_lines("en", "train"))
    assert not train & set(texts)


@pytest.mark.parametrize("command", ["quantize", "factorize", "trim-vocab", "init-subwords"])
def test_every_model_writer_checks_its_output_by_default(tmp_path, tiny_models, command):
    tiny_bert = tiny_models["bert"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines("en", 300)) + "\n")
    args = {"quantize": ["--bits", "4", "--method", "rtn"], "factorize": ["--rank", "8"], "trim-vocab": ["-c", corpus],
            "init-subwords": ["--tokenizer", tiny_models["distilbert"] / "tokenizer.json"]}[command]
    r = run_cli([command, tiny_bert, *args, "-o", tmp_path / "out", "--json"])
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["eval"]
    assert ev["source"] == "built-in sample" and ev["languages"] and ev["texts"] >= 150
    assert 0 < ev["cosine_mean"] <= 1.0001
    r = run_cli([command, tiny_bert, *args, "-o", tmp_path / "out2", "--quiet"])
    assert r.exit_code == 0
    r = run_cli([command, tiny_bert, *args, "-o", tmp_path / "out3", "--json", "--no-eval"])
    assert r.exit_code == 0 and "eval" not in json.loads(r.stdout)


def test_low_fidelity_warns_and_min_cosine_gates_the_default_check(tmp_path, tiny_bert):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the dog\n")  # trimmed to a handful of tokens: far from the input on the sample
    r = run_cli(["trim-vocab", tiny_bert, "-c", corpus, "-o", tmp_path / "t", "--quiet"])
    assert r.exit_code == 0 and (tmp_path / "t").is_dir()
    assert "warning: the output is far from the input: mean cosine" in r.stderr and "built-in sample" in r.stderr
    r = run_cli(["trim-vocab", tiny_bert, "-c", corpus, "-o", tmp_path / "t2", "--min-cosine", "0.95", "--quiet"])
    assert r.exit_code == 3 and not (tmp_path / "t2").exists()
    r = run_cli(["trim-vocab", tiny_bert, "-c", corpus, "-o", tmp_path / "t3", "--min-cosine", "0.95", "--no-eval"])
    assert r.exit_code == 2 and "--min-cosine needs the fidelity check" in r.stderr
    # a faithful output gets no warning
    r = run_cli(["factorize", tiny_bert, "--rank", "32", "-o", tmp_path / "f"])
    assert r.exit_code == 0 and "warning" not in r.stderr and "held-out     " in r.stderr and "built-in sample (" in r.stderr


@pytest.fixture
def unsupported(tmp_path, tiny_bert):
    m = tmp_path / "m"
    shutil.copytree(tiny_bert, m)
    cfg = json.loads((m / "config.json").read_text())
    cfg["model_type"] = "funnel"  # the runtime cannot build it
    (m / "config.json").write_text(json.dumps(cfg))
    return m


COMMANDS = {"quantize": ["--bits", "4", "--method", "rtn"], "factorize": ["--rank", "8"], "trim-vocab": ["--script", "Latin"],
            "init-subwords": ["--tokenizer", "TOK"]}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_model_embtool_cannot_run_is_refused_or_written_unchecked(tmp_path, tiny_models, unsupported, command):
    args = [str(tiny_models["distilbert"] / "tokenizer.json") if a == "TOK" else a for a in COMMANDS[command]]
    r = run_cli([command, unsupported, *args, "-o", tmp_path / "out"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "'funnel' is not supported" in r.stderr and "--force-unsupported writes it anyway, unchecked" in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli([command, unsupported, *args, "-o", tmp_path / "out", "--force-unsupported", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert "eval" not in s and any(n.startswith("NOT CHECKED: embtool cannot run this model") for n in s["notes"])
    assert "warning: NOT CHECKED" in r.stderr
    assert (tmp_path / "out").is_dir()


def test_compare_figures_are_always_finite():
    """compare() gives finite figures or refuses: NaN/inf embeddings are an InputError (never a null cosine that a
    summary would show beside "passed": true), and vectors too large for float32 norms still compare by their cosine."""
    import numpy as np

    from embtool.core.errors import InputError

    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 8)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[3, 1] = bad
        for x, y in ((a, b), (b, a)):
            with pytest.raises(InputError, match="NaN or infinite"):
                F.compare(x, y)
    big = F.compare(a, a * np.float32(1e20))  # float32 squares overflow from 1.8e19
    assert big["cosine_min"] == pytest.approx(1.0, abs=1e-12) and big["recall@10"] == 1.0
    noisy = a + rng.standard_normal(a.shape).astype(np.float32)
    small, large = F.compare(a, noisy), F.compare(a * np.float32(1e20), noisy * np.float32(1e20))
    assert small["cosine_mean"] == pytest.approx(large["cosine_mean"], rel=1e-6) and small["recall@10"] == large["recall@10"] < 1


def test_a_gate_never_passes_on_nan():
    """Should a NaN figure ever reach a gate, it fails it: comparisons with NaN are false."""
    from types import SimpleNamespace

    for key in ("cosine_mean", "cosine_min", "recall@10"):
        ev = {"cosine_mean": 0.99, "cosine_min": 0.98, "recall@10": 0.97, key: float("nan")}
        req = SimpleNamespace(min_cosine=0.5, min_cosine_min=0.5, min_recall=0.5)
        summary = {"eval": ev}
        assert F.gate(summary, req) is False and summary["passed"] is False and len(summary["gate"]["failed"]) == 1
