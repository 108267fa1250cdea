"""Rotary encoders (ModernBERT, NomicBERT, GTE, EmbeddingGemma's Gemma 3) and the Qwen3 decoder against transformers.

The fixtures in tests/data/arch/ were written once by tools/make_arch_fixtures.py with the real transformers
model classes (random weights, real tokenizers); reference.npz holds the token ids and the pooled last hidden
state of each text in texts.json (mean for the encoders, last token for Qwen3), identical with left and right
padding. Here embtool, without torch, must reproduce them through safetensors and through export-onnx, and
every model-writing command must run on each fixture (trim-vocab also on their factorized and quantized forms).

Every family is a description in embtool/core/architectures.py; the config.json keys it reads are checked when a model
is opened: the last tests set them to wrong types and impossible values, by hand and with hypothesis, for each family.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from embtool.core.model import open_model
from embtool.runtime.encoder import EmbedSettings, Encoder, make_session

ARCH = Path(__file__).parent / "data" / "arch"
NAMES = ["modernbert", "nomic_bert", "gte", "gemma3_text", "qwen3", "qwen3-untied"]
MAX_ABS, MIN_COS = 1e-4, 0.9999


def _texts(name: str) -> list[str]:
    return json.loads((ARCH / name / "texts.json").read_text(encoding="utf-8"))


def _texts_file(name: str, tmp_path: Path) -> Path:
    p = tmp_path / "texts.txt"
    p.write_text("\n".join(_texts(name)) + "\n", encoding="utf-8")
    return p


def _ref(name: str):
    return np.load(ARCH / name / "reference.npz")


def _embed(model, texts) -> np.ndarray:
    return Encoder(open_model(model), EmbedSettings(normalize=False)).embed(texts)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    diff, cos = float(np.abs(got - want).max()), float(_cos(got, want).min())
    assert diff <= MAX_ABS and cos >= MIN_COS, f"{what}: max abs diff {diff:.2e}, min cosine {cos:.6f}"


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_matches_transformers_ids(name):
    enc = Encoder(open_model(ARCH / name))
    ids = enc.tokenize(_texts(name))
    assert [list(r[r >= 0]) for r in _ref(name)["ids"]] == ids


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_equals_transformers(name, tmp_path):
    texts = _texts(name)
    _assert_close(_embed(ARCH / name, texts), _ref(name)["vectors"], f"{name} (safetensors)")
    # through the CLI too: pooling from the model (last token for Qwen3 from its sentence-transformers config)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    r = run_cli(["embed", ARCH / name, "-i", tmp_path / "t.txt", "--no-normalize", "-o", tmp_path / "e.npy", "--quiet"])
    assert r.exit_code == 0, r.stderr
    _assert_close(np.load(tmp_path / "e.npy"), _ref(name)["vectors"], f"{name} (embtool embed)")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("portable", [False, True])
def test_export_onnx_equals_transformers(name, portable, tmp_path):
    out = tmp_path / "onnx"
    r = run_cli(["export-onnx", ARCH / name, "-o", out, "--quiet", *(["--portable"] if portable else [])])
    assert r.exit_code == 0, r.stderr
    assert open_model(out).format == "onnx"
    _assert_close(_embed(out, _texts(name)), _ref(name)["vectors"], f"{name} (export-onnx)")


@pytest.mark.parametrize("name", ["qwen3", "qwen3-untied", "modernbert", "gemma3_text"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side(name, side):
    """The graph takes positions from the mask: a left-padded batch gives the same vectors as a right-padded one
    (last-token pooling reads the last column when padding is on the left)."""
    m = open_model(ARCH / name)
    sess, feeds = make_session(m)
    ref = _ref(name)
    seqs = [list(r[r >= 0]) for r in ref["ids"]]
    L = max(map(len, seqs))
    ids = np.full((len(seqs), L), int(m.config["pad_token_id"]), np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        sl = slice(L - len(s), L) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    feeds = {**feeds, "input_ids": ort.OrtValue.ortvalue_from_numpy(ids),
             "attention_mask": ort.OrtValue.ortvalue_from_numpy(mask)}
    h = sess.run_with_ort_values(["last_hidden_state"], feeds)[0].numpy()
    if name.startswith("qwen3"):
        last = [L - 1 if side == "left" else len(s) - 1 for s in seqs]
        got = h[np.arange(len(seqs)), last]
    else:
        got = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    _assert_close(got, ref["vectors"], f"{name} ({side} padding)")


def _padded(seqs: list[list[int]], pad: int, side: str, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    L = length or max(map(len, seqs))
    ids = np.full((len(seqs), L), pad, np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        sl = slice(L - len(s), L) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


def _ops(graph, op: str) -> list:
    return [n for n in graph.node if n.op_type == op]


@pytest.mark.parametrize("name", NAMES)
def test_fused_rotary_equals_portable(name, monkeypatch):
    """The default graph rotates q and k with onnxruntime's RotaryEmbedding (integer positions, a cos/sin cache
    per theta) and, in the RMS families with rotary_graph.FUSE_SKIP_RMSNORM, fuses each residual add with the RMSNorm of
    its sum into one SkipSimplifiedLayerNormalization; --portable keeps the standard ops. Both give
    the same hidden states on right- and left-padded batches, and on a batch longer than the model's
    max_position_embeddings (the cache follows the batch length)."""
    from embtool.runtime import rotary_graph
    from embtool.runtime.encoder import graph_session
    from embtool.runtime.graphs import build_encoder, detect_arch

    m = open_model(ARCH / name)
    a = detect_arch(m)
    # the Skip fusion is off by default (measured no faster than Add + SimplifiedLayerNormalization); switched on
    # here so that the fused form stays checked against the standard ops and the reference vectors
    monkeypatch.setattr(rotary_graph, "FUSE_SKIP_RMSNORM", True)
    fused, portable = build_encoder(m, fused=True), build_encoder(m, fused=False)
    rope = _ops(fused.graph, "RotaryEmbedding")
    assert len(rope) == 2 * a.layers and {n.domain for n in rope} == {"com.microsoft"}
    assert not [n for n in portable.graph.node if n.op_type == "RotaryEmbedding" or n.domain not in ("", "ai.onnx")]
    # residual add + RMSNorm: both adds of every layer (attention -> MLP norm, MLP -> next layer's or the final norm)
    skip = _ops(fused.graph, "SkipSimplifiedLayerNormalization")
    if a.family.rms:
        assert len(skip) == 2 * a.layers and {n.domain for n in skip} == {"com.microsoft"}
        assert {n.attribute[0].f for n in skip} == {np.float32(a.eps)} and all(len(n.input) == 3 for n in skip)
        made_by = {o: n.op_type for n in fused.graph.node for o in n.output}
        # no residual add is left before an RMSNorm (the remaining ones norm q/k heads, the embeddings, Gemma's block outputs)
        assert not [n for n in _ops(fused.graph, "SimplifiedLayerNormalization") if made_by.get(n.input[0]) == "Add"]
        # each sum feeds the next one (or nothing after the last layer): the residual stream goes through input_skip_bias_sum
        sums = [n.output[3] for n in skip]
        assert [n.input[0] for n in skip[1:]] == sums[:-1]
        monkeypatch.setattr(rotary_graph, "FUSE_SKIP_RMSNORM", False)  # switched off: Add + SimplifiedLayerNormalization again
        off = build_encoder(m, fused=True)
        assert not _ops(off.graph, "SkipSimplifiedLayerNormalization")
        assert len(_ops(off.graph, "SimplifiedLayerNormalization")) == len(_ops(fused.graph, "SimplifiedLayerNormalization")) + len(skip)
    else:
        assert not skip
    assert not _ops(portable.graph, "SkipSimplifiedLayerNormalization")
    caches = {n.output[0] for n in fused.graph.node if n.op_type == "Cos"}
    assert len(caches) == len(set(a.thetas))  # one cache per theta, shared by the layers
    (sf, ff), (sp, fp) = graph_session(fused), graph_session(portable)
    ref = _ref(name)
    seqs = [list(r[r >= 0]) for r in ref["ids"]]
    pad = int(m.config.get("pad_token_id") or 0)
    longer = int(m.config["max_position_embeddings"]) + 40
    for side, length in (("right", None), ("left", None), ("left", longer)):
        rows = seqs if length is None else seqs + [(max(seqs, key=len) * length)[:length]]  # positions past the limit
        ids, mask = _padded(rows, pad, side, length)
        x = {"input_ids": ort.OrtValue.ortvalue_from_numpy(ids), "attention_mask": ort.OrtValue.ortvalue_from_numpy(mask)}
        hf = sf.run_with_ort_values(["last_hidden_state"], {**ff, **x})[0].numpy()
        hp = sp.run_with_ort_values(["last_hidden_state"], {**fp, **x})[0].numpy()
        real = mask.astype(bool)
        diff = float(np.abs(hf[real] - hp[real]).max())
        assert diff < 1e-4, f"{name} ({side} padding, {ids.shape[1]} columns): fused vs portable max abs diff {diff:.2e}"
        if length is None:  # and the reference: mean pooling, or the last real token for Qwen3
            if name.startswith("qwen3"):
                last = [ids.shape[1] - 1 if side == "left" else len(s) - 1 for s in seqs]
                got = hf[np.arange(len(seqs)), last]
            else:
                got = (hf * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            _assert_close(got, ref["vectors"], f"{name} fused ({side} padding)")


@pytest.mark.parametrize("name", NAMES)
def test_trim_vocab_keeps_tokenization(name, tmp_path):
    train = (ARCH / name / "train.txt").read_text(encoding="utf-8").splitlines()[:40]
    (tmp_path / "c.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    out = tmp_path / "trim"
    r = run_cli(["trim-vocab", ARCH / name, "-c", tmp_path / "c.txt", "-o", out, "--json", "--eval", _texts_file(name, tmp_path)])
    assert r.exit_code == 0, r.stderr
    before, after = open_model(ARCH / name), open_model(out)
    tb, ta = before.tokenizer.runtime(), after.tokenizer.runtime()
    assert ta.get_vocab_size() < tb.get_vocab_size()
    for line in train:
        assert tb.encode(line).tokens == ta.encode(line).tokens, line
    cfg = after.config
    rows = {k: after.weights.info(k).shape[0] for k in after.weights.keys()
            if k.endswith(("embed_tokens.weight", "tok_embeddings.weight", "word_embeddings.weight", "lm_head.weight"))}
    assert set(rows.values()) == {ta.get_vocab_size()} == {cfg["vocab_size"]}
    assert ("lm_head.weight" in rows) == (name == "qwen3-untied")
    for key in ("pad_token_id", "eos_token_id", "bos_token_id", "cls_token_id", "sep_token_id"):
        if isinstance(before.config.get(key), int):  # the same special token under its new id
            assert ta.id_to_token(cfg[key]) == tb.id_to_token(before.config[key]), key
    if name.startswith("qwen3") or name == "modernbert":  # byte-level BPE: every byte stays, every text tokenizes
        from tokenizers.pre_tokenizers import ByteLevel

        assert set(ByteLevel.alphabet()) <= set(ta.get_vocab())
        odd = "Zürich 🙂 ∑ 日本"
        assert ta.decode(ta.encode(odd).ids).strip() == odd
        tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        vocab = tj["vocab"]
        for merge in tj["merges"]:  # merges closure: every merge's parts and result are kept tokens
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            assert left in vocab and right in vocab and left + right in vocab, merge
    lines = train[:12]
    _assert_close(_embed(out, lines), _embed(ARCH / name, lines), f"{name} trimmed vs original")
    if name == "qwen3-untied":  # the LM head keeps the rows of the kept tokens, in order
        kept = [tb.token_to_id(ta.id_to_token(i)) for i in range(ta.get_vocab_size())]
        np.testing.assert_array_equal(after.weights.get("lm_head.weight"), before.weights.get("lm_head.weight")[kept])


@pytest.mark.parametrize("name", NAMES)
def test_quantize_runs_and_reports(name, tmp_path):
    r = run_cli(["quantize", ARCH / name, "--bits", "8", "--group-size", "16", "--method", "rtn", "-o", tmp_path / "q8", "--json",
                 "--eval", _texts_file(name, tmp_path)])
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["eval"]
    assert ev["cosine_mean"] > 0.99, ev  # 8 bits: close to the float model
    v = _embed(tmp_path / "q8", _texts(name))
    assert _cos(v, _ref(name)["vectors"]).min() > 0.98
    for flags in ([], ["--portable"]):  # MatMulNBits / GatherBlockQuantized, or blocked DequantizeLinear
        out = tmp_path / ("onnx" + "".join(flags))
        assert run_cli(["export-onnx", tmp_path / "q8", "-o", out, "--quiet", *flags]).exit_code == 0
        got = _embed(out, _texts(name))
        if flags:  # float32 DequantizeLinear + MatMul sums in another order than MatMulNBits (max abs diff ~5e-4 here)
            assert _cos(got, v).min() >= MIN_COS, f"{name} 8-bit exported {flags}"
        else:
            _assert_close(got, v, f"{name} 8-bit exported")


@pytest.mark.parametrize("name", NAMES)
def test_factorize_runs_and_reports(name, tmp_path):
    r = run_cli(["factorize", ARCH / name, "--rank", "64", "-o", tmp_path / "f", "--json", "--eval", _texts_file(name, tmp_path)])
    if name == "qwen3-untied":  # an untied LM head shares the vocabulary axis: refused up front, one line
        assert r.exit_code == 1 and r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "f").exists()
        return
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["eval"]
    assert ev["cosine_min"] > 0.9999, ev  # rank = hidden size: lossless up to float error
    _assert_close(_embed(tmp_path / "f", _texts(name)), _ref(name)["vectors"], f"{name} factorized at full rank")


# config.json as the hub's checkpoints write it (transformers 4.x keys, the remote-code configs), and Qwen3-Embedding's
# own layout (Qwen3Model weights without the "model." prefix, no LM head)
HUB_CONFIGS = {
    "modernbert": ({"global_attn_every_n_layers": 2, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0},
                   ("layer_types", "rope_parameters")),
    "nomic_bert": ({"n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": 96, "rotary_emb_base": 1000.0, "rotary_emb_fraction": 1.0,
                    "rotary_emb_interleaved": False, "layer_norm_epsilon": 1e-12, "activation_function": "swiglu",
                    "prenorm": False, "causal": False},
                   ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "rope_parameters",
                    "layer_norm_eps", "hidden_act", "head_dim")),
    "gte": ({"model_type": "new", "rope_theta": 160000.0, "rope_scaling": None, "layer_norm_type": "layer_norm",
             "position_embedding_type": "rope", "logn_attention_scale": False}, ("rope_parameters",)),
    "gemma3_text": ({"sliding_window_pattern": 2, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None},
                    ("layer_types", "rope_parameters")),
    "qwen3": ({"rope_theta": 1000000.0, "rope_scaling": None, "architectures": ["Qwen3Model"]}, ("layer_types", "rope_parameters")),
}


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_hub_config_spellings(name, tmp_path):
    d = tmp_path / name
    shutil.copytree(ARCH / name, d)
    add, drop = HUB_CONFIGS[name]
    cfg = json.loads((d / "config.json").read_text())
    cfg = {**{k: v for k, v in cfg.items() if k not in drop}, **add}
    (d / "config.json").write_text(json.dumps(cfg))
    if name == "qwen3":
        from safetensors.numpy import load_file, save_file

        w = load_file(d / "model.safetensors")
        save_file({k.removeprefix("model."): v for k, v in w.items() if k != "lm_head.weight"}, d / "model.safetensors",
                  metadata={"format": "pt"})
    _assert_close(_embed(d, _texts(name)), _ref(name)["vectors"], f"{name} with the hub's config spelling")


INIT_PAIRS = [("modernbert", "qwen3"), ("nomic_bert", "gte"), ("gte", "nomic_bert"), ("gemma3_text", "gte"), ("qwen3", "modernbert"),
              ("qwen3-untied", "modernbert")]
SAME_SCHEME = [pair for pair in INIT_PAIRS if {pair[0].split("-")[0], pair[1]} == {"qwen3", "modernbert"}]  # byte-level BPE both


def _init_subwords(name: str, target: str, tmp_path: Path) -> Path:
    out = tmp_path / "init"
    r = run_cli(["init-subwords", ARCH / name, "--tokenizer", ARCH / target / "tokenizer.json", "-o", out, "--quiet",
                 "--eval", _texts_file(name, tmp_path)])
    assert r.exit_code == 0, r.stderr
    return out


def _tables(model) -> list[str]:
    return [v for v in ("model.embed_tokens.weight", "embed_tokens.weight", "lm_head.weight", "embeddings.tok_embeddings.weight",
                        "embeddings.word_embeddings.weight") if v in model.weights]


@pytest.mark.parametrize("name,target", INIT_PAIRS)
def test_init_subwords_runs(name, target, tmp_path):
    """A new tokenizer (another fixture's): the output's tables, config and tokenizer agree and it embeds."""
    out = _init_subwords(name, target, tmp_path)
    src, new = open_model(ARCH / name), open_model(out)
    V = new.tokenizer.runtime().get_vocab_size()
    assert _tables(src) and all(new.weights.info(t).shape[0] == V == new.config["vocab_size"] for t in _tables(src))
    assert np.isfinite(_embed(out, _texts(name)[:4])).all()


@pytest.mark.parametrize("name,target", SAME_SCHEME)
def test_init_subwords_copies_shared_rows(name, target, tmp_path):
    """Between two byte-level BPE vocabularies (the same token spelling) shared tokens keep their rows, in every table
    on the vocabulary axis (the untied LM head's too)."""
    out = _init_subwords(name, target, tmp_path)
    src, new = open_model(ARCH / name), open_model(out)
    ts, tn = src.tokenizer.runtime(), new.tokenizer.runtime()
    shared = [t for t in tn.get_vocab() if ts.token_to_id(t) is not None and len(t) > 2][:20]
    assert len(shared) == 20
    for table in _tables(src):
        for t in shared:
            np.testing.assert_array_equal(new.weights.get(table)[tn.token_to_id(t)], src.weights.get(table)[ts.token_to_id(t)])


@pytest.mark.parametrize("name,change,words", [
    ("modernbert", {"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "rotary scaling"),
    ("qwen3", {"use_sliding_window": True, "sliding_window": 4}, "sliding-window"),
    ("nomic_bert", {"rotary_emb_fraction": 0.5}, "partial or interleaved rotary"),
    ("nomic_bert", {"prenorm": True}, "prenorm"),
    ("gte", {"model_type": "new", "rope_scaling": {"type": "ntk", "factor": 2.0}}, "rotary scaling"),
    ("gte", {"logn_attention_scale": True}, "logn attention"),
    ("gemma3_text", {"attn_logit_softcapping": 50.0}, "soft-capping"),
    ("gemma3_text", {"hidden_activation": "mish"}, "activation 'mish' is not supported"),
    ("bert", {"position_embedding_type": "relative_key"}, "absolute positions only"),  # was built as absolute: wrong vectors
    ("distilbert", {"activation": "mish"}, "activation 'mish' is not supported"),
])
def test_unsupported_variants_refused(name, change, words, tmp_path, tiny_models):
    """A valid config the builders do not reproduce: refused when the graph is built (so `inspect` still describes it
    and --force-unsupported can write it, unchecked), one `Error:` line naming config.json."""
    d = tmp_path / name
    shutil.copytree(_family_model(name, tiny_models), d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    assert run_cli(["inspect", d]).exit_code == 0
    for args in (["embed", d, "hello"], ["export-onnx", d, "-o", tmp_path / "x"]):
        r = run_cli(args)
        assert r.exit_code == 1, r.stdout
        assert r.stderr.startswith(f"Error: {d / 'config.json'}: ") and words in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# trim-vocab of a factorized or quantized model: the registry knows each family's token table in every stored form
# ----------------------------------------------------------------------------------------------

FACTORIZE, QUANTIZE = ["factorize", "--rank", "16"], ["quantize", "--bits", "8", "--group-size", "16", "--method", "rtn"]
FORMS = {"factorized": [FACTORIZE], "quantized": [QUANTIZE], "factorized+quantized": [FACTORIZE, QUANTIZE]}
FORM_CASES = [(n, f) for n in NAMES for f in ("factorized", "quantized") if (n, f) != ("qwen3-untied", "factorized")]


@pytest.mark.parametrize("name,form", FORM_CASES + [("qwen3", "factorized+quantized"), ("modernbert", "factorized+quantized")])
def test_trim_vocab_of_factorized_or_quantized_model(name, form, tmp_path):
    """Every stored part of the token table (factor F; packed codes, scales, zero points; both for a packed F) and of an
    untied LM head keeps the rows of the kept tokens, in order; the quantization record says the new row count; the
    trimmed model embeds the corpus texts exactly as before. (An untied LM head is not factorized:
    test_factorize_runs_and_reports.)"""
    from embtool.core.model import find_vocab_tensors
    from embtool.core.qrecord import read_record

    src, out = ARCH / name, tmp_path / "trim"
    for i, (command, *args) in enumerate(FORMS[form]):
        assert run_cli([command, src, *args, "-o", tmp_path / f"{i}", "--no-eval", "--quiet"]).exit_code == 0
        src = tmp_path / f"{i}"
    lines = (ARCH / name / "train.txt").read_text(encoding="utf-8").splitlines()[:40]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = run_cli(["trim-vocab", src, "-c", tmp_path / "c.txt", "-o", out, "--json", "--eval", tmp_path / "c.txt"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["vocab_after"] < s["vocab_before"] and s["eval"]["identical_tokenization"] == 1.0
    before, after = open_model(src), open_model(out)
    tb, ta = before.tokenizer.runtime(), after.tokenizer.runtime()
    kept = [tb.token_to_id(ta.id_to_token(i)) for i in range(ta.get_vocab_size())]
    vb, va = find_vocab_tensors(before), find_vocab_tensors(after)
    parts = (1 if form == "factorized" else 3) * (2 if name == "qwen3-untied" else 1)  # F; codes, scales, zero points
    assert [v.name for v in va] == [v.name for v in vb] and len(vb) == parts, [v.name for v in vb]
    assert vb[0].name.endswith(".qweight" if "quantized" in form else ".factor_F") and ("factor_F" in vb[0].name) == ("factorized" in form)
    for v in vb:
        np.testing.assert_array_equal(after.weights.get(v.name), before.weights.get(v.name)[kept])
    if "quantized" in form:
        rec = read_record(after.weights.metadata)
        assert {rec[v.name.rsplit(".", 1)[0]]["shape"][0] for v in vb} == {len(kept)} == {after.config["vocab_size"]}
    if "factorized" in form:  # P is not on the vocabulary axis: kept as it is
        P = vb[0].name.split(".factor_F")[0] + ".factor_P"
        np.testing.assert_array_equal(after.weights.get(P), before.weights.get(P))
    np.testing.assert_array_equal(_embed(out, lines), _embed(src, lines))


# ----------------------------------------------------------------------------------------------
# config.json values: refused when the model is opened, or they run and embed finite values (issue 28 items 6 and 9)
# ----------------------------------------------------------------------------------------------

def _family_model(name: str, tiny_models: dict[str, Path]) -> Path:
    """A fixture of each family: the rotary ones here, BERT / XLM-R / DistilBERT from conftest, a tiny MPNet."""
    if name in tiny_models:
        return tiny_models[name]
    return Path(__file__).parent / "data" / "st_formats" / "mpnet-mean-normalize" if name == "mpnet" else ARCH / name


def _with_config(src: Path, dst: Path, change: dict) -> Path:
    """A copy of model `src` whose config.json has `change` (a value None removes the key; "a.b" sets a nested key)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in change.items():
        *outer, last = key.split(".")
        d = cfg
        for k in outer:
            d = d[k]
        if value is None:
            d.pop(last, None)
        else:
            d[last] = value
    (dst / "config.json").write_text(json.dumps(cfg))  # NaN and Infinity as Python's json writes and reads them
    return dst


CONFIG_CASES = [  # (fixture, change, the error's words after "<folder>/config.json")
    ("qwen3", {"num_key_value_heads": "2"}, ": num_key_value_heads = '2' is not an integer"),
    ("qwen3", {"rope_theta": "1000000"}, ": rope_theta = '1000000' is not a finite number"),
    ("qwen3", {"rope_parameters.rope_theta": 0}, ": rope_parameters.rope_theta = 0 is out of range (it must be between 1 and 1e+30)"),
    ("qwen3", {"rope_parameters.rope_theta": -10000.0}, ": rope_parameters.rope_theta = -10000.0 is out of range"),
    ("qwen3", {"rms_norm_eps": "1e-6"}, ": rms_norm_eps = '1e-6' is not a finite number"),
    ("qwen3", {"rms_norm_eps": 0}, ": rms_norm_eps = 0 is out of range"),
    ("qwen3", {"rms_norm_eps": float("nan")}, ": rms_norm_eps = nan is not a finite number"),
    ("qwen3", {"num_attention_heads": True}, ": num_attention_heads = True is not a sensible size"),
    ("qwen3", {"head_dim": 16.0}, ": head_dim = 16.0 is not an integer"),
    ("qwen3", {"head_dim": [16]}, ": head_dim = [16] is not an integer"),
    ("qwen3", {"head_dim": 8}, " contradicts the weights: hidden_size = 64, num_attention_heads = 4, num_key_value_heads = 2, "
                               "head_dim = 8 make model.layers.0.self_attn.q_proj [32, 64], but the weights hold [64, 64]"),
    ("qwen3", {"num_key_value_heads": None}, " contradicts the weights: hidden_size = 64, num_attention_heads = 4, "
                                             "num_key_value_heads (not given) = 4, head_dim = 16 make model.layers.0.self_attn.k_proj [64, 64]"),
    ("qwen3", {"layer_types": "full_attention"}, ": layer_types = 'full_attention' is not a list"),
    ("qwen3", {"rope_scaling": [2.0]}, ": rope_scaling = [2.0] is not an object"),
    ("qwen3", {"pad_token_id": 703}, " contradicts the weights: pad_token_id = 703 but the token-embedding table has 703 rows"),
    ("gemma3_text", {"query_pre_attn_scalar": 0}, ": query_pre_attn_scalar = 0 is out of range"),
    ("gemma3_text", {"sliding_window_pattern": 0, "layer_types": None}, ": sliding_window_pattern = 0 is out of range"),
    ("gemma3_text", {"sliding_window": 0}, ": sliding_window = 0 is out of range"),
    ("gemma3_text", {"rope_parameters.sliding_attention.rope_theta": 0.0},
     ": rope_parameters.sliding_attention.rope_theta = 0.0 is out of range"),
    ("gemma3_text", {"use_bidirectional_attention": "true"}, ": use_bidirectional_attention = 'true' is not true or false"),
    ("modernbert", {"global_attn_every_n_layers": 0, "layer_types": None}, ": global_attn_every_n_layers = 0 is out of range"),
    ("modernbert", {"local_attention": 0}, ": local_attention = 0 is out of range"),
    ("modernbert", {"norm_eps": -1e-05}, ": norm_eps = -1e-05 is out of range"),
    ("modernbert", {"layer_types": ["full_attention", "sliding_attention"]}, ": layer_types = ['full_attention', 'sliding_attention'] "
                                                                             "does not list full/sliding attention for 3 layers"),
    ("nomic_bert", {"rotary_emb_fraction": "1"}, ": rotary_emb_fraction = '1' is not a finite number"),
    ("gte", {"layer_norm_eps": float("inf")}, ": layer_norm_eps = inf is not a finite number"),
    ("bert", {"layer_norm_eps": [1e-12]}, ": layer_norm_eps = [1e-12] is not a finite number"),
    ("bert", {"hidden_act": 1}, ": hidden_act = 1 is not a string"),
    ("bert", {"max_position_embeddings": 1}, ": max_position_embeddings = 1 leaves no room for a text of two tokens"),
    ("xlm-roberta", {"pad_token_id": "1"}, ": pad_token_id = '1' is not an integer"),
    ("xlm-roberta", {"pad_token_id": 65, "max_position_embeddings": None}, " contradicts the weights: pad_token_id = 65 sets "
                                                                          "positions past the 66 rows"),
    ("xlm-roberta", {"pad_token_id": 64}, ": max_position_embeddings = 66 leaves no room for a text of two tokens after the 65 "
                                          "positions that pad_token_id = 64 takes"),
    ("distilbert", {"activation": False}, ": activation = False is not a string"),
    ("mpnet", {"num_attention_heads": 8}, " contradicts the weights: num_attention_heads = 8 but "
                                          "encoder.relative_attention_bias.weight is [32, 4]"),
]


@pytest.mark.parametrize("name,change,words", CONFIG_CASES, ids=[f"{n}-{'-'.join(c)}" for n, c, _ in CONFIG_CASES])
def test_config_values_refused_at_open(name, change, words, tmp_path, tiny_models):
    """A value of the wrong type, out of range, or contradicted by the weights: one `Error:` line naming the file and the
    key, exit 1, from every command (here inspect, embed and quantize), nothing written."""
    d = _with_config(_family_model(name, tiny_models), tmp_path / name, change)
    for args in (["inspect", d], ["embed", d, "hello"], ["quantize", d, "--bits", "8", "-o", tmp_path / "q"]):
        r = run_cli(args)
        assert r.exit_code == 1 and r.stdout == "", (args, r.stdout)
        assert r.stderr.startswith(f"Error: {d / 'config.json'}{words}") and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("name,change", [
    ("qwen3", {"rms_norm_eps": None, "rope_parameters": None}),  # null: the key not given (transformers' configs write it so)
    ("gemma3_text", {"sliding_window": None, "attn_logit_softcapping": None}),
    ("bert", {"layer_norm_eps": None, "pad_token_id": None}),
    ("qwen3", {"rms_norm_eps": 1, "rope_parameters.rope_theta": 10000}),  # JSON integers for float values
    ("modernbert", {"norm_eps": 1, "local_attention": 3}),
])
def test_config_values_that_run(name, change, tmp_path, tiny_models):
    """Values that are odd but possible give the family's default or their own value, and finite embeddings."""
    d = _with_config(_family_model(name, tiny_models), tmp_path / name, {k: "null" if v is None else v for k, v in change.items()})
    (d / "config.json").write_text((d / "config.json").read_text().replace('"null"', "null"))
    assert np.isfinite(_embed(d, ["a", "The quick brown fox jumps over the lazy dog."])).all()


FAMILY_FIXTURES = ["modernbert", "nomic_bert", "gte", "gemma3_text", "qwen3", "bert", "xlm-roberta", "distilbert", "mpnet"]
FUZZ = int(os.environ.get("EMBTOOL_FUZZ_EXAMPLES", "25"))  # per family; `make fuzz` style runs set more
HOSTILE = st.one_of(  # wrong types and impossible values, and plausible ones
    st.none(), st.booleans(), st.integers(-2**63, 2**63), st.sampled_from([0, 1, 2, -1, 3, 7, 8, 16, 63, 64, 65, 2**31, 2**53]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 1.5, 1e-7, 1e7]),
    st.text(max_size=6), st.sampled_from(["1e6", "2", "gelu", "silu", "full_attention", "sliding_attention", "yarn", "default"]),
    st.lists(st.sampled_from(["full_attention", "sliding_attention", 1, None]), max_size=4),
    st.dictionaries(st.sampled_from(["rope_theta", "rope_type", "type", "full_attention", "sliding_attention"]),
                    st.sampled_from([0, -5, 1e4, "default", "yarn", None, {}]), max_size=3))


def _config_paths(cfg: dict) -> list[tuple[str, ...]]:
    """Every key the family reads (each spelling, present or not), model_type, and the nested keys of those that hold
    objects (rope_parameters and its per-layer-type entries)."""
    from embtool.core.architectures import family_of

    read = family_of(cfg).config_keys()
    paths = [(k,) for k in read] + [("model_type",)]
    for k in (k for k in read if isinstance(cfg.get(k), dict)):
        for k2, v2 in cfg[k].items():
            paths += [(k, k2)] + [(k, k2, k3) for k3 in (v2 if isinstance(v2, dict) else ())]
    return paths


@pytest.mark.parametrize("name", FAMILY_FIXTURES)
def test_fuzz_config_values(name, tmp_path_factory, tiny_models):
    """Any key a family reads set to any value (hypothesis): refused when the model is opened (a named error naming
    config.json and the key), refused when the graph is built (a variant the builders do not reproduce, naming
    config.json), or the model runs and gives finite embeddings — never a traceback, never NaN."""
    from embtool.core.errors import EmbtoolError, Unsupported

    src = _family_model(name, tiny_models)
    cfg = json.loads((src / "config.json").read_text())
    outcomes: set[str] = set()

    @settings(max_examples=FUZZ, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(_config_paths(cfg)), value=HOSTILE)
    def one(path, value):
        d = _with_config(src, tmp_path_factory.mktemp("cfg") / name, {".".join(path): "null" if value is None else value})
        (d / "config.json").write_text((d / "config.json").read_text().replace('"null"', "null"))  # None removes a key
        where = str(d / "config.json")
        try:
            m = open_model(d)
        except EmbtoolError as e:
            assert str(e).startswith(where) and path[0] in str(e) and "\n" not in str(e), (path, value, str(e))
            outcomes.add("refused")
            return
        try:
            vectors = Encoder(m, EmbedSettings(normalize=False)).embed(["a", "The quick brown fox jumps over the lazy dog."])
        except Unsupported as e:
            assert str(e).startswith(where), (path, value, str(e))
            outcomes.add("unsupported")
            return
        assert np.isfinite(vectors).all(), (path, value)
        outcomes.add("ran")

    one()
    assert "refused" in outcomes  # the hostile values reach the checks
