"""sentence-transformers folders of every release against sentence-transformers' own embeddings.

The fixtures in tests/data/st_formats/ were saved, and their reference vectors computed, by the real
sentence-transformers (tools/fixtures/make_st_fixtures.py, run once in the peer venv): pooling modes (old boolean
keys and the 6.x `pooling_mode` string, concatenated modes), Dense layers, Normalize or not,
include_prompt false, prompts and default_prompt_name, max_seq_length from sentence_bert_config.json or
tokenizer_config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli
from embtool.core.formats.index import open_index
from embtool.core.model import open_model
from embtool.core.st_config import pooling_modes, read_st_info
from embtool.runtime.encoder import EmbedSettings, Encoder
from helpers import cosines

DATA = Path(__file__).parent / "data" / "st_formats"
REF = json.loads((DATA / "reference.json").read_text(encoding="utf-8"))
CASES = [(name, run["prompt_name"]) for name, m in REF["models"].items() for run in m["runs"]]


@pytest.mark.parametrize("name,prompt_name", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_embeddings_equal_sentence_transformers(name, prompt_name):
    ref = REF["models"][name]
    expected = np.array(next(r["vectors"] for r in ref["runs"] if r["prompt_name"] == prompt_name), np.float32)
    enc = Encoder(open_model(DATA / name), EmbedSettings(prompt_name=prompt_name))
    got = enc.embed(REF["texts"])
    assert enc.max_length == ref["max_seq_length"]
    assert got.shape == expected.shape
    assert cosines(got, expected).min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_legacy_pooling_keys_follow_sentence_transformers():
    where = Path("1_Pooling/config.json")
    assert pooling_modes({"word_embedding_dimension": 4}, where) == (("mean",), True)  # none true: mean
    assert pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, where)[0] == ("cls", "mean")
    assert pooling_modes({"pooling_mode_lasttoken": True, "include_prompt": False}, where) == (("lasttoken",), False)
    # the new key wins over old ones
    assert pooling_modes({"pooling_mode": "max", "pooling_mode_mean_tokens": True}, where)[0] == ("max",)
    assert pooling_modes({"pooling_mode": ["cls", "weightedmean"]}, where)[0] == ("cls", "weightedmean")


def test_reader_reads_prompts_and_modules():
    info = read_st_info(DATA / "new-prompts-exclude")
    assert info.prompts == {"document": "", "query": "Represent this question for retrieval: "}
    assert info.default_prompt_name == "query" and info.include_prompt is False
    assert info.prompt_texts() == ["Represent this question for retrieval: "]
    dense = read_st_info(DATA / "old-dense")
    assert [k for k, _ in dense.head] == ["dense", "normalize"]
    assert dense.dense[0].weight.shape == (16, 32) and dense.dense[0].activation == "tanh"


def _copy(name: str, tmp_path: Path) -> Path:
    d = tmp_path / name
    shutil.copytree(DATA / name, d)
    return d


def test_unknown_pooling_mode_is_one_clear_error(tmp_path):
    d = _copy("new-cls", tmp_path)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    r = run_cli(["embed", d, "a text"])
    assert r.exit_code == 1
    assert "pooling mode 'median' is unknown" in r.stderr and "Traceback" not in r.stderr


def test_dense_pickle_weights_are_refused(tmp_path):
    d = _copy("old-dense", tmp_path)
    (d / "2_Dense" / "model.safetensors").rename(d / "2_Dense" / "pytorch_model.bin")
    r = run_cli(["embed", d, "a text"])
    assert r.exit_code == 1
    assert "pickle" in r.stderr and "Traceback" not in r.stderr


def test_module_path_outside_the_folder_is_refused(tmp_path):
    d = _copy("new-dense-normalize", tmp_path)
    mods = json.loads((d / "modules.json").read_text())
    mods[2]["path"] = "../elsewhere"
    (d / "modules.json").write_text(json.dumps(mods))
    r = run_cli(["inspect", d])
    assert r.exit_code == 1
    assert "leaves the model folder" in r.stderr


def test_unsupported_module_type_is_refused_when_embedding(tmp_path):
    d = _copy("new-mean", tmp_path)
    mods = json.loads((d / "modules.json").read_text())
    mods.append({"idx": 3, "name": "3", "path": "3_LSTM", "type": "sentence_transformers.models.LSTM"})
    (d / "modules.json").write_text(json.dumps(mods))
    r = run_cli(["embed", d, "a text"])
    assert r.exit_code == 1
    assert "LSTM" in r.stderr


def test_embed_prompt_name_is_recorded_and_search_uses_the_query_prompt(tmp_path):
    d = DATA / "new-prompts"
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(REF["texts"]) + "\n")
    out = tmp_path / "idx.safetensors"
    r = run_cli(["embed", d, "-i", docs, "--prompt-name", "document", "-o", out])
    assert r.exit_code == 0, r.stderr
    assert "note: this model has prompts" not in r.stderr
    meta = open_index(out).meta
    assert meta["prompt_name"] == "document" and meta["prefix"] == "passage: "
    expected = np.array(next(x["vectors"] for x in REF["models"]["new-prompts"]["runs"] if x["prompt_name"] == "document"))
    stored = load_file(str(out))
    emb = next(v for k, v in stored.items() if v.ndim == 2 and v.shape[0] == len(REF["texts"]) and v.dtype == np.float32)
    assert cosines(emb, expected / np.linalg.norm(expected, axis=1, keepdims=True)).min() >= 0.9999
    # search embeds the query with the model's query prompt by default
    default = run_cli(["search", out, "lists files", "-k", "5"])
    explicit = run_cli(["search", out, "lists files", "-k", "5", "--query-prefix", "query: "])
    plain = run_cli(["search", out, "lists files", "-k", "5", "--query-prefix", ""])
    assert default.exit_code == 0, default.stderr
    assert default.stdout == explicit.stdout
    assert default.stdout != plain.stdout


def test_embed_without_a_prompt_notes_it(tmp_path):
    r = run_cli(["embed", DATA / "new-prompts", "a text"])
    assert r.exit_code == 0
    assert "note: this model has prompts (document, query)" in r.stderr
    r = run_cli(["embed", DATA / "new-mean", "a text"])  # 6.x writes empty prompts for every model: no note
    assert "note: this model has prompts" not in r.stderr


def test_default_prompt_name_applies_without_a_flag():
    m = open_model(DATA / "new-cls-exclude-prompt")
    assert Encoder(m).prefix == "query: "
    assert Encoder(m, EmbedSettings(prefix="other: ")).prefix == "other: "


def test_bad_prompt_flags():
    r = run_cli(["embed", DATA / "new-prompts", "a text", "--prompt-name", "passage"])
    assert r.exit_code == 1
    assert "no prompt named 'passage'" in r.stderr and "document, query" in r.stderr
    r = run_cli(["embed", DATA / "new-prompts", "a text", "--prompt-name", "query", "--prefix", "x: "])
    assert r.exit_code == 2


# ----------------------------------------------------------------------------------------------
# trim-vocab keeps what the prompts need
# ----------------------------------------------------------------------------------------------

CORPUS = ["the fox jumps over the dog", "lists of files in the directory", "a dog and a fox", "files and lists"]
HELD = ["the dog lists files", "a fox in the directory"]


def _trim(tmp_path, *extra):
    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n")
    (tmp_path / "h.txt").write_text("\n".join(HELD) + "\n")
    out = tmp_path / "trimmed"
    r = run_cli(["trim-vocab", DATA / "new-prompts", "-c", tmp_path / "c.txt", "-o", out, "--eval", tmp_path / "h.txt",
                 "--json", *extra])
    assert r.exit_code == 0, r.stderr
    return out, json.loads(r.stdout)


def _same_with_prompt(out: Path, prompt_name: str) -> tuple[bool, float]:
    a = Encoder(open_model(DATA / "new-prompts"), EmbedSettings(prompt_name=prompt_name))
    b = Encoder(open_model(out), EmbedSettings(prompt_name=prompt_name))
    ta, tb = a.tokenize(CORPUS + HELD), b.tokenize(CORPUS + HELD)
    inv_a = {i: t for t, i in open_model(DATA / "new-prompts").tokenizer.runtime().get_vocab().items()}
    inv_b = {i: t for t, i in open_model(out).tokenizer.runtime().get_vocab().items()}
    same = all([inv_a[i] for i in x] == [inv_b[i] for i in y] for x, y in zip(ta, tb))
    return same, float(cosines(a.encode_ids(ta), b.encode_ids(tb)).min())


def test_trim_counts_the_corpus_after_the_prompts(tmp_path):
    out, s = _trim(tmp_path)
    assert s["prefixes"] == ["", "passage: ", "query: "]  # the config's order (sorted keys)
    assert s["eval_prefix"] == "passage: "  # the document prompt
    assert s["eval"]["identical_tokenization"] == 1.0 and s["eval"]["recall_at_10"] == 1.0
    for name in ("query", "document"):
        same, cos = _same_with_prompt(out, name)
        assert same and cos > 0.99999, name
    kept = open_model(out).tokenizer.runtime().get_vocab()
    orig = open_model(DATA / "new-prompts").tokenizer.runtime()
    for p in ("query: ", "passage: "):  # the prompts' own tokens
        assert all(t in kept for t in orig.encode(p).tokens), p


def test_trim_without_the_prompts_breaks_them(tmp_path):
    """What the default prevents: a model whose prompts embtool does not know of, trimmed to a corpus without
    the prompt's words, loses the prompt's tokens, and prompted texts tokenize differently."""
    d = _copy("new-prompts", tmp_path)
    (d / "config_sentence_transformers.json").unlink()
    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n")
    (tmp_path / "h.txt").write_text("\n".join(HELD) + "\n")
    base = ["trim-vocab", d, "-c", tmp_path / "c.txt", "--extra", "none", "--eval", tmp_path / "h.txt", "--eval-prefix", "passage: ",
            "--json"]  # hard trimming: only the corpus' own tokens
    r = run_cli([*base, "-o", tmp_path / "plain"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["eval"]["identical_tokenization"] < 1.0
    r = run_cli([*base, "-o", tmp_path / "prefixed", "--prefix", "passage: "])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["eval"]["identical_tokenization"] == 1.0


def test_trim_text_summary_shows_prefixes_and_recall(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n")
    (tmp_path / "h.txt").write_text("\n".join(HELD) + "\n")
    r = run_cli(["trim-vocab", DATA / "new-prompts", "-c", tmp_path / "c.txt", "-o", tmp_path / "t", "--eval", tmp_path / "h.txt",
                 "--prefix", "query: "])
    assert r.exit_code == 0, r.stderr
    assert "prefixes     counted as the model sees the texts: 'query: '" in r.stderr
    assert "with prefix 'query: '" in r.stderr and "recall@10 1.000" in r.stderr


def test_trim_counts_byte_level_bpe_words_after_the_prompt(tmp_path):
    """Byte-level BPE tokenizes a line's first word without its 'Ġ' (space) mark, but after a prompt with
    it: only counting prompt + text keeps the tokens a prompted text needs."""
    from conftest import corpus_lines, make_tiny_model

    d = make_tiny_model(tmp_path / "bpe", "distilbert")
    (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    lines = corpus_lines("en", 60, 500)
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    r = run_cli(["trim-vocab", d, "-c", tmp_path / "c.txt", "--eval", tmp_path / "c.txt", "-o", tmp_path / "t", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["eval_prefix"] == "query: " and s["eval"]["identical_tokenization"] == 1.0
    assert s["eval"]["cosine_min"] > 0.99999


def test_trim_always_keeps_the_prompt_tokens(tmp_path):
    (tmp_path / "keep.txt").write_text("the\n")
    r = run_cli(["trim-vocab", DATA / "new-prompts", "--keep", tmp_path / "keep.txt", "-o", tmp_path / "t"])
    assert r.exit_code == 0, r.stderr
    kept = open_model(tmp_path / "t").tokenizer.runtime().get_vocab()
    orig = open_model(DATA / "new-prompts").tokenizer.runtime()
    for p in ("query: ", "passage: "):
        assert all(t in kept for t in orig.encode(p).tokens), p


# ----------------------------------------------------------------------------------------------
# MPNet through every model-writing command (the tiny fixture; all-mpnet-base-v2 in test_real_mpnet.py)
# ----------------------------------------------------------------------------------------------

MPNET = DATA / "mpnet-mean-normalize"


def _fidelity(a: Path, b: Path, texts=None) -> float:
    texts = texts or REF["texts"]
    return float(cosines(Encoder(open_model(a)).embed(texts), Encoder(open_model(b)).embed(texts)).min())


def test_mpnet_quantize_keeps_the_relative_bias_table_in_float(tmp_path):
    r = run_cli(["quantize", MPNET, "--bits", "8", "--method", "rtn", "-o", tmp_path / "q8", "--quiet"])
    assert r.exit_code == 0, r.stderr
    w = open_model(tmp_path / "q8").weights
    assert "encoder.relative_attention_bias.weight" in w.keys()  # 32 x 4: no group of 32 fits it
    assert any(k.endswith(".qweight") for k in w.keys())
    assert _fidelity(MPNET, tmp_path / "q8") > 0.999


def test_mpnet_trim_factorize_init_subwords_export(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(REF["texts"]) + "\n")
    r = run_cli(["trim-vocab", MPNET, "-c", tmp_path / "c.txt", "-o", tmp_path / "trim", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert _fidelity(MPNET, tmp_path / "trim") > 0.99999  # identical on the training text
    r = run_cli(["factorize", MPNET, "--rank", "31", "-o", tmp_path / "f", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert _fidelity(MPNET, tmp_path / "f") > 0.97  # random weights, rank 31 of 32: measured 0.985
    r = run_cli(["init-subwords", MPNET, "--tokenizer", tmp_path / "trim" / "tokenizer.json", "-o", tmp_path / "i", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert _fidelity(MPNET, tmp_path / "i") > 0.99999  # every token of the trimmed vocabulary is copied
    r = run_cli(["export-onnx", MPNET, "-o", tmp_path / "onnx", "--quiet"])
    assert r.exit_code == 0, r.stderr
    expected = np.array(REF["models"]["mpnet-mean-normalize"]["runs"][0]["vectors"], np.float32)
    assert cosines(Encoder(open_model(tmp_path / "onnx")).embed(REF["texts"]), expected).min() >= 0.9999


def test_init_subwords_reports_how_the_prompts_are_carried(tmp_path):
    from conftest import train_tokenizer

    trimmed, _ = _trim(tmp_path)  # a smaller vocabulary that kept the prompts' tokens
    r = run_cli(["init-subwords", DATA / "new-prompts", "--tokenizer", trimmed / "tokenizer.json",
                 "-o", tmp_path / "same", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert set(s["prompts"]) == {"query: ", "passage: "}
    assert all(set(p["rows"]) == {"copied"} for p in s["prompts"].values())
    assert s["eval_prefix"] == "passage: " and not any("prompt" in n for n in s["notes"])
    small = train_tokenizer("wordpiece", (CORPUS + ["passage query"]) * 20)  # whole-word tokens the model lacks
    small.save(str(tmp_path / "small.json"))
    r = run_cli(["init-subwords", DATA / "new-prompts", "--tokenizer", tmp_path / "small.json", "-o", tmp_path / "new", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert any(k != "copied" for p in s["prompts"].values() for k in p["rows"])
    assert any(n.startswith("prompt 'passage: '") for n in s["notes"])


def test_do_lower_case_of_the_old_layout_lowercases_the_text(tmp_path):
    """sentence-transformers 6 bakes do_lower_case into tokenizer.json (the new-lowercase fixture, above); releases
    before it kept a cased tokenizer and lowercased the text when sentence_bert_config.json says do_lower_case.
    The same model laid out the old way: on the ASCII texts (where lowercasing the text and lowercasing in the
    normalizer agree) embtool must give sentence-transformers' reference vectors, and without the flag it must not."""
    import shutil

    ref = REF["models"]["new-lowercase"]
    expected = np.array(ref["runs"][0]["vectors"], np.float32)
    ascii_rows = [i for i, t in enumerate(REF["texts"]) if t.isascii() and t != t.lower()]
    assert len(ascii_rows) >= 2
    d = tmp_path / "old-lowercase"
    shutil.copytree(DATA / "new-lowercase", d)
    tok = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    tok["normalizer"] = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": False,
                         "lowercase": False}
    (d / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    texts = [REF["texts"][i] for i in ascii_rows]
    for flag, same in ((True, True), (False, False)):
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": flag}))
        got = Encoder(open_model(d)).embed(texts)
        close = cosines(got, expected[ascii_rows]).min() >= 0.9999
        assert close == same, (flag, cosines(got, expected[ascii_rows]))
