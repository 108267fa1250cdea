"""Vocabulary Trimming (Ushio et al. 2023): choosing the tokens to keep and rewriting tokenizer.json.

Pure functions on counts, id lists and the tokenizer JSON document. Why the rewrite keeps every
corpus text's tokenization identical when every token the corpus uses is kept:
- WordPiece is greedy longest-match: the token chosen at each position is still there and nothing
  longer was added, so the same token is chosen.
- Unigram picks the best-scoring segmentation; removing pieces the best paths do not use removes only
  alternatives.
- BPE applies the lowest-ranked merge among adjacent pairs; every merge that fired for a corpus word
  produced a kept token or an ancestor of one (kept by the closure), and a merge that never fired never
  decided anything.
Single characters (WordPiece: also their `##` forms) seen in the corpus are kept so that held-out words
fall back to pieces instead of the unknown token; byte-level BPE keeps its 256 byte tokens.
"""

from __future__ import annotations

import copy
import unicodedata
from typing import Any, Iterable

import numpy as np

MARKERS = ("▁", "##", "Ġ", "Ċ")


def select_by_counts(counts: np.ndarray, top: int | None = None, min_freq: int | None = None,
                     coverage: float | None = None) -> np.ndarray:
    """Boolean mask over token ids selected by the corpus counts.

    coverage C: the smallest set of most frequent tokens covering C of all occurrences (C = 1.0:
    every token seen). Ties in frequency are broken by the smaller id (deterministic).
    """
    V = counts.shape[0]
    keep = np.zeros(V, dtype=bool)
    seen = counts > 0
    if top is None and min_freq is None and coverage is None:
        coverage = 1.0
    order = np.lexsort((np.arange(V), -counts))  # most frequent first, then by id
    if top is not None:
        sel = order[:top]
        keep[sel[counts[sel] > 0]] = True
    if min_freq is not None:
        keep |= counts >= max(1, min_freq)
    if coverage is not None:
        total = counts.sum()
        if total > 0:
            if coverage >= 1.0:
                keep |= seen
            else:
                csum = np.cumsum(counts[order])
                n = int(np.searchsorted(csum, coverage * total, side="left")) + 1
                keep[order[:n]] = True
    return keep


# ----------------------------------------------------------------------------------------------
# Unicode scripts (corpus-free trimming)
# ----------------------------------------------------------------------------------------------

_SCRIPT_WORDS = {
    "LATIN": "Latin", "CYRILLIC": "Cyrillic", "GREEK": "Greek", "ARABIC": "Arabic", "HEBREW": "Hebrew",
    "DEVANAGARI": "Devanagari", "BENGALI": "Bengali", "THAI": "Thai", "HANGUL": "Hangul", "HIRAGANA": "Hiragana",
    "KATAKANA": "Katakana", "CJK": "Han", "ARMENIAN": "Armenian", "GEORGIAN": "Georgian", "TAMIL": "Tamil",
    "TELUGU": "Telugu", "KANNADA": "Kannada", "MALAYALAM": "Malayalam", "GUJARATI": "Gujarati", "GURMUKHI": "Gurmukhi",
    "ETHIOPIC": "Ethiopic", "KHMER": "Khmer", "LAO": "Lao", "MYANMAR": "Myanmar", "SINHALA": "Sinhala", "TIBETAN": "Tibetan",
    "ORIYA": "Oriya", "MONGOLIAN": "Mongolian", "THAANA": "Thaana", "SYRIAC": "Syriac",
}
SCRIPTS = tuple(sorted(set(_SCRIPT_WORDS.values())))


def char_script(ch: str) -> str:
    """'Common' for digits, punctuation, symbols, spaces and marks; else the script of a letter."""
    cat = unicodedata.category(ch)
    if not cat.startswith("L"):
        return "Common"
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    if first in _SCRIPT_WORDS:
        return _SCRIPT_WORDS[first]
    if name.startswith(("FULLWIDTH LATIN", "MODIFIER LETTER")):
        return "Latin"
    return "Other"


def strip_markers(token: str) -> str:
    for m in ("##",):
        if token.startswith(m):
            token = token[len(m):]
    return token.replace("▁", "").replace("Ġ", "").replace("Ċ", "")


def in_scripts(token: str, scripts: set[str]) -> bool:
    """True when every letter of the token (markers removed) belongs to one of `scripts`."""
    body = strip_markers(token)
    return all(char_script(c) in scripts or char_script(c) == "Common" for c in body)


# ----------------------------------------------------------------------------------------------
# Tokenizer rewrite
# ----------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    out = []
    for m in merges:
        if isinstance(m, str):
            a, _, b = m.partition(" ")
        else:
            a, b = m
        out.append((a, b))
    return out


def bpe_closure(vocab: dict[str, int], merges: list, keep_ids: set[int]) -> set[int]:
    """Add every merge ancestor of every kept token (so each kept token stays reachable)."""
    producer: dict[str, tuple[str, str]] = {}
    for a, b in _merge_pairs(merges):
        producer.setdefault(a + b, (a, b))
    id_to_tok = {i: t for t, i in vocab.items()}
    out = set(keep_ids)
    stack = [id_to_tok[i] for i in keep_ids if i in id_to_tok]
    while stack:
        t = stack.pop()
        if t in producer:
            for part in producer[t]:
                pid = vocab.get(part)
                if pid is not None and pid not in out:
                    out.add(pid)
                    stack.append(part)
    return out


def required_ids(tok: dict[str, Any], chars: Iterable[str]) -> set[int]:
    """Ids the tokenizer needs whatever the selection: single characters seen in the corpus (and
    their WordPiece '##' forms), the unknown token, byte-level BPE's 256 byte tokens."""
    model = tok["model"]
    mtype = model["type"]
    req: set[int] = set()
    if mtype == "Unigram":
        pieces = {p[0]: i for i, p in enumerate(model["vocab"])}
        if model.get("unk_id") is not None:
            req.add(int(model["unk_id"]))
        for c in chars:
            for form in (c, "▁" + c):
                if form in pieces:
                    req.add(pieces[form])
        return req
    vocab = model["vocab"]
    if mtype == "WordPiece":
        prefix = model.get("continuing_subword_prefix", "##")
        if model.get("unk_token") in vocab:
            req.add(vocab[model["unk_token"]])
        for c in chars:
            for form in (c, prefix + c):
                if form in vocab:
                    req.add(vocab[form])
        return req
    # BPE
    if model.get("unk_token") in vocab:
        req.add(vocab[model["unk_token"]])
    byte_level = "ByteLevel" in str(tok.get("pre_tokenizer")) or "ByteLevel" in str(tok.get("decoder"))
    if byte_level:
        for ch in bytes_to_unicode().values():
            if ch in vocab:
                req.add(vocab[ch])
    else:
        for c in chars:
            if c in vocab:
                req.add(vocab[c])
        for form_prefix in (model.get("continuing_subword_prefix") or "",):
            if form_prefix:
                for c in chars:
                    if form_prefix + c in vocab:
                        req.add(vocab[form_prefix + c])
    return req


def rewrite_tokenizer(tok: dict[str, Any], kept_old_ids: np.ndarray, sort: bool = True) -> tuple[dict[str, Any], dict[int, int]]:
    """A new tokenizer.json keeping exactly `kept_old_ids`, renumbered 0..n-1 in their original order (sort=False: in
    the order given, e.g. a soft-trimmed table's own rows first, then its tail's); returns (document, old id -> new
    id). BPE merges whose parts or result are gone are dropped; added tokens, unk ids and post-processor ids are
    remapped. The order of ids changes no tokenization (WordPiece and BPE look tokens up by text, Unigram by score)."""
    # copy only what changes (a deep copy of a 250k-piece vocabulary costs seconds)
    new = dict(tok)
    new["model"] = dict(tok["model"])
    for key in ("post_processor", "padding"):
        if key in new:
            new[key] = copy.deepcopy(tok[key])
    kept = [int(i) for i in (np.sort(kept_old_ids) if sort else kept_old_ids)]
    remap = {old: new_id for new_id, old in enumerate(kept)}
    model = new["model"]
    mtype = model["type"]
    if mtype == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept if i < len(model["vocab"])]
        if model.get("unk_id") is not None:
            if int(model["unk_id"]) not in remap:
                raise ValueError("the unknown token must be kept")
            model["unk_id"] = remap[int(model["unk_id"])]
    else:
        old_vocab = model["vocab"]
        inv = {i: t for t, i in old_vocab.items()}
        model["vocab"] = {inv[i]: remap[i] for i in kept if i in inv}
        if mtype == "BPE":
            kv = model["vocab"]
            merges = []
            for m, (a, b) in zip(model.get("merges", []), _merge_pairs(model.get("merges", []))):
                if a in kv and b in kv and (a + b) in kv:
                    merges.append(m)
            model["merges"] = merges
    added = []
    for a in new.get("added_tokens") or []:
        if a["id"] in remap:
            a = dict(a)
            a["id"] = remap[a["id"]]
            added.append(a)
    new["added_tokens"] = added
    _remap_post_processor(new.get("post_processor"), remap)
    if isinstance(new.get("padding"), dict) and isinstance(new["padding"].get("pad_id"), int):
        new["padding"]["pad_id"] = remap.get(new["padding"]["pad_id"], 0)
    return new, remap


def _remap_post_processor(pp: Any, remap: dict[int, int]) -> None:
    if not isinstance(pp, dict):
        return
    t = pp.get("type")
    if t == "TemplateProcessing":
        for spec in (pp.get("special_tokens") or {}).values():
            spec["ids"] = [remap[i] for i in spec.get("ids", [])]
    elif t in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if isinstance(pp.get(key), list) and len(pp[key]) == 2:
                pp[key] = [pp[key][0], remap[pp[key][1]]]
    elif t == "Sequence":
        for p in pp.get("processors") or []:
            _remap_post_processor(p, remap)


def tokenizer_ids(tok: dict[str, Any]) -> dict[str, int]:
    """token -> id over the model vocabulary and added tokens."""
    model = tok["model"]
    if model["type"] == "Unigram":
        out = {p[0]: i for i, p in enumerate(model["vocab"])}
    else:
        out = dict(model["vocab"])
    for a in tok.get("added_tokens") or []:
        out.setdefault(a["content"], a["id"])
    return out


def unk_id(tok: dict[str, Any], ids: dict[str, int] | None = None) -> int | None:
    """The unknown token's id (None when the tokenizer has none); `ids` = tokenizer_ids(tok) if known."""
    model = tok["model"]
    if model["type"] == "Unigram":
        return model.get("unk_id")
    if not model.get("unk_token"):
        return None
    return (ids if ids is not None else tokenizer_ids(tok)).get(model["unk_token"])


# ----------------------------------------------------------------------------------------------
# Generalising beyond the corpus: what held-out text of the same language will need
# ----------------------------------------------------------------------------------------------

def token_bodies(tok: dict[str, Any]) -> list[str | None]:
    """The text of each id without its markers (byte-level BPE tokens decoded from their bytes; None when they
    are not whole UTF-8 characters), None for ids without a token."""
    model = tok["model"]
    if model["type"] == "Unigram":
        toks: list[str | None] = [p[0] for p in model["vocab"]]
    else:
        toks = [None] * (max(model["vocab"].values(), default=-1) + 1)
        for t, i in model["vocab"].items():
            toks[i] = t
    byte_level = model["type"] == "BPE" and ("ByteLevel" in str(tok.get("pre_tokenizer")) or "ByteLevel" in str(tok.get("decoder")))
    if byte_level:
        inv = {c: b for b, c in bytes_to_unicode().items()}

        def body(t: str) -> str | None:
            try:
                return bytes(inv[c] for c in t).decode("utf-8").strip()
            except (KeyError, UnicodeDecodeError):
                return None

        return [None if t is None else body(t) for t in toks]
    prefix = model.get("continuing_subword_prefix") or "##"
    return [None if t is None else strip_markers(t[len(prefix):] if t.startswith(prefix) else t) for t in toks]


def token_prior(tok: dict[str, Any]) -> np.ndarray:
    """The model's own evidence of how common each token is, as a rank (0 = most common): a Unigram piece's
    log-probability (its score), a BPE token's merge rank (merges were learned most frequent first; base symbols
    first), a WordPiece id (vocabularies are written most frequent first after their characters)."""
    model = tok["model"]
    if model["type"] == "Unigram":
        scores = np.array([float(p[1]) if len(p) > 1 else 0.0 for p in model["vocab"]])
        prior = np.empty(len(scores))
        prior[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
        return prior
    vocab = model["vocab"]
    V = max(vocab.values(), default=-1) + 1
    if model["type"] == "BPE":
        prior = np.zeros(V)
        for rank, (a, b) in enumerate(_merge_pairs(model.get("merges", []))):
            i = vocab.get(a + b)
            if i is not None and prior[i] == 0:
                prior[i] = rank + 1
        return prior
    return np.arange(V, dtype=float)


def single_characters(bodies: list[str | None], scripts: set[str]) -> np.ndarray:
    """Mask of the tokens that are one character (any marker form) of `scripts` or of no script (digits,
    punctuation, symbols): what keeps every character of those scripts from becoming the unknown token."""
    return np.array([b is not None and len(b) == 1 and char_script(b) in scripts | {"Common"} for b in bodies], dtype=bool)


def made_of(bodies: list[str | None], chars: set[str]) -> np.ndarray:
    """Mask of the tokens whose text is made of `chars` only (e.g. the characters a corpus uses)."""
    return np.array([bool(b) and all(c in chars for c in b) for b in bodies], dtype=bool)


def extra_order(candidates: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The candidate ids, most common first by the model's own evidence (ties: smaller id first)."""
    ids = np.flatnonzero(candidates)
    return ids[np.lexsort((ids, prior[ids]))]


def covered_share(order: np.ndarray, misses: np.ndarray, n: int) -> float:
    """The share of `misses` (occurrences, per id, of the tokens a held-out split used that the selection made without
    it lacks) that the first `n` ids of `order` cover: the held-out coverage a choice of extra tokens predicts
    (1.0 when nothing is missed)."""
    total = float(misses.sum())
    return float(misses[order[:n]].sum() / total) if total > 0 else 1.0
