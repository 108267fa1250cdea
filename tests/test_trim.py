"""trim-vocab: identical tokenization and embeddings on the corpus, consistent tokenizers, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SENTENCES, corpus_lines, run_cli
from embtool.core.counting import _count_lines, count_corpus
from embtool.core.model import open_model
from embtool.core.safetensors_io import SafetensorsFile
from embtool.runtime.encoder import Encoder

POOL = SENTENCES + corpus_lines("fr", 60, 100) + corpus_lines("en", 60, 100) + corpus_lines("pl", 30, 100)


def _trim(model, corpus_path, out, *extra):
    r = run_cli(["trim-vocab", model, "-c", corpus_path, "-o", out, "--json", *extra])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(POOL), min_size=1, max_size=25, unique=True))
def test_trimmed_tokenizer_and_model_are_identical_on_corpus(tmp_path_factory, tiny_models, texts):
    for arch, model in tiny_models.items():
        d = tmp_path_factory.mktemp("trim")
        (d / "c.txt").write_text("\n".join(texts) + "\n")
        s = _trim(model, d / "c.txt", d / "out")
        orig, new = open_model(model), open_model(d / "out")
        a_tok, b_tok = orig.tokenizer.runtime(), new.tokenizer.runtime()
        kept_vocab = new.tokenizer.vocab_size()
        assert s["vocab_after"] == kept_vocab <= s["vocab_before"]
        # old id -> new id through the token strings
        old_ids = {i: t for t, i in a_tok.get_vocab(with_added_tokens=True).items()}
        new_vocab = b_tok.get_vocab(with_added_tokens=True)
        for t in texts:
            ea, eb = a_tok.encode(t), b_tok.encode(t)
            assert ea.tokens == eb.tokens, (arch, t)
            assert [new_vocab[old_ids[i]] for i in ea.ids] == eb.ids
        va = Encoder(orig).embed(texts)
        vb = Encoder(new).embed(texts)
        assert np.min(np.sum(va * vb, 1)) >= 0.99999, arch


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta", "distilbert"])
def test_fast_counting_equals_line_counting(tiny_models, arch):
    m = open_model(tiny_models[arch])
    tok = m.tokenizer.runtime()
    V = m.tokenizer.vocab_size()
    lines = corpus_lines("fr", 800) + corpus_lines("en", 800)
    c = count_corpus(tok, lambda: iter(lines), V)
    assert np.array_equal(c.counts, _count_lines(tok, lines, V))
    # the fast path (distinct words, checked against line-by-line counting first) is used: these whitespace-
    # splitting tokenizers are what it is for
    assert c.lines == len(lines) and "verified" in c.mode, c.mode


def test_counting_falls_back_when_words_are_not_independent(tiny_bert):
    """A tokenizer whose tokens depend on context across spaces (no pre-tokenizer split) cannot use
    the word path: the check must catch it and count line by line."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.train_from_iterator(SENTENCES * 5, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"]))
    lines = SENTENCES * 3
    V = tok.get_vocab_size()
    c = count_corpus(tok, lambda: iter(lines), V)
    assert np.array_equal(c.counts, _count_lines(tok, lines, V))


def test_reference_tool_failure_modes_are_absent(tmp_path, tiny_models):
    texts = corpus_lines("fr", 50)
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    # BPE: every merge's parts and result exist; byte-level alphabet kept
    _trim(tiny_models["distilbert"], tmp_path / "c.txt", tmp_path / "bpe")
    doc = json.loads((tmp_path / "bpe" / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    for m in doc["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        assert a in vocab and b in vocab and a + b in vocab
    from embtool.algorithms.vocab import bytes_to_unicode

    assert all(ch in vocab for ch in bytes_to_unicode().values())
    assert sorted(vocab.values()) == list(range(len(vocab)))
    # an unseen word still tokenizes (byte fallback), no unknown tokens
    enc = open_model(tmp_path / "bpe").tokenizer.runtime().encode("Żółć xyzzy 漢字")
    assert enc.ids and "<unk>" not in enc.tokens
    # WordPiece: contiguous ids, [UNK] kept, config vocab_size updated, special ids consistent
    _trim(tiny_models["bert"], tmp_path / "c.txt", tmp_path / "wp")
    doc = json.loads((tmp_path / "wp" / "tokenizer.json").read_text())
    ids = sorted(doc["model"]["vocab"].values())
    assert ids == list(range(len(ids))) and "[UNK]" in doc["model"]["vocab"]
    cfg = json.loads((tmp_path / "wp" / "config.json").read_text())
    rows = SafetensorsFile(tmp_path / "wp" / "model.safetensors").tensors["embeddings.word_embeddings.weight"].shape[0]
    from embtool.core.model import tail_rows

    tail = tail_rows(open_model(tmp_path / "wp"), "embeddings.word_embeddings.weight")  # the extra tokens' packed rows
    assert tail > 0 and cfg["vocab_size"] == rows + tail == len(ids)
    pp = doc["post_processor"]["special_tokens"]
    assert pp["[CLS]"]["ids"] == [doc["model"]["vocab"]["[CLS]"]]
    assert cfg["pad_token_id"] == doc["model"]["vocab"]["[PAD]"]
    # Unigram: unk_id remapped
    _trim(tiny_models["xlm-roberta"], tmp_path / "c.txt", tmp_path / "uni")
    doc = json.loads((tmp_path / "uni" / "tokenizer.json").read_text())
    assert doc["model"]["vocab"][doc["model"]["unk_id"]][0] == "<unk>"


def test_selection_flags_and_dry_run(tmp_path, tiny_bert):
    (tmp_path / "c.txt").write_text("\n".join(corpus_lines("en", 200)) + "\n")
    full = _trim(tiny_bert, tmp_path / "c.txt", tmp_path / "full", "--extra", "none")
    dflt = _trim(tiny_bert, tmp_path / "c.txt", tmp_path / "dflt")  # + the extra tokens (--extra auto)
    top = _trim(tiny_bert, tmp_path / "c.txt", tmp_path / "top", "--top", "20")
    cov = _trim(tiny_bert, tmp_path / "c.txt", tmp_path / "cov", "--coverage", "0.5")
    assert top["vocab_after"] < full["vocab_after"] < dflt["vocab_after"] and cov["vocab_after"] < full["vocab_after"]
    assert "extra" not in top and "extra" not in cov and dflt["extra"]["mode"] == "auto"
    assert full["corpus_coverage"] == 1.0 and 0.5 <= cov["corpus_coverage"] < 0.6  # measured 0.570
    r = run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / "c.txt", "--dry-run", "--json"])
    dry = json.loads(r.stdout)
    assert r.exit_code == 0 and dry["vocab_after"] == dflt["vocab_after"]
    assert abs(dry["bytes_after_estimate"] - dflt["bytes_after"]) < 0.02 * dflt["bytes_after"]  # headers not counted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "cov", "dflt", "full", "top"]
    # --script Latin without a corpus
    r = run_cli(["trim-vocab", tiny_bert, "--script", "Latin", "-o", tmp_path / "latin", "--json"])
    assert r.exit_code == 0, r.stderr
    # --keep: a token is kept even if the corpus never uses it
    vocab = json.loads((tiny_bert / "tokenizer.json").read_text())["model"]["vocab"]
    (tmp_path / "one.txt").write_text("the\n")
    rare = next(t for t in vocab if t.isalpha() and len(t) > 4 and t not in json.loads((tmp_path / "full" / "tokenizer.json").read_text())["model"]["vocab"])
    (tmp_path / "keep.txt").write_text(rare + "\n")
    _trim(tiny_bert, tmp_path / "one.txt", tmp_path / "kept", "--keep", tmp_path / "keep.txt", "--extra", "none")
    assert rare in json.loads((tmp_path / "kept" / "tokenizer.json").read_text())["model"]["vocab"]


def test_min_cosine_gate(tmp_path, tiny_bert):
    (tmp_path / "c.txt").write_text("\n".join(corpus_lines("en", 100)) + "\n")
    (tmp_path / "h.txt").write_text("\n".join(corpus_lines("fr", 50, 500)) + "\n")
    r = run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / "c.txt", "--top", "10", "--eval", tmp_path / "h.txt",
                 "--min-cosine", "0.99999", "-o", tmp_path / "out"])
    assert r.exit_code == 3 and "below --min-cosine" in r.stderr and not (tmp_path / "out").exists()
    r = run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / "c.txt", "--eval", tmp_path / "h.txt", "--min-cosine", "0.5",
                 "--extra", "none", "-o", tmp_path / "out", "--json"])
    assert r.exit_code == 0
    e = json.loads(r.stdout)["eval"]
    # French held-out text on a model trimmed to English: most texts tokenize differently (measured 0.14
    # identical), yet the embeddings stay close (measured 0.9945-0.9955)
    assert e["texts"] == 50 and 0.1 <= e["identical_tokenization"] <= 0.2 and 0.99 <= e["cosine_mean"] < 0.999


@pytest.mark.parametrize("case, message", [
    ("empty", "corpus is empty"),
    ("script", "unknown to this tokenizer"),
    ("top", "larger than the vocabulary"),
    ("wordlevel", "not supported"),
    ("nothing", "nothing to select by"),
])
def test_trim_bad_input(tmp_path, tiny_bert, case, message):
    model = tiny_bert
    args = ["-c", tmp_path / "c.txt"]
    (tmp_path / "c.txt").write_text("hello world\n")
    if case == "empty":
        (tmp_path / "c.txt").write_text("")
    elif case == "script":
        (tmp_path / "c.txt").write_text("日本語の文章です。\n" * 20 + "ქართული ენა\n" * 20)
    elif case == "top":
        args += ["--top", "999999"]
    elif case == "wordlevel":
        model = tmp_path / "wl"
        shutil.copytree(tiny_bert, model)
        from tokenizers import Tokenizer, models, pre_tokenizers

        t = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
        t.pre_tokenizer = pre_tokenizers.Whitespace()
        t.save(str(model / "tokenizer.json"))
    elif case == "nothing":
        args = []
    r = run_cli(["trim-vocab", model, *args, "-o", tmp_path / "out"])
    assert r.exit_code == (2 if case == "nothing" else 1) and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# prompts a model card documents (the model declares none): counted, kept, measured with, warned about
# ----------------------------------------------------------------------------------------------

E5_STYLE_CARD = """---
license: mit
---
## Usage

```python
# Each input text should start with "query: " or "passage: ".
input_texts = ['query: how much protein should a female eat',
               "passage: As a general guideline, the CDC's average requirement ..."]
```
"""


@pytest.mark.parametrize("card, expected", [
    (E5_STYLE_CARD, {"query": "query: ", "passage": "passage: "}),
    ("Prefix with `search_query: ` for queries and `search_document: ` for documents:\n"
     "model.encode(['search_document: TSNE is a dimensionality reduction'])",
     {"query": "search_query: ", "document": "search_document: "}),
    ('instruction = "Represent this sentence for searching relevant passages: "\nq = [instruction + x for x in qs]',
     {"query": "Represent this sentence for searching relevant passages: "}),
    ('model = SentenceTransformer("x", prompts={"classification": "Classify: ", "retrieval": "Retrieve: "})',
     {"classification": "Classify: ", "retrieval": "Retrieve: "}),
    ("# A model\nEmbeds sentences; the query: field of the API is optional.", {}),  # prose, no prompt
    ("", {}),
])
def test_card_prompts(card, expected):
    from embtool.core.card import card_prompts

    assert card_prompts(card) == expected


def test_card_prompts_are_kept_and_measured_with(tmp_path, tiny_models):
    """A model whose card documents 'query: ' / 'passage: ' but declares no prompts, trimmed to a corpus that never
    says 'passage': the prompt's tokens are kept (the prefixed text tokenizes as before), the corpus is counted
    with the prompts, the held-out texts are measured after 'passage: ', and a warning says so; --prefix silences it."""
    model = tmp_path / "m"
    shutil.copytree(tiny_models["xlm-roberta"], model)
    (model / "README.md").write_text(E5_STYLE_CARD)
    lines = [t for t in corpus_lines("en", 150) if "passage" not in t.lower()]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "h.txt").write_text("\n".join(corpus_lines("en", 20, 400)) + "\n")
    r = run_cli(["trim-vocab", model, "-c", tmp_path / "c.txt", "-o", tmp_path / "out", "--eval", tmp_path / "h.txt", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert "model card says texts start with 'query: ' / 'passage: '" in r.stderr
    assert s["prefixes"] == ["", "query: ", "passage: "] and s["eval_prefix"] == "passage: "
    a = open_model(model).tokenizer.runtime()
    b = open_model(tmp_path / "out").tokenizer.runtime()
    for text in ("passage: " + lines[0], "query: " + lines[1]):
        assert a.encode(text).tokens == b.encode(text).tokens
    # shrink (its trim step) warns too, and its --json summary carries the note
    r = run_cli(["shrink", model, "-c", tmp_path / "c.txt", "--max-size", "60KB", "-o", tmp_path / "shr", "--json"])
    assert r.exit_code == 0, r.stderr
    assert "model card says" in r.stderr and any("model card says" in n for n in json.loads(r.stdout)["notes"])
    assert json.loads(r.stdout)["eval"]["prefix"] == "passage: "
    r = run_cli(["trim-vocab", model, "-c", tmp_path / "c.txt", "-o", tmp_path / "out2", "--prefix", "query: ", "--json"])
    assert r.exit_code == 0 and "model card" not in r.stderr
    assert json.loads(r.stdout)["prefixes"] == ["query: "]


# ----------------------------------------------------------------------------------------------
# --extra: held-out text of the corpus' scripts keeps its characters; the extra rows live in a packed tail
# ----------------------------------------------------------------------------------------------

def _script_chars(model) -> str:
    """Every character the model's vocabulary has as a token of its own in the Latin script or none (digits,
    punctuation): what held-out text of an English corpus may contain."""
    from embtool.algorithms import vocab as VA

    bodies = VA.token_bodies(open_model(model).tokenizer.data)
    return "".join(sorted({b for b in bodies if b and len(b) == 1 and VA.char_script(b) in ("Latin", "Common")}))


@pytest.fixture(scope="module")
def trimmed_en(tmp_path_factory, tiny_models):
    """tiny WordPiece and Unigram models trimmed (default --extra auto) to English text that lacks most accented
    letters of the vocabulary."""
    d = tmp_path_factory.mktemp("trim-extra")
    lines = [t for t in corpus_lines("en", 300) if t.isascii()]
    (d / "c.txt").write_text("\n".join(lines) + "\n")
    out = {}
    for arch in ("bert", "xlm-roberta"):
        s = _trim(tiny_models[arch], d / "c.txt", d / arch)
        out[arch] = (tiny_models[arch], d / arch, s, _script_chars(tiny_models[arch]))
    return out


@settings(max_examples=40, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_no_character_of_the_corpus_scripts_becomes_unknown(trimmed_en, arch, data):
    """Any text made of characters of the scripts the corpus uses (letters it never had included) tokenizes to the
    unknown token no more often after trimming than before."""
    from embtool.algorithms import vocab as VA

    model, out, s, chars = trimmed_en[arch]
    assert any(not c.isascii() for c in chars)  # the property is about letters the corpus never had
    text = data.draw(st.text(alphabet=chars + "  ", min_size=1, max_size=40))
    a, b = open_model(model).tokenizer, open_model(out).tokenizer
    ua, ub = VA.unk_id(a.data), VA.unk_id(b.data)
    na = a.runtime().encode(text).ids.count(ua)
    nb = b.runtime().encode(text).ids.count(ub)
    assert nb <= na, (text, na, nb)


def test_extra_rows_are_a_packed_tail_the_graph_reads(tmp_path, trimmed_en):
    """The extra tokens' rows are stored after the table's own rows at --extra-bits; texts that use them embed as the
    original model with those rows rounded (8 bits: cosine >= 0.9999; 32 bits: no tail, equal), and the ONNX export
    (fused and standard operators) reads the tail as the safetensors graph does."""
    from embtool.core.model import tail_rows
    from embtool.core.qrecord import read_record

    model, out, s, _ = trimmed_en["xlm-roberta"]
    m = open_model(out)
    head = SafetensorsFile(out / "model.safetensors").tensors["embeddings.word_embeddings.weight"].shape[0]
    tail = tail_rows(m, "embeddings.word_embeddings.weight")
    assert tail == s["extra_rows"]["rows"] > 0 and head + tail == s["vocab_after"]
    assert read_record(m.weights.metadata)["embeddings.word_embeddings.tail"]["bits"] == 2
    held = corpus_lines("fr", 150, 300)
    encs = m.tokenizer.runtime().encode_batch(held)
    before = open_model(model).tokenizer.runtime().encode_batch(held)
    # texts tokenized as before, with at least one token of the tail: any difference is the tail's rounding
    uses_tail = [t for t, e, e0 in zip(held, encs, before) if max(e.ids) >= head and e.tokens == e0.tokens]
    assert len(uses_tail) >= 10
    (tmp_path / "c.txt").write_text("\n".join(t for t in corpus_lines("en", 300) if t.isascii()) + "\n")
    ref = Encoder(open_model(model)).embed(uses_tail)
    for bits, floor in (("8", 0.9999), ("32", 0.999999)):
        s2 = _trim(model, tmp_path / "c.txt", tmp_path / f"b{bits}", "--extra-bits", bits)
        assert ("extra_rows" in s2) == (bits != "32") and s2["vocab_after"] == s["vocab_after"]
        got = Encoder(open_model(tmp_path / f"b{bits}")).embed(uses_tail)
        assert np.min(np.sum(ref * got, 1)) >= floor, bits
    two = Encoder(m).embed(uses_tail)
    assert 0.9 < np.min(np.sum(ref * two, 1)) < 0.99999  # 2-bit rows: close, not equal
    for extra in ([], ["--portable"]):
        r = run_cli(["export-onnx", out, "-o", tmp_path / f"onnx{len(extra)}", *extra, "--json"])
        assert r.exit_code == 0, r.stderr
        got = Encoder(open_model(tmp_path / f"onnx{len(extra)}")).embed(uses_tail)
        assert np.min(np.sum(two * got, 1)) >= 0.99999
    # dequantize: the tail's rows appended to the table, one float matrix that embeds the same
    r = run_cli(["dequantize", out, "-o", tmp_path / "deq", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = SafetensorsFile(tmp_path / "deq" / "model.safetensors").tensors["embeddings.word_embeddings.weight"].shape[0]
    assert rows == s["vocab_after"] and tail_rows(open_model(tmp_path / "deq"), "embeddings.word_embeddings.weight") == 0
    assert np.min(np.sum(two * Encoder(open_model(tmp_path / "deq")).embed(uses_tail), 1)) >= 0.99999


def test_hostile_model_card_is_read_bounded(tmp_path):
    """A README.md of megabytes of binary junk: read up to CARD_BYTES, undecodable bytes replaced, no error; a prompt
    mentioned only past that head is not seen."""
    from embtool.core.card import MAX_BASE_CARD as CARD_BYTES, card_prompts, card_text as read_card

    rng = np.random.default_rng(0)
    (tmp_path / "README.md").write_bytes(rng.integers(0, 256, 3 * CARD_BYTES, dtype=np.uint8).tobytes() + E5_STYLE_CARD.encode())
    text = read_card(tmp_path)
    assert len(text) <= CARD_BYTES and card_prompts(text) == {}
    (tmp_path / "README.md").write_bytes(b"\xff\xfe" + E5_STYLE_CARD.encode() + b"\x80" * 10)
    assert card_prompts(read_card(tmp_path)) == {"query": "query: ", "passage": "passage: "}
    assert read_card(tmp_path / "nowhere") == ""


@pytest.mark.parametrize("options, message", [
    ({"extra": "some"}, "extra must be"),
    ({"extra_bits": 3}, "extra_bits must be"),
    ({"extra": "all", "corpus": [], "scripts": ["Latin"]}, "--extra needs a corpus"),
])
def test_extra_bad_values(tmp_path, tiny_bert, options, message):
    import embtool
    from embtool.errors import BadUsage

    (tmp_path / "c.txt").write_text("hello world\n")
    options = {"corpus": [str(tmp_path / "c.txt")], **options}
    with pytest.raises(BadUsage, match=message):
        embtool.trim_vocab(tiny_bert, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
