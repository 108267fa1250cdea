"""init-subwords: overlap across marker conventions, OFA's softmax-weighted rows against a naive
reference, FVT = mean of pieces, determinism, factorized output, formats, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SENTENCES, corpus_lines, run_cli, train_tokenizer
from embtool.algorithms import subwords as SW
from embtool.core.model import open_model
from embtool.core.safetensors_io import SafetensorsFile
from embtool.runtime.encoder import Encoder

EMB = "embeddings.word_embeddings.weight"
KINDS = ("wordpiece", "bpe", "unigram")


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> dict[str, Path]:
    """New tokenizers of each type, trained on French and Spanish (the tiny models' own are trained on
    English and French): a real mix of shared and new tokens."""
    base = tmp_path_factory.mktemp("targets")
    texts = corpus_lines("fr", 400, start=1000) + corpus_lines("es", 300)
    out = {}
    for kind in KINDS:
        (base / kind).mkdir()
        train_tokenizer(kind, texts).save(str(base / kind / "tokenizer.json"))
        out[kind] = base / kind
    return out


@pytest.fixture(scope="module")
def words_file(tmp_path_factory, tiny_models) -> Path:
    """Word vectors of corpus words made by the source model itself (the documented recipe)."""
    base = tmp_path_factory.mktemp("words")
    words = sorted({w for line in corpus_lines("fr", 300, start=1000) + corpus_lines("es", 200) for w in line.split()
                    if len(w) <= 30})[:3000]
    (base / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    r = run_cli(["embed", tiny_models["bert"], "-i", base / "words.txt", "-o", base / "words.vec", "--quiet"])
    assert r.exit_code == 0, r.stderr
    return base / "words.vec"


def _table(folder: Path, name: str = EMB) -> np.ndarray:
    return SafetensorsFile(Path(folder) / "model.safetensors").get(name)


def _init(model, target, out, *extra, ok=True):
    r = run_cli(["init-subwords", model, "--tokenizer", target, "-o", out, "--json", *map(str, extra)])
    if ok:
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)
    return r


# ----------------------------------------------------------------------------------------------
# canonical forms and overlap
# ----------------------------------------------------------------------------------------------

META, WP, BL = SW.Convention("metaspace"), SW.Convention("wordpiece", prefix="##"), SW.Convention("bytelevel")


@pytest.mark.parametrize("token,conv,expected", [
    ("▁Paris", META, (True, "Paris")), ("ris", META, (False, "ris")), ("▁", META, None),
    ("Paris", WP, (True, "Paris")), ("##ris", WP, (False, "ris")), ("##", WP, (True, "##")),
    ("ĠParis", BL, (True, "Paris")), ("ris", BL, (False, "ris")), ("Ġ", BL, None),
    ("Ġc\u00c3\u00a9", BL, (True, "cé")),  # byte-level é = C3 A9
    ("\u00c3", BL, None),  # half of a UTF-8 character
])
def test_canonical_forms(token, conv, expected):
    assert SW.canonical(token, conv) == expected
    if expected is not None:
        assert SW.surface(*expected, conv) == token


def test_overlap_across_marker_conventions():
    # target WordPiece vs source SentencePiece, and target byte-level BPE vs source WordPiece
    src = ["<s>", "<pad>", "</s>", "<unk>", "▁chat", "s", "▁le", "▁Maison", "chat", "▁é", "▁"]
    tgt = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "chat", "##s", "le", "maison", "##chat", "Chat", "##é", "nouveau"]
    ov = SW.match_overlap(tgt, {0, 1, 2, 3, 4}, WP, src, {0, 1, 2, 3}, META)
    assert ov.source_of == {0: 1, 1: 3, 2: 0, 3: 2, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8, 10: 4}
    assert ov.how[8] == "case" and ov.how[10] == "case" and ov.how[5] == "exact" and ov.how[2] == "special"
    assert 11 not in ov.source_of  # ##é continues a word; the source only has ▁é (starts one)
    assert 12 not in ov.source_of and 4 not in ov.source_of  # new word; no mask token in the source
    bl = ["<|endoftext|>", "Ġchat", "chat", "Ġc\u00c3\u00a9", "\u00c3"]
    ov2 = SW.match_overlap(bl, {0}, BL, ["[PAD]", "[SEP]", "chat", "##chat", "cé"], {0, 1}, WP)
    assert ov2.source_of == {0: 1, 1: 2, 2: 3, 3: 4}


@pytest.mark.parametrize("src_arch", ["bert", "xlm-roberta", "distilbert"])
@pytest.mark.parametrize("kind", KINDS)
def test_overlap_on_trained_tokenizers(tiny_models, targets, src_arch, kind):
    """Every match pairs tokens with the same canonical form (up to case), and every target token whose
    canonical form the source has is matched (no missed overlap), across WordPiece, BPE and Unigram."""
    from embtool.core.tokenizer_io import TokenizerJson

    s = open_model(tiny_models[src_arch], need_tokenizer=True).tokenizer
    t = TokenizerJson.load(targets[kind] / "tokenizer.json")
    sc, tc = SW.convention(s.data), SW.convention(t.data)
    st, tt = s.id_to_token(), t.id_to_token()
    ov = SW.match_overlap(tt, set(t.special_tokens().values()), tc, st, set(s.special_tokens().values()), sc)
    assert ov.counts()["exact"] > 50
    s_forms = {SW.canonical(x, sc) for i, x in enumerate(st) if i not in s.special_tokens().values()} - {None}
    for j, x in enumerate(tt):
        if j in t.special_tokens().values():
            continue
        c = SW.canonical(x, tc)
        if j in ov.source_of:
            sf = SW.canonical(st[ov.source_of[j]], sc)
            assert sf == c or (sf is not None and c is not None and sf[0] == c[0] and sf[1].lower() == c[1].lower()) \
                or (sc == tc and st[ov.source_of[j]] == x), (x, st[ov.source_of[j]])
        else:
            assert c not in s_forms, x


# ----------------------------------------------------------------------------------------------
# the numbers: OFA neighbours, FVT, recipes
# ----------------------------------------------------------------------------------------------

def test_softmax_neighbours_hand_computed():
    cand = np.eye(4, 3, dtype=np.float32) * np.array([[1], [2], [3], [1]], dtype=np.float32)  # rows e0, 2e1, 3e2, 0
    cand[3] = [1, 1, 0]
    q = np.array([[2.0, 1.0, 0.0]], dtype=np.float32)
    idx, w, sims = SW.softmax_neighbours(q, cand, 2, 0.1)
    cos = np.array([2, 1, 0, 3 / np.sqrt(2)]) / np.sqrt(5)
    top = np.argsort(-cos, kind="stable")[:2]
    assert idx[0].tolist() == top.tolist()
    e = np.exp(cos[top] / 0.1)
    np.testing.assert_allclose(w[0], e / e.sum(), rtol=1e-5)
    np.testing.assert_allclose(sims[0], cos[top], rtol=1e-5)


def test_subword_vectors_match_a_naive_loop():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((50, 6)).astype(np.float32)
    W[7] = 0  # a zero vector counts for nothing
    toks = [list(rng.integers(0, 20, size=rng.integers(1, 5))) for _ in range(50)]
    ids, vecs = SW.subword_vectors(W, toks, 20, skip=[3])
    ref = {}
    for w, t in enumerate(toks):
        if w == 7:
            continue
        for i in set(t) - {3}:
            ref.setdefault(i, []).append(W[w] / np.linalg.norm(W[w]))
    assert ids.tolist() == sorted(ref)
    for i, v in zip(ids, vecs):
        np.testing.assert_allclose(v, np.mean(ref[int(i)], 0), rtol=1e-5, atol=1e-6)


def test_apply_recipe_and_seeded_random_rows():
    rng = np.random.default_rng(1)
    E = rng.standard_normal((30, 5)).astype(np.float32)
    parts = {0: (SW.COPIED, [4], [1.0]), 1: (SW.FVT, [2, 3, 9], [1 / 3] * 3), 3: (SW.NEIGHBOURS, [5, 6], [0.25, 0.75])}
    rec = SW.build_recipe(6, parts, unused=[5])
    out = SW.apply_recipe(rec, E, np.random.default_rng(7), block=2)
    np.testing.assert_array_equal(out[0], E[4])
    np.testing.assert_allclose(out[1], E[[2, 3, 9]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(out[3], 0.25 * E[5] + 0.75 * E[6], rtol=1e-6)
    np.testing.assert_array_equal(out[5], 0)
    again = SW.apply_recipe(rec, E, np.random.default_rng(7))
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out[[2, 4]], SW.apply_recipe(rec, E, np.random.default_rng(8))[[2, 4]])
    assert rec.counts() == {"copied": 1, "neighbours": 1, "fvt": 1, "random": 2, "unused": 1}
    big = SW.random_rows(E, 20000, np.random.default_rng(0))
    np.testing.assert_allclose(big.mean(0), E.mean(0), atol=0.05)
    np.testing.assert_allclose(big.std(0), E.std(0), rtol=0.05)


def test_ofa_rows_equal_the_softmax_weighted_rows(tmp_path, tiny_models, targets, words_file):
    """Each NEIGHBOURS row is Σ softmax(cos/τ)·E[s] over the k most similar source subwords, checked
    against a naive re-computation from the word-vector file."""
    from embtool.core.tokenizer_io import TokenizerJson
    from embtool.core.word_vectors import read_word_vectors

    src_dir = tiny_models["bert"]
    s = _init(src_dir, targets["unigram"], tmp_path / "ofa", "--word-vectors", words_file, "--neighbors", 4,
              "--temperature", 0.2)
    assert s["method"] == "ofa" and s["rows"]["neighbours"] > 50
    src = open_model(src_dir, need_tokenizer=True).tokenizer
    tgt = TokenizerJson.load(targets["unigram"] / "tokenizer.json")
    wv = read_word_vectors(str(words_file))
    V = wv.vectors - wv.vectors.mean(0)
    s_spec, t_spec = set(src.special_tokens().values()), set(tgt.special_tokens().values())
    s_unk = src.data["model"]["vocab"][src.data["model"]["unk_token"]]
    t_unk = tgt.data["model"]["unk_id"]

    def sub(tok, skip):
        acc: dict[int, list[np.ndarray]] = {}
        for w, v in zip(wv.words, V):
            for i in set(tok.runtime().encode(w, add_special_tokens=False).ids) - skip:
                acc.setdefault(i, []).append(v / np.linalg.norm(v))
        return {i: np.mean(x, 0) for i, x in acc.items()}

    s_vec, t_vec = sub(src, s_spec | {s_unk}), sub(tgt, t_spec | {t_unk})
    s_ids = np.array(sorted(s_vec))
    S = np.stack([s_vec[i] / np.linalg.norm(s_vec[i]) for i in s_ids])
    E = _table(src_dir)
    out = _table(tmp_path / "ofa")
    ov = SW.match_overlap(tgt.id_to_token(), t_spec, SW.convention(tgt.data), src.id_to_token(), s_spec,
                          SW.convention(src.data)).source_of
    checked = 0
    for j, v in t_vec.items():
        if j in ov:
            np.testing.assert_array_equal(out[j], E[ov[j]])
            continue
        cos = S @ (v / np.linalg.norm(v))
        top = np.lexsort((s_ids, -cos))[:4]
        w = np.exp(cos[top] / 0.2)
        w /= w.sum()
        np.testing.assert_allclose(out[j], (w[:, None] * E[s_ids[top]]).sum(0), rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked == s["rows"]["neighbours"]


def test_fvt_rows_are_the_mean_of_the_source_pieces(tmp_path, tiny_models, targets):
    """A new word-start token's FVT row = the mean of the rows of the pieces the source tokenizer's own
    pipeline (normalizer, pre-tokenizer, model) splits its text into."""
    from embtool.core.tokenizer_io import TokenizerJson

    for src_arch in ("bert", "xlm-roberta"):
        out = tmp_path / src_arch
        s = _init(tiny_models[src_arch], targets["unigram"], out, "--method", "fvt")
        assert s["rows"]["fvt"] > 50 and s["rows"]["neighbours"] == 0
        src = open_model(tiny_models[src_arch], need_tokenizer=True).tokenizer
        tgt = TokenizerJson.load(targets["unigram"] / "tokenizer.json")
        specials = set(src.special_tokens().values())
        E, N = _table(tiny_models[src_arch]), _table(out)
        ov = SW.match_overlap(tgt.id_to_token(), set(tgt.special_tokens().values()), SW.convention(tgt.data),
                              src.id_to_token(), specials, SW.convention(src.data)).source_of
        unk = src.runtime().token_to_id("[UNK]") if src_arch == "bert" else src.data["model"]["unk_id"]
        checked = 0
        for j, t in enumerate(tgt.id_to_token()):
            if j in ov or j in tgt.special_tokens().values() or not t.startswith("▁") or len(t) < 2:
                continue
            ids = [i for i in src.runtime().encode(t[1:], add_special_tokens=False).ids if i not in specials]
            if not ids or unk in ids:
                continue
            np.testing.assert_allclose(N[j], E[ids].mean(0), rtol=1e-5, atol=1e-6, err_msg=t)
            checked += 1
        assert checked > 30, src_arch


def test_extended_vocabulary_keeps_the_model_exact(tmp_path, tiny_models):
    """The common case: the model's own tokenizer plus new tokens. Every old row is copied, so texts
    that use no new token embed exactly as before; the new tokens get FVT rows."""
    from tokenizers import AddedToken, Tokenizer

    src = tiny_models["xlm-roberta"]
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    n0 = tok.get_vocab_size()
    tok.add_tokens([AddedToken("zorglubation", single_word=True), AddedToken("quantifier", single_word=True)])
    (tmp_path / "ext").mkdir()
    tok.save(str(tmp_path / "ext" / "tokenizer.json"))
    s = _init(src, tmp_path / "ext", tmp_path / "out")
    assert s["vocab_after"] == n0 + 2 and s["rows"]["copied"] == n0 and s["rows"]["fvt"] == 2
    np.testing.assert_array_equal(_table(tmp_path / "out")[:n0], _table(src)[:n0])
    a = Encoder(open_model(src)).embed(SENTENCES)
    b = Encoder(open_model(tmp_path / "out")).embed(SENTENCES)
    np.testing.assert_allclose(a, b, atol=1e-6)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["vocab_size"] == n0 + 2 and cfg["pad_token_id"] == 1


def test_seed_determinism(tmp_path, tiny_bert, targets):
    s = {name: _init(tiny_bert, targets["bpe"], tmp_path / name, "--method", "random", "--seed", seed)
         for name, seed in (("a", 3), ("b", 3), ("c", 4))}["a"]
    a, b, c = (tmp_path / n / "model.safetensors" for n in "abc")
    assert a.read_bytes() == b.read_bytes()
    ta, tc = _table(tmp_path / "a"), _table(tmp_path / "c")
    copied = ta.shape[0] - s["rows"]["random"] - s["rows"]["unused"]
    same = np.all(ta == tc, axis=1)
    assert same.sum() == copied and s["rows"]["random"] > 0


# ----------------------------------------------------------------------------------------------
# outputs: factorized, ONNX, formats, special tokens
# ----------------------------------------------------------------------------------------------

def test_rank_output_is_factorized_and_runs(tmp_path, tiny_bert, targets):
    full = _init(tiny_bert, targets["unigram"], tmp_path / "full")
    s = _init(tiny_bert, targets["unigram"], tmp_path / "r8", "--rank", 8)
    V = s["vocab_after"]
    f = SafetensorsFile(tmp_path / "r8" / "model.safetensors")
    F, P = f.get("embeddings.word_embeddings.factor_F"), f.get("embeddings.word_embeddings.factor_P")
    assert F.shape == (V, 8) and P.shape == (8, 32) and EMB not in f.tensors
    assert s["embedding_parameters_after"] == V * 8 + 8 * 32 < full["embedding_parameters_after"] == V * 32
    assert json.loads(run_cli(["inspect", tmp_path / "r8", "--json"]).stdout)["state"]["factorized"]["rank"] == 8
    # the best rank-8 approximation of the full-rank output table
    from embtool.algorithms import factorize as FA

    E = _table(tmp_path / "full")
    U, S_, Vt = np.linalg.svd(E.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(F @ P, (U[:, :8] * S_[:8]) @ Vt[:8], atol=1e-4)
    assert FA.spectrum(E).rel_error(8) == pytest.approx(np.linalg.norm(E - F @ P) / np.linalg.norm(E), rel=1e-3)
    emb = Encoder(open_model(tmp_path / "r8")).embed(SENTENCES)  # onnxruntime
    assert emb.shape == (len(SENTENCES), 32) and np.isfinite(emb).all()
    # OFA's recipe: coordinates in the source's factorization; P is the source's
    s2 = _init(tiny_bert, targets["unigram"], tmp_path / "src8", "--rank", 8, "--rank-basis", "source")
    f2 = SafetensorsFile(tmp_path / "src8" / "model.safetensors")
    Fs, Ps = FA.factors(_table(tiny_bert), FA.spectrum(_table(tiny_bert)), 8)
    np.testing.assert_allclose(f2.get("embeddings.word_embeddings.factor_P"), Ps, atol=1e-6)
    assert s2["rows"] == s["rows"]
    # a factorized source keeps its space (and its P)
    assert run_cli(["factorize", tiny_bert, "--rank", "8", "-o", tmp_path / "fsrc", "--quiet"]).exit_code == 0
    s3 = _init(tmp_path / "fsrc", targets["unigram"], tmp_path / "from-f")
    assert s3["factorized"] and s3["rank"] == 8
    np.testing.assert_array_equal(SafetensorsFile(tmp_path / "from-f" / "model.safetensors").get(
        "embeddings.word_embeddings.factor_P"), SafetensorsFile(tmp_path / "fsrc" / "model.safetensors").get(
        "embeddings.word_embeddings.factor_P"))
    r = _init(tmp_path / "fsrc", targets["unigram"], tmp_path / "x", "--rank", 4, ok=False)
    assert r.exit_code == 1 and "already factorized" in r.stderr


def test_onnx_input(tmp_path, tiny_bert, targets):
    assert run_cli(["export-onnx", tiny_bert, "-o", tmp_path / "onnx", "--quiet"]).exit_code == 0
    a = _init(tiny_bert, targets["wordpiece"], tmp_path / "st")
    b = _init(tmp_path / "onnx", targets["wordpiece"], tmp_path / "on")
    assert a["rows"] == b["rows"]
    ea = Encoder(open_model(tmp_path / "st")).embed(SENTENCES)
    eb = Encoder(open_model(tmp_path / "on")).embed(SENTENCES)
    assert np.min(np.sum(ea * eb, 1)) > 0.99999
    c = _init(tmp_path / "onnx", targets["wordpiece"], tmp_path / "on8", "--rank", 8)
    assert c["factorized"] and Encoder(open_model(tmp_path / "on8")).embed(SENTENCES).shape[0] == len(SENTENCES)


def test_word_vector_formats_agree(tmp_path, tiny_bert, targets, words_file):
    from embtool.core.word_vectors import read_word_vectors

    wv = read_word_vectors(str(words_file))
    np.save(tmp_path / "w.npy", wv.vectors)
    (tmp_path / "w.vocab").write_text("\n".join(wv.words) + "\n", encoding="utf-8")
    (tmp_path / "words.txt").write_text("\n".join(wv.words) + "\n", encoding="utf-8")
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "words.txt", "-o", tmp_path / "w.safetensors", "--quiet"]).exit_code == 0
    outs = []
    for i, wf in enumerate((words_file, tmp_path / "w.npy", tmp_path / "w.safetensors")):
        _init(tiny_bert, targets["bpe"], tmp_path / f"o{i}", "--word-vectors", wf)
        outs.append(_table(tmp_path / f"o{i}"))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-5)  # the text file rounds to 6 digits


def test_auto_word_vectors_from_the_model(tmp_path, tiny_models, targets):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines("fr", 200, start=1000)) + "\n", encoding="utf-8")
    s = _init(tiny_models["xlm-roberta"], targets["wordpiece"], tmp_path / "o", "--word-vectors", "auto", "-c", corpus,
              "--max-words", 500, "--eval", corpus)
    w = s["word_vectors"]
    assert w["words"] == 500 and w["truncated_to_max_words"] and w["source_subwords_with_vector"] > 20
    assert s["rows"]["neighbours"] > 100 and 0.985 <= s["eval"]["cosine_mean"] < 0.995  # measured 121, 0.9896-0.9898


def test_special_tokens_and_post_processor(tmp_path, tiny_models, targets):
    """<s> takes [CLS]'s row; a target without a post-processor gets the source's layout (and says so);
    config.json's special ids follow the new tokenizer; the source's tokenizer files are not carried over."""
    from tokenizers import Tokenizer

    src = tiny_models["bert"]
    tok = Tokenizer.from_file(str(targets["unigram"] / "tokenizer.json"))
    tok.post_processor = None
    (tmp_path / "t").mkdir()
    tok.save(str(tmp_path / "t" / "tokenizer.json"))
    (src / "vocab.txt").write_text("stale\n")
    try:
        s = _init(src, tmp_path / "t", tmp_path / "o")
    finally:
        (src / "vocab.txt").unlink()
    assert any("layout" in n and "<s>" in n for n in s["notes"]), s["notes"]
    out = Tokenizer.from_file(str(tmp_path / "o" / "tokenizer.json"))
    enc = out.encode("bonjour")
    assert enc.tokens[0] == "<s>" and enc.tokens[-1] == "</s>"
    cls_src = Tokenizer.from_file(str(src / "tokenizer.json")).token_to_id("[CLS]")
    np.testing.assert_array_equal(_table(tmp_path / "o")[out.token_to_id("<s>")], _table(src)[cls_src])
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["pad_token_id"] == out.token_to_id("<pad>")
    assert not (tmp_path / "o" / "vocab.txt").exists()
    tc = json.loads((tmp_path / "o" / "tokenizer_config.json").read_text())
    assert tc["cls_token"] == "<s>" and tc["tokenizer_class"] == "PreTrainedTokenizerFast"


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit 1 (usage: 2), nothing written
# ----------------------------------------------------------------------------------------------

def _w2v(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("content,message", [
    ("2 3\nle 0.1 0.2 0.3\nla 0.1 0.2\n", ":3: 2 values for 'la', expected 3 (from the header)"),
    ("le 0.1 0.2 0.3\nla 0.1 0.2 0.3 0.4\n", ":2: 4 values for 'la', expected 3 (as the first vector)"),
    ("le 0.1 0.2 0.3\nla 0.1 zéro 0.3\n", ":2: 'zéro' is not a number"),
    ("le 0.1 0.2 0.3\nla 0.1 nan 0.3\n", ":2: the vector of 'la' has a NaN"),
    ("3 3\nle 0.1 0.2 0.3\nla 0.1 0.2 0.3\n", "the header declares 3 vectors but the file has 2"),
    ("le 0.1 0.2 0.3\n\nla 0.1 0.2 0.3\n", ":2: empty line"),
    ("", "no word vectors"),
])
def test_broken_word_vector_files(tmp_path, tiny_bert, targets, content, message):
    wf = _w2v(tmp_path / "w.vec", content)
    r = _init(tiny_bert, targets["bpe"], tmp_path / "o", "--word-vectors", wf, ok=False)
    assert r.exit_code == 1 and message in r.stderr and str(wf) in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_bad_input(tmp_path, tiny_bert, tiny_models, targets):
    def fails(args, code, text):
        r = run_cli(["init-subwords", *map(str, args)])
        assert r.exit_code == code and text in r.stderr, (args, r.stderr)
        assert not (tmp_path / "o").exists()

    own = tiny_bert / "tokenizer.json"
    fails([tiny_bert, "--tokenizer", own, "-o", tmp_path / "o"], 1, "nothing to do")
    # a vocabulary of another script: nothing shared
    from tokenizers import Tokenizer, models, pre_tokenizers

    greek = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "αβ": 3, "##γδ": 4, "ζη": 5}
    g = Tokenizer(models.WordPiece(greek, unk_token="[UNK]"))
    g.pre_tokenizer = pre_tokenizers.Whitespace()
    g.add_special_tokens(["[UNK]", "[CLS]", "[SEP]"])
    (tmp_path / "greek").mkdir()
    g.save(str(tmp_path / "greek" / "tokenizer.json"))
    fails([tiny_bert, "--tokenizer", tmp_path / "greek", "-o", tmp_path / "o"], 1, "shares no token")
    (tmp_path / "broken.json").write_text('{"model": {"type": "Unigram", "vocab": [["a"]]}}')
    fails([tiny_bert, "--tokenizer", tmp_path / "broken.json", "-o", tmp_path / "o"], 1, "broken.json")
    t = targets["bpe"]
    fails([tiny_bert, "--tokenizer", t, "--method", "ofa", "-o", tmp_path / "o"], 2, "--word-vectors")
    fails([tiny_bert, "--tokenizer", t, "--word-vectors", "auto", "-o", tmp_path / "o"], 2, "--corpus")
    fails([tiny_bert, "--tokenizer", t, "--method", "fvt", "--word-vectors", own, "-o", tmp_path / "o"], 2, "only used by")
    fails([tiny_bert, "--tokenizer", t, "--temperature", "0", "-o", tmp_path / "o"], 2, "temperature")
    fails([tiny_bert, "--tokenizer", t, "--rank", "32", "-o", tmp_path / "o"], 1, "--rank must be between 1 and 31")
    fails([tiny_bert, "--tokenizer", tmp_path / "missing.json", "-o", tmp_path / "o"], 1, "missing.json")  # a missing file: an error
    fails([tiny_bert, "--tokenizer", t, "--word-vectors", tmp_path / "w.bin", "-o", tmp_path / "o"], 1, "no such word-vector file")
    (tmp_path / "w.bin").write_bytes(b"\x00\x01")
    fails([tiny_bert, "--tokenizer", t, "--word-vectors", tmp_path / "w.bin", "-o", tmp_path / "o"], 1, "binary word2vec")
    np.save(tmp_path / "m.npy", np.zeros((3, 4), np.float32))
    fails([tiny_bert, "--tokenizer", t, "--word-vectors", tmp_path / "m.npy", "-o", tmp_path / "o"], 1, "--word-vocab")
    (tmp_path / "m.vocab").write_text("a\nb\n")
    fails([tiny_bert, "--tokenizer", t, "--word-vectors", tmp_path / "m.npy", "-o", tmp_path / "o"], 1, "has 2 words but")
    (tmp_path / "empty.txt").write_text("\n  \n")
    fails([tiny_bert, "--tokenizer", t, "--word-vectors", "auto", "-c", tmp_path / "empty.txt", "-o", tmp_path / "o"], 1,
          "the corpus has no words")
    (tmp_path / "bad.vec").write_bytes(b"le 0.1 0.2\nl\xe9 0.3 0.4\n")
    fails([tiny_bert, "--tokenizer", t, "--word-vectors", tmp_path / "bad.vec", "-o", tmp_path / "o"], 1, "bad.vec:2: invalid UTF-8")
    assert run_cli(["quantize", tiny_bert, "--bits", "4", "-o", tmp_path / "q", "--quiet"]).exit_code == 0
    fails([tmp_path / "q", "--tokenizer", t, "-o", tmp_path / "o"], 1, "quantized")
    (tmp_path / "o2").mkdir()
    r = run_cli(["init-subwords", tiny_bert, "--tokenizer", t, "-o", tmp_path / "o2"])
    assert r.exit_code == 1 and "--force" in r.stderr


def test_min_cosine_gate(tmp_path, tiny_bert, targets):
    """--eval/--min-cosine: below the threshold, exit 3 and nothing written; above it, written with the numbers."""
    held = tmp_path / "held.txt"
    held.write_text("\n".join(corpus_lines("fr", 40, start=3000)) + "\n", encoding="utf-8")
    r = _init(tiny_bert, targets["unigram"], tmp_path / "o", "--method", "random", "--eval", held, "--min-cosine", "0.9999",
              ok=False)
    assert r.exit_code == 3 and "below --min-cosine" in r.stderr and not (tmp_path / "o").exists()
    s = _init(tiny_bert, targets["unigram"], tmp_path / "o", "--eval", held, "--min-cosine", "-1")
    assert s["eval"]["texts"] == 40 and 0.98 <= s["eval"]["cosine_mean"] < 0.995  # measured 0.9855-0.9878


def test_dry_run_reports_what_a_run_does(tmp_path, tiny_bert, targets):
    for extra in ([], ["--rank", "8"]):
        r = run_cli(["init-subwords", tiny_bert, "--tokenizer", targets["unigram"], "--dry-run", "--json", *extra])
        assert r.exit_code == 0, r.stderr
        d = json.loads(r.stdout)
        s = _init(tiny_bert, targets["unigram"], tmp_path / f"o{len(extra)}", *extra)
        assert d["dry_run"] and d["rows"] == s["rows"] and d["overlap"] == s["overlap"]
        assert d["embedding_parameters_after"] == s["embedding_parameters_after"]
    r = run_cli(["init-subwords", tiny_bert, "--tokenizer", targets["unigram"], "--dry-run"])
    assert r.exit_code == 0 and "dry run: nothing written" in r.stderr
    assert run_cli(["init-subwords", tiny_bert, "--tokenizer", targets["unigram"]]).exit_code == 2  # no -o


# ----------------------------------------------------------------------------------------------
# shared rows across the architecture fixtures' vocabularies (tests/data/arch: every table on the vocabulary axis)
# ----------------------------------------------------------------------------------------------

ARCH = Path(__file__).parent / "data" / "arch"
ARCH_MARKERS = {"modernbert": "Ġ", "qwen3": "Ġ", "qwen3-untied": "Ġ", "nomic_bert": "##", "gte": "▁", "gemma3_text": "▁"}
ARCH_TABLES = ("model.embed_tokens.weight", "embed_tokens.weight", "lm_head.weight", "embeddings.tok_embeddings.weight",
               "embeddings.word_embeddings.weight")


def _ascii_word_form(token: str, marker: str) -> tuple[bool, str] | None:
    """(starts a word, letters) of a token made of ASCII letters, read by hand from the fixture's marker (▁ and Ġ start a
    word, ## continues one): independent of SW.canonical, and enough to name shared tokens across conventions."""
    starts = token.startswith(marker)
    body = token[len(marker):] if starts else token
    return ((not starts) if marker == "##" else starts, body) if body.isascii() and body.isalpha() and len(body) > 1 else None


@pytest.mark.parametrize("name,target", [("modernbert", "qwen3"), ("nomic_bert", "gte"), ("gte", "nomic_bert"), ("gemma3_text", "gte"),
                                         ("qwen3", "modernbert"), ("qwen3-untied", "modernbert")])
def test_shared_tokens_keep_their_rows_across_marker_conventions(tmp_path, name, target):
    """A target token the source has, in the same spelling (byte-level BPE to byte-level BPE) or under another marker
    convention (WordPiece `##ed` is Unigram `ed`, `the` is `▁the`), takes the source's row in every table on the
    vocabulary axis (the untied LM head's too): 145 to 383 such word tokens per pair of fixtures."""
    out = tmp_path / "init"
    r = run_cli(["init-subwords", ARCH / name, "--tokenizer", ARCH / target / "tokenizer.json", "-o", out, "--quiet", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    src, new = open_model(ARCH / name), open_model(out)
    ts, tn = src.tokenizer.runtime(), new.tokenizer.runtime()
    forms = {_ascii_word_form(t, ARCH_MARKERS[name]): t for t in ts.get_vocab()}
    shared = {t: forms[f] for t in tn.get_vocab() if (f := _ascii_word_form(t, ARCH_MARKERS[target])) in forms and f is not None}
    assert len(shared) >= 100, len(shared)
    tables = [t for t in ARCH_TABLES if t in src.weights]
    assert tables and {t for t in ARCH_TABLES if t in new.weights} == set(tables)
    for table in tables:
        old, rows = src.weights.get(table), new.weights.get(table)
        for t, s in shared.items():
            np.testing.assert_array_equal(rows[tn.token_to_id(t)], old[ts.token_to_id(s)], err_msg=f"{table}: {t!r} from {s!r}")
