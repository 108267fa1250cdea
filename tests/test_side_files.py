"""Smaller findings of issue 16 (item 6): vocabulary side files after trim-vocab, a readable inspect
table, embed's help text."""

from __future__ import annotations

import json
import shutil

from conftest import corpus_lines, run_cli
from embtool.core.tokenizer_io import TokenizerJson


def _corpus(tmp_path):
    c = tmp_path / "c.txt"
    c.write_text("\n".join(corpus_lines("en", 40)) + "\n")
    return c


def test_trim_rewrites_vocab_txt_and_drops_what_it_cannot_rewrite(tmp_path, tiny_bert):
    m = tmp_path / "m"
    shutil.copytree(tiny_bert, m)
    toks = TokenizerJson.load(m / "tokenizer.json").id_to_token()
    (m / "vocab.txt").write_text("".join(t + "\n" for t in toks))
    (m / "sentencepiece.bpe.model").write_bytes(b"\x0a\x05stale")
    (m / "added_tokens.json").write_text(json.dumps({"[MASK]": toks.index("[MASK]")}))
    r = run_cli(["trim-vocab", m, "-c", _corpus(tmp_path), "-o", tmp_path / "t", "--no-eval", "--json"])
    assert r.exit_code == 0, r.stderr
    new = TokenizerJson.load(tmp_path / "t" / "tokenizer.json").id_to_token()
    assert len(new) < len(toks)
    assert (tmp_path / "t" / "vocab.txt").read_text().splitlines() == new  # line number = id, as BertTokenizer reads it
    assert not (tmp_path / "t" / "sentencepiece.bpe.model").exists()
    assert json.loads((tmp_path / "t" / "added_tokens.json").read_text()) == {"[MASK]": new.index("[MASK]")}
    notes = json.loads(r.stdout)["notes"]
    assert any("rewritten for the trimmed vocabulary: vocab.txt, added_tokens.json" in n for n in notes)
    assert any("not copied" in n and "sentencepiece.bpe.model" in n for n in notes)


def test_trim_rewrites_vocab_json_and_merges_txt(tmp_path, tiny_models):
    m = tmp_path / "m"
    shutil.copytree(tiny_models["distilbert"], m)  # byte-level BPE
    doc = json.loads((m / "tokenizer.json").read_text())
    (m / "vocab.json").write_text(json.dumps(doc["model"]["vocab"]))
    merges = [x if isinstance(x, str) else " ".join(x) for x in doc["model"]["merges"]]
    (m / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    r = run_cli(["trim-vocab", m, "-c", _corpus(tmp_path), "-o", tmp_path / "t", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    new = json.loads((tmp_path / "t" / "tokenizer.json").read_text())["model"]
    assert json.loads((tmp_path / "t" / "vocab.json").read_text()) == new["vocab"]
    assert len(new["vocab"]) < len(doc["model"]["vocab"])
    lines = (tmp_path / "t" / "merges.txt").read_text().splitlines()
    assert lines[0].startswith("#version") and lines[1:] == [x if isinstance(x, str) else " ".join(x) for x in new["merges"]]


def test_inspect_table_has_no_raw_none_or_json(tmp_path, tiny_bert):
    assert run_cli(["quantize", tiny_bert, "--bits", "4", "--method", "rtn", "-o", tmp_path / "q", "--no-eval"]).exit_code == 0
    assert run_cli(["factorize", tiny_bert, "--rank", "8", "-o", tmp_path / "f", "--no-eval"]).exit_code == 0
    assert run_cli(["export-onnx", tiny_bert, "-o", tmp_path / "o", "--quiet"]).exit_code == 0
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "o" / "model.onnx", tmp_path / "bare" / "model.onnx")
    assert run_cli(["quantize", tmp_path / "o", "--bits", "8", "-o", tmp_path / "oq", "--no-eval"]).exit_code == 0
    texts = {}
    for name in ("q", "f", "bare", "oq"):
        r = run_cli(["inspect", tmp_path / name])
        assert r.exit_code == 0, r.stderr
        texts[name] = r.stdout
        table = r.stdout.split("\n\nvocabulary-axis tensors:")[0]
        assert "None" not in table and "{" not in table and "[\"" not in table and "true" not in table, table
    assert "quantized       4 bits, groups of 32, asymmetric" in texts["q"]
    assert "factorized      rank 8 (embeddings.word_embeddings.weight = F·P)" in texts["f"]
    assert "normalize not set (no)" in texts["bare"] and "special tokens  none" in texts["bare"]
    assert "quantized       8 bits, groups of 32, asymmetric" in texts["oq"]


def test_embed_help_shows_the_shard_rule_unescaped():
    r = run_cli(["embed", "--help"])
    assert "j % N == I" in r.stdout and "%%" not in r.stdout
