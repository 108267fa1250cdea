"""Tiny random-weight models of the modern embedding architectures, saved by the real transformers, with
reference vectors.

Run once, in an environment that has torch and transformers (never embtool's own):

    ~/.cache/embtool-peers-venv/bin/python tools/make_arch_fixtures.py [NAME ...]   # default: all

Each fixture is built with transformers' own configuration and model classes (hidden 64, 2-3 layers), its
weights drawn at random (norm weights and biases too, so a misplaced one shows), and saved with
`save_pretrained(safe_serialization=True)` into tests/data/arch/NAME/ beside a real `tokenizer.json`
trained with `tokenizers` on the repo's English corpus:

- modernbert: ModernBertModel, byte-level BPE with [CLS]/[SEP]; global attention every 2nd layer and a local
  window of 8 tokens (|i - j| <= 4), so the longer texts exercise both kinds of layer;
- nomic_bert: NomicBertModel (rotary, SwiGLU, no biases, post-norm), WordPiece;
- gte: GteModel (Alibaba GTE "new": rotary, GeGLU, biases), Unigram with <s>/</s>;
- gemma3_text: Gemma3TextModel as EmbeddingGemma uses it (bidirectional, sliding + global layers, sandwich norms),
  SentencePiece-style BPE with <bos>/<eos>;
- qwen3 (tied lm_head) and qwen3-untied: Qwen3ForCausalLM (RMSNorm, q/k norm, grouped-query attention,
  SwiGLU), byte-level BPE with its 256 byte tokens and <|endoftext|> appended (pad = eos), and the
  sentence-transformers modules of Qwen3-Embedding (last-token pooling, Normalize).

reference.npz holds, for TEXTS (texts.json), the token ids and transformers' last hidden state pooled as the
model is used: mean over real tokens for the encoders, the last real token for Qwen3 (unnormalised). Every
vector is computed three ways — each text alone, in one right-padded batch and in one left-padded batch — and
the script stops unless all three agree (1e-5 of the largest value), so the reference does not depend on the padding side.
train.txt is the text the trim-vocab tests trim on.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (GteConfig, GteModel, ModernBertConfig, ModernBertModel, NomicBertConfig,  # noqa: E402
                          NomicBertModel, Qwen3Config, Qwen3ForCausalLM)

from embtool.core.corpora import corpus_lines  # noqa: E402

OUT = ROOT / "tests" / "data" / "arch"
TRAIN = corpus_lines("en", "train", 0, 400)
LONG = ("Vocabulary trimming keeps only the tokens a language uses, and quantization stores the weights of every "
        "layer in fewer bits, so that a small device still embeds sentences as before. ") * 2
TEXTS = ["a", "Lists files.", "The quick brown fox jumps over the lazy dog.",
         "Naïve café — ünïcödé 🙂 and 日本語 text", *corpus_lines("en", "heldout", 0, 3), LONG]
SEED = 20


def train_tokenizer(kind: str, vocab: int) -> Tokenizer:
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(TRAIN, trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=specials))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(TRAIN, trainers.UnigramTrainer(vocab_size=vocab, special_tokens=specials, unk_token="<unk>"))
        s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", s), ("</s>", e)])
    elif kind == "bpe-sp":  # SentencePiece-style BPE (Gemma): ▁ word marks, <bos> text <eos>
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        tok.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials))
        bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)])
    else:  # byte-level BPE: "bpe-cls" (ModernBERT) or "bpe-eos" (Qwen3)
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # Qwen3's special tokens come after its byte-level vocabulary (ids 151643...): added after training
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "bpe-cls" else []
        tok.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        if kind == "bpe-eos":
            tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        if kind == "bpe-cls":
            cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
            tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        else:
            eos = tok.token_to_id("<|endoftext|>")
            tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
    return tok


def randomize(model: torch.nn.Module) -> None:
    """Random weights everywhere: std 0.1 for matrices, norm weights around 1, biases around 0."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            else:
                p.copy_(0.1 * r)


def pooled(model, tok: Tokenizer, texts: list[str], pad_id: int, last: bool, side: str) -> np.ndarray:
    encs = [tok.encode(t).ids for t in texts]
    L = max(len(e) for e in encs)
    ids = torch.full((len(encs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), L), dtype=torch.long)
    for r, e in enumerate(encs):
        if side == "right":
            ids[r, : len(e)] = torch.tensor(e)
            mask[r, : len(e)] = 1
        else:
            ids[r, L - len(e):] = torch.tensor(e)
            mask[r, L - len(e):] = 1
    with torch.no_grad():
        base = getattr(model, "model", model)  # Qwen3ForCausalLM -> its Qwen3Model
        h = base(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    if last:
        idx = torch.tensor([L - 1 if side == "left" else len(e) - 1 for e in encs])
        return h[torch.arange(len(encs)), idx].numpy()
    m = mask.unsqueeze(-1).float()
    return ((h * m).sum(1) / m.sum(1)).numpy()


def save(name: str, model, tok: Tokenizer, pad_id: int, last: bool, st_modules: bool = False) -> None:
    model.eval()
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(d, safe_serialization=True)
    tok.save(str(d / "tokenizer.json"))
    for junk in ("generation_config.json",):
        (d / junk).unlink(missing_ok=True)
    if st_modules:  # Qwen3-Embedding's sentence-transformers modules: last-token pooling, then Normalize
        (d / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2))
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": model.config.hidden_size,
                                                                 "pooling_mode": "lasttoken", "include_prompt": True}, indent=2))
        (d / "2_Normalize").mkdir()
    alone = np.concatenate([pooled(model, tok, [t], pad_id, last, "right") for t in TEXTS])
    right = pooled(model, tok, TEXTS, pad_id, last, "right")
    left = pooled(model, tok, TEXTS, pad_id, last, "left")
    for what, v in (("right-padded", right), ("left-padded", left)):
        diff = float(np.abs(v - alone).max() / max(1.0, np.abs(alone).max()))  # relative to the vectors' scale
        if diff > 1e-5:
            sys.exit(f"{name}: the {what} batch differs from the texts run alone by {diff:.2e}")
    ids = [tok.encode(t).ids for t in TEXTS]
    L = max(map(len, ids))
    ids_arr = np.full((len(ids), L), -1, dtype=np.int64)
    for r, e in enumerate(ids):
        ids_arr[r, : len(e)] = e
    np.savez(d / "reference.npz", vectors=alone.astype(np.float32), ids=ids_arr)
    (d / "texts.json").write_text(json.dumps(TEXTS, ensure_ascii=False, indent=1))
    (d / "train.txt").write_text("\n".join(TRAIN) + "\n")
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    print(f"{name}: {size / 1e6:.2f} MB, {len(TEXTS)} texts, longest {L} tokens, pooled "
          f"{'last token' if last else 'mean'}; left/right padding agree")


def modernbert() -> None:
    tok = train_tokenizer("bpe-cls", 700)
    cfg = ModernBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, max_position_embeddings=512, global_attn_every_n_layers=2,
                           local_attention=8, global_rope_theta=160000.0, local_rope_theta=10000.0, norm_bias=True,
                           pad_token_id=tok.token_to_id("[PAD]"), cls_token_id=tok.token_to_id("[CLS]"),
                           sep_token_id=tok.token_to_id("[SEP]"), bos_token_id=tok.token_to_id("[CLS]"),
                           eos_token_id=tok.token_to_id("[SEP]"), attn_implementation="eager")
    assert set(cfg.layer_types) == {"full_attention", "sliding_attention"}, cfg.layer_types
    m = ModernBertModel(cfg)
    randomize(m)
    save("modernbert", m, tok, cfg.pad_token_id, last=False)


def nomic_bert() -> None:
    tok = train_tokenizer("wordpiece", 600)
    cfg = NomicBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=512, type_vocab_size=2, hidden_act="silu",
                          pad_token_id=tok.token_to_id("[PAD]"), rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                          attn_implementation="eager")
    m = NomicBertModel(cfg, add_pooling_layer=False)
    randomize(m)
    save("nomic_bert", m, tok, cfg.pad_token_id, last=False)


def gte() -> None:
    tok = train_tokenizer("unigram", 600)
    cfg = GteConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=512, type_vocab_size=1, hidden_act="gelu",
                    pad_token_id=tok.token_to_id("<pad>"), rope_parameters={"rope_type": "default", "rope_theta": 160000.0},
                    attn_implementation="eager")
    m = GteModel(cfg, add_pooling_layer=False)
    randomize(m)
    save("gte", m, tok, cfg.pad_token_id, last=False)


def qwen3() -> None:
    tok = train_tokenizer("bpe-eos", 700)
    eos = tok.token_to_id("<|endoftext|>")
    for name, tied in (("qwen3", True), ("qwen3-untied", False)):
        cfg = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                          rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                          tie_word_embeddings=tied, pad_token_id=eos, eos_token_id=eos, bos_token_id=eos,
                          attn_implementation="eager")
        m = Qwen3ForCausalLM(cfg)
        randomize(m)
        if tied:
            m.tie_weights()
        save(name, m, tok, eos, last=True, st_modules=True)


def gemma3() -> None:
    """EmbeddingGemma's shape: Gemma3TextModel with bidirectional attention, sliding (window 8) and global layers,
    sandwich norms, embeddings scaled by sqrt(hidden), query_pre_attn_scalar != head_dim."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    tok = train_tokenizer("bpe-sp", 600)
    cfg = Gemma3TextConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                           max_position_embeddings=512, sliding_window=8, use_bidirectional_attention=True,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                           hidden_activation="gelu_pytorch_tanh", pad_token_id=tok.token_to_id("<pad>"),
                           eos_token_id=tok.token_to_id("<eos>"), bos_token_id=tok.token_to_id("<bos>"),
                           attn_implementation="eager")
    m = Gemma3TextModel(cfg)
    randomize(m)
    save("gemma3_text", m, tok, cfg.pad_token_id, last=False)


FIXTURES = {"modernbert": modernbert, "nomic_bert": nomic_bert, "gte": gte, "qwen3": qwen3, "gemma3_text": gemma3}


def main() -> None:
    """Every fixture, or those named on the command line (qwen3 makes both Qwen3 folders)."""
    OUT.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or FIXTURES:
        torch.manual_seed(SEED)
        FIXTURES[name]()


if __name__ == "__main__":
    main()
