"""Rotary encoders (ModernBERT, NomicBERT, GTE, EmbeddingGemma's Gemma 3) and the Qwen3 decoder against transformers.

The fixtures in tests/data/arch/ were written once by tools/make_arch_fixtures.py with the real transformers
model classes (random weights, real tokenizers); reference.npz holds the token ids and the pooled last hidden
state of each text in texts.json (mean for the encoders, last token for Qwen3), identical with left and right
padding. Here embtool, without torch, must reproduce them through safetensors and through export-onnx, and
every model-writing command must run on each fixture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

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
    from embtool.runtime.graphs import build_encoder
    from embtool.runtime.rotary_graph import detect_rotary

    m = open_model(ARCH / name)
    a = detect_rotary(m)
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
    s = json.loads(r.stdout)
    # the corpus' own tokens are fewer than the vocabulary (the extra tokens of its characters may fill it back up)
    assert s["vocab_after"] - s["extra"]["single_characters"] - s["extra"]["tokens"] < tb.get_vocab_size() and s["extra"]["mode"] == "auto"
    assert ta.get_vocab_size() <= tb.get_vocab_size()
    for line in train:
        assert tb.encode(line).tokens == ta.encode(line).tokens, line
    cfg = after.config
    rows = {k: after.weights.info(k).shape[0] for k in after.weights.keys()
            if k.endswith(("embed_tokens.weight", "tok_embeddings.weight", "word_embeddings.weight", "lm_head.weight"))}
    from embtool.core.model import tail_rows

    rows = {k: n + tail_rows(after, k) for k, n in rows.items()}  # the extra tokens' packed rows (trim-vocab --extra)
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


@pytest.mark.parametrize("name,target", [("modernbert", "qwen3"), ("nomic_bert", "gte"), ("gte", "nomic_bert"), ("gemma3_text", "gte"),
                                         ("qwen3", "modernbert"), ("qwen3-untied", "modernbert")])
def test_init_subwords_runs(name, target, tmp_path):
    """A new tokenizer (another fixture's): the output's tables, config and tokenizer agree and it embeds; between
    two byte-level BPE vocabularies (same token spelling) shared tokens keep their rows, the untied LM head's too."""
    out = tmp_path / "init"
    r = run_cli(["init-subwords", ARCH / name, "--tokenizer", ARCH / target / "tokenizer.json", "-o", out, "--quiet",
                 "--eval", _texts_file(name, tmp_path)])
    assert r.exit_code == 0, r.stderr
    src, new = open_model(ARCH / name), open_model(out)
    ts, tn = src.tokenizer.runtime(), new.tokenizer.runtime()
    V = tn.get_vocab_size()
    tables = [v for v in ("model.embed_tokens.weight", "embed_tokens.weight", "lm_head.weight", "embeddings.tok_embeddings.weight",
                          "embeddings.word_embeddings.weight") if v in src.weights]
    same_scheme = {name.split("-")[0], target} == {"qwen3", "modernbert"}
    shared = [t for t in tn.get_vocab() if ts.token_to_id(t) is not None and len(t) > 2][:20] if same_scheme else []
    assert shared or not same_scheme
    for name_t in tables:
        assert new.weights.info(name_t).shape[0] == V == new.config["vocab_size"]
        for t in shared:
            np.testing.assert_array_equal(new.weights.get(name_t)[tn.token_to_id(t)], src.weights.get(name_t)[ts.token_to_id(t)])
    assert np.isfinite(_embed(out, _texts(name)[:4])).all()


@pytest.mark.parametrize("name,change,words", [
    ("modernbert", {"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "rotary scaling"),
    ("qwen3", {"use_sliding_window": True, "sliding_window": 4}, "sliding-window"),
    ("nomic_bert", {"rotary_emb_fraction": 0.5}, "partial or interleaved rotary"),
    ("nomic_bert", {"prenorm": True}, "prenorm"),
    ("gte", {"model_type": "new", "rope_scaling": {"type": "ntk", "factor": 2.0}}, "rotary scaling"),
    ("gte", {"logn_attention_scale": True}, "logn attention"),
    ("gemma3_text", {"attn_logit_softcapping": 50.0}, "soft-capping"),
])
def test_unsupported_variants_refused(name, change, words, tmp_path):
    d = tmp_path / name
    shutil.copytree(ARCH / name, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    for args in (["embed", d, "hello"], ["export-onnx", d, "-o", tmp_path / "x"]):
        r = run_cli(args)
        assert r.exit_code == 1, r.stdout
        assert r.stderr.startswith("Error: ") and words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
