"""Initialising the embedding rows of a new vocabulary (OFA, Liu et al. 2024; FVT, Gee et al. 2022).

Pure functions on token strings, id lists and matrices. A target row is described by a *recipe*: a
sparse convex combination of source rows (one row with weight 1 for a copied token, the mean of the
pieces for FVT, softmax(sim/τ) weights over the k most similar source subwords for OFA), or a random
draw. The same recipe applies to every tensor on the vocabulary axis (the embedding, an LM head, an
output bias) and to the factor F of a factorized table, where OFA does its arithmetic.

Token surface forms are compared in a canonical form (word_start, body): the vocabulary's marker
convention is removed — SentencePiece/Metaspace `▁x` and byte-level BPE `Ġx` start a word, WordPiece
`##x` continues one — and byte-level BPE's byte alphabet is decoded to text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from embtool.algorithms.search import topk
from embtool.algorithms.vocab import bytes_to_unicode

# how a target row was made
COPIED, NEIGHBOURS, FVT, RANDOM, UNUSED = 0, 1, 2, 3, 4
KIND_NAMES = ("copied", "neighbours", "fvt", "random", "unused")

# special-token spellings by role: a target `<s>` takes the row of a source `[CLS]`
SPECIAL_ROLES = {
    "cls": ("[CLS]", "<s>", "<cls>", "[BOS]", "<bos>", "<|startoftext|>", "<|begin_of_text|>"),
    "sep": ("[SEP]", "</s>", "<sep>", "[EOS]", "<eos>", "<|endoftext|>", "<|end_of_text|>"),
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
}
_ROLE_OF = {s.lower(): r for r, spellings in SPECIAL_ROLES.items() for s in spellings}


def special_role(token: str) -> str | None:
    return _ROLE_OF.get(token.lower())


# ----------------------------------------------------------------------------------------------
# Marker conventions and canonical forms
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Convention:
    """How a vocabulary marks word boundaries: 'metaspace' (▁ starts a word), 'wordpiece' (a prefix,
    usually ##, continues one), 'bytelevel' (Ġ starts a word; tokens are in GPT-2's byte alphabet),
    or 'plain' (no marker: every token is taken as it is)."""

    style: str
    prefix: str = ""  # WordPiece / BPE continuing-subword prefix
    suffix: str = ""  # BPE end-of-word suffix (e.g. </w>)


def convention(doc: dict) -> Convention:
    """The marker convention of a tokenizer.json document."""
    model = doc["model"]
    text = " ".join(str(doc.get(k)) for k in ("pre_tokenizer", "decoder", "normalizer"))
    if model["type"] == "WordPiece":
        return Convention("wordpiece", prefix=model.get("continuing_subword_prefix") or "##")
    if model["type"] == "Unigram" or "Metaspace" in text or "'▁'" in text or '"▁"' in text:
        return Convention("metaspace")
    if "ByteLevel" in text:
        return Convention("bytelevel")
    return Convention("plain", prefix=model.get("continuing_subword_prefix") or "", suffix=model.get("end_of_word_suffix") or "")


@functools.cache
def _byte_encoder() -> dict[int, str]:
    return bytes_to_unicode()


@functools.cache
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def canonical(token: str, conv: Convention) -> tuple[bool, str] | None:
    """(word_start, body) of a vocabulary token; None when it has no text form (a byte-level token
    holding part of a UTF-8 character, an empty body)."""
    if conv.style == "metaspace":
        ws = token.startswith("▁")
        body = token[1:] if ws else token
        body = body.replace("▁", " ")
    elif conv.style == "wordpiece":
        ws = not (token.startswith(conv.prefix) and len(token) > len(conv.prefix))  # "##" alone is a word
        body = token if ws else token[len(conv.prefix):]
    elif conv.style == "bytelevel":
        dec = _byte_decoder()
        try:
            raw = bytes(dec[c] for c in token)
            text = raw.decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None
        ws = text.startswith(" ")
        body = text[1:] if ws else text
    else:
        ws = True
        body = token
        if conv.prefix and token.startswith(conv.prefix):
            ws, body = False, token[len(conv.prefix):]
        if conv.suffix and body.endswith(conv.suffix):
            body = body[: -len(conv.suffix)]
    if not body:
        return None
    return ws, body


def surface(ws: bool, body: str, conv: Convention) -> str:
    """The vocabulary token that a canonical form would be under `conv` (the inverse of `canonical`)."""
    if conv.style == "metaspace":
        return ("▁" if ws else "") + body.replace(" ", "▁")
    if conv.style == "wordpiece":
        return body if ws else conv.prefix + body
    if conv.style == "bytelevel":
        enc = _byte_encoder()
        return "".join(enc[b] for b in ((" " if ws else "") + body).encode("utf-8"))
    return body if ws or not conv.prefix else conv.prefix + body


# ----------------------------------------------------------------------------------------------
# Overlap
# ----------------------------------------------------------------------------------------------

@dataclass
class Overlap:
    """target id -> source id for the tokens both vocabularies have, and how they were matched."""

    source_of: dict[int, int] = field(default_factory=dict)
    how: dict[int, str] = field(default_factory=dict)  # "exact" | "case" | "special"

    def counts(self) -> dict[str, int]:
        out = {"exact": 0, "case": 0, "special": 0}
        for h in self.how.values():
            out[h] += 1
        return out


def match_overlap(target: Sequence[str | None], target_special: set[int], tconv: Convention,
                  source: Sequence[str | None], source_special: set[int], sconv: Convention) -> Overlap:
    """Tokens present in both vocabularies after normalising markers, then case (the lowest source
    id wins among case variants); special tokens match by spelling, then by role (`<s>` ~ `[CLS]`)."""
    same_style = tconv == sconv
    raw: dict[str, int] = {}
    exact: dict[tuple[bool, str], int] = {}
    lower: dict[tuple[bool, str], int] = {}
    special_exact: dict[str, int] = {}
    special_role_ids: dict[str, int] = {}
    for i, t in enumerate(source):
        if t is None:
            continue
        if i in source_special:
            special_exact.setdefault(t, i)
            r = special_role(t)
            if r is not None:
                special_role_ids.setdefault(r, i)
            continue
        raw.setdefault(t, i)
        c = canonical(t, sconv)
        if c is None:
            continue
        exact.setdefault(c, i)
        lower.setdefault((c[0], c[1].lower()), i)
    ov = Overlap()
    for j, t in enumerate(target):
        if t is None:
            continue
        if j in target_special:
            if t in special_exact:
                ov.source_of[j], ov.how[j] = special_exact[t], "special"
            else:
                r = special_role(t)
                if r is not None and r in special_role_ids:
                    ov.source_of[j], ov.how[j] = special_role_ids[r], "special"
            continue
        c = canonical(t, tconv)
        if same_style and t in raw:
            ov.source_of[j], ov.how[j] = raw[t], "exact"
        elif c is None:
            continue
        elif c in exact:
            ov.source_of[j], ov.how[j] = exact[c], "exact"
        elif (c[0], c[1].lower()) in lower:
            ov.source_of[j], ov.how[j] = lower[(c[0], c[1].lower())], "case"
    return ov


# ----------------------------------------------------------------------------------------------
# Word vectors -> subword vectors -> neighbours
# ----------------------------------------------------------------------------------------------

def center(word_vectors: np.ndarray) -> np.ndarray:
    """Word vectors minus their mean. Sentence-embedding models give anisotropic vectors (every
    pair has a high cosine); without centering, subwords of many words (whose mean vector is near
    the common direction) are everyone's nearest neighbours."""
    W = np.asarray(word_vectors, dtype=np.float32)
    return W - W.mean(0, dtype=np.float64).astype(np.float32)


def subword_vectors(word_vectors: np.ndarray, token_ids: Sequence[Sequence[int]], n_tokens: int,
                    skip: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """OFA's subword vectors: the mean of the (unit-normalised) vectors of the words whose
    tokenization contains the subword (each word counted once per subword). Returns (ids [m] sorted,
    vectors [m, d]) for the subwords that have one; ids in `skip` (e.g. the unknown token) get none."""
    W = np.asarray(word_vectors, dtype=np.float32)
    norms = np.linalg.norm(W, axis=1)
    d = W.shape[1]
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    r = np.fromiter((i for ids in token_ids for i in ids), dtype=np.int64, count=int(lengths.sum()))
    c = np.repeat(np.arange(len(token_ids), dtype=np.int64), lengths)
    ok = (r >= 0) & (r < n_tokens)
    ok[ok] &= norms[c[ok]] > 0
    skip_arr = np.fromiter(skip, dtype=np.int64)
    if skip_arr.size:
        ok &= ~np.isin(r, skip_arr)
    # distinct (token, word) pairs, sorted by token then word: a word counts once per subword
    key = np.unique(r[ok] * max(1, len(token_ids)) + c[ok])
    r, c = key // max(1, len(token_ids)), key % max(1, len(token_ids))
    if r.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, d), np.float32)
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    ends = np.r_[starts[1:], r.size]
    ids = r[starts]
    out = np.zeros((ids.size, d), dtype=np.float32)
    B = 4096  # tokens per block: bounded memory for the gathered word vectors
    for b0 in range(0, ids.size, B):
        b1 = min(ids.size, b0 + B)
        p0, p1 = starts[b0], ends[b1 - 1]
        Wb = W[c[p0:p1]] / norms[c[p0:p1], None]
        out[b0:b1] = np.add.reduceat(Wb, starts[b0:b1] - p0, axis=0) / (ends[b0:b1] - starts[b0:b1])[:, None]
    return ids, out


def softmax_neighbours(queries: np.ndarray, candidates: np.ndarray, k: int, temperature: float,
                       block_rows: int = 16384, query_block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query vector, its k most cosine-similar candidate rows and OFA's weights
    softmax(sim / τ) over them. Returns (candidate positions [Q, k], weights [Q, k], sims [Q, k]);
    ties go to the lower position (deterministic)."""
    C = np.asarray(candidates, dtype=np.float32)
    Cn = C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
    Q = np.asarray(queries, dtype=np.float32)
    sims = np.zeros((Q.shape[0], min(k, Cn.shape[0])), dtype=np.float32)
    idx = np.zeros(sims.shape, dtype=np.int64)
    for q0 in range(0, Q.shape[0], query_block):  # bounded memory: a [query_block, block_rows] score block
        sims[q0:q0 + query_block], idx[q0:q0 + query_block] = topk(Q[q0:q0 + query_block], Cn.shape[0],
                                                                  lambda a, b: Cn[a:b], k, "cosine", block_rows)
    z = sims.astype(np.float64) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    w = (e / e.sum(1, keepdims=True)).astype(np.float32)
    return idx, w, sims


# ----------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------

@dataclass
class Recipe:
    """Target row j = Σ weights[p] · source[indices[p]] over p in indptr[j]:indptr[j+1], or a random
    draw when kind[j] == RANDOM (and zeros for UNUSED ids, holes in the target id space)."""

    kind: np.ndarray  # [V'] uint8
    indptr: np.ndarray  # [V' + 1] int64
    indices: np.ndarray  # int64 source ids
    weights: np.ndarray  # float32

    @property
    def size(self) -> int:
        return int(self.kind.shape[0])

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.kind, minlength=len(KIND_NAMES))
        return {name: int(c[i]) for i, name in enumerate(KIND_NAMES)}


def build_recipe(n_target: int, parts: dict[int, tuple[int, Sequence[int], Sequence[float]]],
                 unused: Iterable[int] = ()) -> Recipe:
    """parts: target id -> (kind, source ids, weights). Ids not in `parts` are RANDOM, except `unused`."""
    kind = np.full(n_target, RANDOM, dtype=np.uint8)
    for j in unused:
        kind[j] = UNUSED
    lengths = np.zeros(n_target, dtype=np.int64)
    for j, (k, ids, _) in parts.items():
        kind[j] = k
        lengths[j] = len(ids)
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    indices = np.zeros(int(indptr[-1]), dtype=np.int64)
    weights = np.zeros(int(indptr[-1]), dtype=np.float32)
    for j, (_, ids, w) in parts.items():
        indices[indptr[j]:indptr[j + 1]] = ids
        weights[indptr[j]:indptr[j + 1]] = w
    return Recipe(kind, indptr, indices, weights)


def random_rows(source: np.ndarray, n: int, rng: np.random.Generator, block: int = 65536) -> np.ndarray:
    """n rows drawn from N(mean, std) of the source rows, per dimension."""
    s = np.asarray(source)
    mean = np.zeros(s.shape[1:], dtype=np.float64)
    sq = np.zeros(s.shape[1:], dtype=np.float64)
    for r0 in range(0, s.shape[0], block):
        b = np.asarray(s[r0:r0 + block], dtype=np.float64)
        mean += b.sum(0)
        sq += (b * b).sum(0)
    mean /= max(1, s.shape[0])
    std = np.sqrt(np.maximum(sq / max(1, s.shape[0]) - mean * mean, 0))
    return (rng.standard_normal((n, *s.shape[1:])) * std + mean).astype(np.float32)


def apply_recipe(recipe: Recipe, source: np.ndarray, rng: np.random.Generator, block: int = 8192) -> np.ndarray:
    """The target tensor (rows along axis 0) from a source tensor with the same trailing shape. Rows
    are combined in float32 blocks; the result has the source's float dtype."""
    src = np.asarray(source)
    out_dtype = src.dtype if src.dtype in (np.float16, np.float32, np.float64) else np.float32
    out = np.zeros((recipe.size, *src.shape[1:]), dtype=out_dtype)
    lengths = np.diff(recipe.indptr)
    for j0 in range(0, recipe.size, block):
        j1 = min(recipe.size, j0 + block)
        p0, p1 = recipe.indptr[j0], recipe.indptr[j1]
        if p1 == p0:
            continue
        rows = np.asarray(src[recipe.indices[p0:p1]], dtype=np.float32)
        rows *= recipe.weights[p0:p1].reshape(-1, *([1] * (rows.ndim - 1)))
        nonempty = np.flatnonzero(lengths[j0:j1] > 0)
        starts = recipe.indptr[j0:j1][nonempty] - p0
        out[j0 + nonempty] = np.add.reduceat(rows, starts, axis=0)
    rand = np.flatnonzero(recipe.kind == RANDOM)
    if rand.size:
        out[rand] = random_rows(src, rand.size, rng)
    return out


def fvt_parts(pieces: dict[int, list[int]]) -> dict[int, tuple[int, list[int], list[float]]]:
    """FVT: a target token's row is the mean of the source rows of its pieces."""
    return {j: (FVT, ids, [1.0 / len(ids)] * len(ids)) for j, ids in pieces.items() if ids}


def wordpiece_split(body: str, ws: bool, vocab: dict[str, int], prefix: str = "##", max_chars: int = 100) -> list[int]:
    """Greedy longest-match WordPiece of one word body; a continuation (ws=False) starts with the
    prefix too. [] when some part has no piece (the whole word would be the unknown token)."""
    if len(body) > max_chars:
        return []
    out: list[int] = []
    start = 0
    first = ws
    while start < len(body):
        end = len(body)
        found = None
        while end > start:
            piece = body[start:end] if first else prefix + body[start:end]
            if piece in vocab:
                found = vocab[piece]
                break
            end -= 1
        if found is None:
            return []
        out.append(found)
        start = end
        first = False
    return out


def make_splitter(kind: str, tokenize: Callable[[str], list[int]], conv: Convention,
                  normalize: Callable[[str], str] | None = None, vocab: dict[str, int] | None = None,
                  drop: Iterable[int] = (), pre_split: Callable[[str], list[str]] | None = None) -> Callable[[bool, str], list[int]]:
    """(word_start, body) -> source piece ids, the way the source tokenizer would split that piece
    of a word. `tokenize` runs the source tokenizer's model on one pre-tokenized string; WordPiece
    bodies are first split like the source pre-tokenizer would (`pre_split`: punctuation becomes its
    own word). When the piece has no split in its position (a WordPiece vocabulary has no `##,`), the
    other position is tried."""
    dropped = set(drop)

    def once(ws: bool, b: str) -> list[int]:
        if kind == "WordPiece":
            assert vocab is not None
            words = pre_split(b) if pre_split else [b]
            out: list[int] = []
            for n, w in enumerate(words):
                ids = wordpiece_split(w, ws if n == 0 else True, vocab, conv.prefix or "##")
                if not ids:
                    return []
                out += ids
            return out
        return tokenize(surface(ws, b, conv))

    def split(ws: bool, body: str) -> list[int]:
        b = normalize(body) if normalize else body
        if not b:
            return []
        for pos in (ws, not ws):
            ids = [i for i in once(pos, b) if i not in dropped]
            if ids:
                return ids
        return []

    return split
