"""Tiny models saved by the real sentence-transformers in each folder format, with their embeddings.

Run once, in an environment that has torch, transformers and sentence-transformers (never embtool's own):

    ~/.cache/embtool-peers-venv/bin/python tools/make_st_fixtures.py

For each fixture a 2-layer BERT (hidden 32, WordPiece tokenizer trained on the repo's corpora) is wrapped
in sentence-transformers modules (Transformer, Pooling in some mode, optionally Dense and Normalize,
prompts) and saved with `SentenceTransformer.save` into tests/data/st_formats/NAME/. The "old-" fixtures
are then rewritten into the files releases before 6.0 write (modules.json types
`sentence_transformers.models.X`, one boolean per pooling mode with `word_embedding_dimension`,
`max_seq_length` in sentence_bert_config.json, the old Dense config). Every folder is loaded back from
disk by sentence-transformers and its embeddings of TEXTS (each prompt name in turn) are written to
tests/data/st_formats/reference.json, which tests/test_st_formats.py compares embtool against.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.models import Dense, Normalize, Pooling, Transformer  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizerFast, MPNetConfig, MPNetModel, MPNetTokenizerFast  # noqa: E402

from embtool.core.corpora import corpus_lines  # noqa: E402

OUT = ROOT / "tests" / "data" / "st_formats"
LONG = ("Vocabulary trimming keeps only the tokens a language uses, and quantization stores the weights of every "
        "layer in fewer bits, so that a model shipped to a small device still embeds sentences as before. ") * 3
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Lists files.", "a",
         "Affiche la liste des fichiers du répertoire courant.", LONG, LONG[:300]]

# name -> (pooling_mode, include_prompt, dense, normalize, prompts, default_prompt_name, max_seq_length, tokenizer max, old)
FIXTURES = {
    "old-mean-normalize": ("mean", True, None, True, None, None, 128, 512, True),
    "old-cls": ("cls", True, None, False, None, None, 64, 512, True),
    "old-max": ("max", True, None, False, None, None, None, 20, True),
    "old-lasttoken": ("lasttoken", True, None, True, None, None, 64, 512, True),
    "old-mean-sqrt-len": ("mean_sqrt_len_tokens", True, None, False, None, None, 64, 512, True),
    "old-weightedmean": ("weightedmean", True, None, False, None, None, 64, 512, True),
    "old-dense": ("mean", True, (16, "torch.nn.modules.activation.Tanh", True), True, None, None, 64, 512, True),
    "old-cls-mean": (("cls", "mean"), True, None, False, None, None, 64, 512, True),
    "new-mean": ("mean", True, None, True, None, None, None, 512, False),
    "new-cls": ("cls", True, None, False, None, None, None, 24, False),
    "new-max": ("max", True, None, False, None, None, None, 512, False),
    "new-lasttoken": ("lasttoken", True, None, True, None, None, None, 512, False),
    "new-weightedmean": ("weightedmean", True, None, False, None, None, None, 512, False),
    "new-mean-sqrt-len": ("mean_sqrt_len_tokens", True, None, False, None, None, None, 512, False),
    "new-dense-identity": ("cls", True, (16, "torch.nn.modules.linear.Identity", False), False, None, None, None, 512, False),
    "new-dense-normalize": ("mean", True, (24, "torch.nn.modules.activation.Tanh", True), True, None, None, None, 512, False),
    "new-prompts": ("mean", True, None, True, {"query": "query: ", "document": "passage: "}, None, None, 512, False),
    "new-prompts-exclude": ("mean", False, None, True, {"query": "Represent this question for retrieval: ", "document": ""},
                            "query", None, 512, False),
    "new-cls-exclude-prompt": ("cls", False, None, False, {"query": "query: "}, "query", None, 512, False),
    "new-weightedmean-exclude": ("weightedmean", False, None, False, {"query": "search query: "}, None, None, 512, False),
    # MPNet (relative position bias, RoBERTa-style positions), laid out like all-mpnet-base-v2
    "mpnet-mean-normalize": ("mean", True, None, True, None, None, 200, 512, True),
    # a cased tokenizer under sentence_bert_config.json's do_lower_case: true (sentence-transformers lowercases the text)
    "new-lowercase": ("mean", True, None, True, None, None, None, 512, False),
}
MPNET = {"mpnet-mean-normalize"}
LOWERCASE = {"new-lowercase"}
OLD_TYPES = {"Transformer": "sentence_transformers.models.Transformer", "Pooling": "sentence_transformers.models.Pooling",
             "Dense": "sentence_transformers.models.Dense", "Normalize": "sentence_transformers.models.Normalize"}
LEGACY_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
               "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
               "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


def tokenizer(lowercase: bool = True) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = TEXTS + corpus_lines("en", "all", 0, 300) + corpus_lines("fr", "all", 0, 100)
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.WordPiece()
    return tok


def mpnet_tokenizer() -> Tokenizer:
    """A WordPiece tokenizer with MPNet's special tokens and template (<s> $A </s>, <pad> = 1)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = TEXTS + corpus_lines("en", "all", 0, 300)
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.decoder = decoders.WordPiece()
    return tok


def mpnet_base(work: Path, tok: Tokenizer) -> Path:
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=258, relative_attention_num_buckets=32)
    model = MPNetModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5 if "relative_attention_bias" in name else 0.2)
    d = work / "mpnet-base"
    model.save_pretrained(d)
    fast = MPNetTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                              unk_token="[UNK]", pad_token="<pad>", mask_token="<mask>", model_max_length=512)
    fast.save_pretrained(d)
    return d


def base_model(work: Path, tok: Tokenizer, tok_max: int, tag: str = "") -> Path:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)
    model = BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():  # larger than the default init so that the layers matter
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    d = work / f"base-{tok_max}{tag}"
    model.save_pretrained(d)
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=tok_max)
    fast.save_pretrained(d)
    return d


def to_old_format(d: Path, mode, include_prompt: bool, max_seq: int | None, dense, tok_max: int) -> None:
    """Rewrite a 6.x save into the files releases before 6.0 write (which also left the tokenizer's own
    model_max_length in tokenizer_config.json: 6.x writes max_seq_length there instead)."""
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["model_max_length"] = tok_max
    (d / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    mods = json.loads((d / "modules.json").read_text())
    for m in mods:
        m["type"] = OLD_TYPES[m["type"].rsplit(".", 1)[-1]]
    (d / "modules.json").write_text(json.dumps(mods, indent=2))
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    pool_dir = next(d / m["path"] for m in mods if m["type"].endswith("Pooling"))
    old = {"word_embedding_dimension": 32, **{k: (m in modes) for m, k in LEGACY_KEYS.items()},
           "include_prompt": include_prompt}
    (pool_dir / "config.json").write_text(json.dumps(old, indent=4))
    sb = {"max_seq_length": max_seq, "do_lower_case": False}
    (d / "sentence_bert_config.json").write_text(json.dumps(sb, indent=2))
    if dense:
        dense_dir = next(d / m["path"] for m in mods if m["type"].endswith("Dense"))
        cfg = json.loads((dense_dir / "config.json").read_text())
        (dense_dir / "config.json").write_text(json.dumps(
            {k: cfg[k] for k in ("in_features", "out_features", "bias", "activation_function")}))


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    work = OUT.parent / "_st_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    tok = tokenizer()
    cased = tokenizer(lowercase=False)
    ref: dict = {"command": "~/.cache/embtool-peers-venv/bin/python tools/make_st_fixtures.py", "texts": TEXTS, "models": {}}
    for name, (mode, include_prompt, dense, normalize, prompts, default_prompt, max_seq, tok_max, old) in FIXTURES.items():
        if name in MPNET:
            base = mpnet_base(work, mpnet_tokenizer())
        elif name in LOWERCASE:
            base = base_model(work, cased, tok_max, "-cased")
        else:
            base = base_model(work, tok, tok_max)
        tr = Transformer(str(base), max_seq_length=max_seq, do_lower_case=name in LOWERCASE)
        mods = [tr, Pooling(32, pooling_mode=mode, include_prompt=include_prompt)]
        dim = mods[1].get_embedding_dimension()
        if dense:
            torch.manual_seed(1)
            mods.append(Dense(dim, dense[0], bias=dense[2], activation_function=None if dense[1].endswith("Identity") else torch.nn.Tanh()))
        if normalize:
            mods.append(Normalize())
        st = SentenceTransformer(modules=mods, prompts=prompts, default_prompt_name=default_prompt, device="cpu")
        d = OUT / name
        st.save(str(d), create_model_card=False)
        if old:
            to_old_format(d, mode, include_prompt, max_seq, dense, tok_max)
        loaded = SentenceTransformer(str(d), device="cpu")
        runs = []
        for pn in [None, *(prompts or {})]:
            vecs = loaded.encode(TEXTS, prompt_name=pn, normalize_embeddings=False, convert_to_numpy=True)
            runs.append({"prompt_name": pn, "vectors": [[round(float(x), 7) for x in v] for v in vecs]})
        ref["models"][name] = {"max_seq_length": loaded.max_seq_length, "runs": runs}
        print(f"{name}: max_seq_length {loaded.max_seq_length}, dim {len(runs[0]['vectors'][0])}, "
              f"files {sorted(p.name for p in d.rglob('*') if p.is_file())}")
    shutil.rmtree(work)
    import sentence_transformers
    import transformers

    ref["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "sentence_transformers": sentence_transformers.__version__}
    (OUT / "reference.json").write_text(json.dumps(ref, ensure_ascii=False))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
