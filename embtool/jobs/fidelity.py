"""Fidelity of a shrunk model: embeddings of the same texts, original vs new."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from embtool.algorithms.search import topk
from embtool.core.model import Model


@dataclass(kw_only=True)
class OutputRequest:
    """Fields every model-writing job shares: the --eval check, --force, --threads."""

    eval_file: str | None = None
    eval_limit: int = 1000
    eval_prefix: str = ""
    min_cosine: float | None = None
    min_cosine_min: float | None = None
    min_recall: float | None = None
    no_eval: bool = False  # skip the default check on the built-in sample (--no-eval)
    force_unsupported: bool = False  # write a model the runtime cannot build, unchecked (--force-unsupported)
    force: bool = False
    threads: int = 0


@dataclass
class ConvertRequest(OutputRequest):
    """A command that rewrites a model without changing what it computes (dequantize, defactorize)."""

    model: str
    output: str | None


def _scaled_down(x: np.ndarray) -> np.ndarray:
    """`x` with its rows of values above 1e15 divided by their largest value (cosines unchanged), so that float32
    norms do not overflow; other rows as they are."""
    peak = np.abs(x).max(axis=1, keepdims=True) if x.size else np.zeros((x.shape[0], 1), x.dtype)
    return np.where(peak > 1e15, x / np.maximum(peak, 1e15), x).astype(x.dtype, copy=False)


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean overlap of the k nearest neighbours (self excluded) of each text among the texts, a vs b (by cosine)."""
    a, b = _scaled_down(a), _scaled_down(b)
    n = a.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return 1.0
    _, ia = topk(a, n, lambda r0, r1: a[r0:r1], k + 1)
    _, ib = topk(b, n, lambda r0, r1: b[r0:r1], k + 1)
    overlap = [len(set(x[x != i][:k]) & set(y[y != i][:k])) / k for i, (x, y) in enumerate(zip(ia, ib))]
    return float(np.mean(overlap))


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The fidelity figures of embeddings `b` against `a` (the same texts, row by row): mean and min cosine and
    recall@10. Every figure is a finite number: embeddings that hold NaN or infinity (which the encoder never returns)
    are an InputError, never a null figure that a gate could let pass."""
    from embtool.core.errors import InputError

    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("the embeddings to compare hold NaN or infinite values")
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)  # float32 norms overflow from 1.9e19
    cos = np.sum(a64 * b64, 1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-12)
    return {"texts": int(a.shape[0]), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "recall@10": neighbour_agreement(a, b, 10)}


def embed_both(orig: Model, new: Model, texts: list[str], threads: int = 0, prefix: str = "",
               max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    from embtool.runtime.encoder import EmbedSettings, Encoder, default_max_length

    if max_length is not None:
        max_length = min(max_length, default_max_length(orig), default_max_length(new))
    s = EmbedSettings(threads=threads, prefix=prefix, max_length=max_length)
    return Encoder(orig, s).embed(texts), Encoder(new, s).embed(texts)


GATES = (("min_cosine", "cosine_mean", "held-out mean cosine"),
         ("min_cosine_min", "cosine_min", "held-out min cosine"),
         ("min_recall", "recall@10", "held-out recall@10"))


def gate(summary: dict[str, Any], req, out=None) -> bool:
    """Apply the --min-cosine / --min-cosine-min / --min-recall gates of `req` to summary["eval"].

    Records summary["gate"] (each threshold, the failures and their message) and summary["passed"]; on a
    failure the output folder `out` is discarded, so nothing is written (summary["written"] is false)."""
    ev = summary["eval"]
    g: dict[str, Any] = {}
    failed = []
    for opt, key, what in GATES:
        limit = getattr(req, opt, None)
        if limit is None:
            continue
        g[opt] = limit
        if not ev[key] >= limit:
            failed.append(f"{what} {ev[key]:.4f} is below --{opt.replace('_', '-')} {limit}")
    g["failed"] = failed
    summary["gate"] = g
    summary["passed"] = summary["written"] = not failed
    if failed:
        g["message"] = "; ".join(failed) + "; nothing written"
        if out is not None:
            out.discard()
    return not failed


def evaluate_output(orig: Model, out, req, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The fidelity check of a model-writing command: the output `out` (an OutputFolder, still in its
    temporary folder) against the input, on the --eval texts or else the built-in sample (`eval_texts`),
    into summary["eval"]; a warning below LOW_FIDELITY; then the gates (`gate`): below a threshold the
    output is discarded. None when there is nothing to check (--no-eval, no tokenizer)."""
    from embtool.core.model import open_model

    new = open_model(out.path)
    got = eval_texts(req, orig, new, summary)
    if got is None:
        return None
    texts, source = got
    cap = SAMPLE_MAX_TOKENS if source["source"] == "built-in sample" else None
    summary["eval"] = {**compare(*embed_both(orig, new, texts, req.threads, req.eval_prefix, cap)), **source}
    warn_if_low(summary["eval"])
    gate(summary, req, out)
    return summary["eval"]


EXACT = 0.9999  # the default --min-cosine-min of a lossless conversion (export-onnx, dequantize, defactorize)


def check_conversion(orig: Model, out, req, summary: dict[str, Any]) -> None:
    """The fidelity check of a command that must not change the embeddings (export-onnx, dequantize,
    defactorize): as `evaluate_output`, with --min-cosine-min EXACT unless a gate is given, so that a
    conversion that went wrong is refused (exit 3) instead of written. --no-eval skips it."""
    from dataclasses import replace

    if not req.no_eval and all(getattr(req, opt) is None for opt, _, _ in GATES):
        req = replace(req, min_cosine_min=EXACT)
    if evaluate_output(orig, out, req, summary) is None:
        summary.setdefault("passed", True)
    summary.setdefault("written", summary.get("passed", True))


# ----------------------------------------------------------------------------------------------
# The default check: a small sample of the repo's held-out corpora, in the languages the model covers
# ----------------------------------------------------------------------------------------------

SAMPLE_TEXTS = 200  # texts of the built-in sample, split evenly over the chosen languages
LOW_FIDELITY = 0.95  # mean cosine below which a written model gets a warning
SAMPLE_MAX_TOKENS = 128  # the sample's paragraphs are cut here: enough to compare two models, and fast
PROBE_LINES = 30  # held-out lines per language that decide whether the tokenizer covers it
COVERED = 0.85  # a language is covered when its characters per token reach this share of the best language's


def sample_languages(tokenizer) -> list[str]:
    """The built-in corpora's languages that `tokenizer` (a TokenizerJson) covers well.

    Coverage is measured as characters per token on a few held-out lines: a vocabulary built for a
    language splits its words into few pieces (all-MiniLM: English 4.4 characters a token, French 3.2,
    Polish 2.8; multilingual-e5: 3.6-4.0 for all four). A language is kept when it reaches COVERED of the
    best language's rate and at most 1% of its tokens are unknown; the best language is always kept. So an
    English-only vocabulary is checked on English, a multilingual one on all four, a vocabulary trimmed
    to French on French."""
    from embtool.algorithms.vocab import unk_id
    from embtool.core import corpora
    from embtool.core.tokenizer_io import encode_batch

    tok = tokenizer.runtime()
    tok.no_truncation()
    tok.no_padding()
    unk = unk_id(tokenizer.data)
    rate: dict[str, float] = {}
    for lang in corpora.LANGS:
        lines = list(_heldout(lang, SAMPLE_TEXTS)[:PROBE_LINES])
        encs = encode_batch(tok, lines, add_special_tokens=False, what=f"built-in {lang} sample line")
        n = sum(len(e.ids) for e in encs)
        unknown = sum(1 for e in encs for i in e.ids if i == unk) if unk is not None else 0
        if n and unknown <= 0.01 * n:
            rate[lang] = sum(len(t) for t in lines) / n
    if not rate:
        return [corpora.LANGS[0]]
    best = max(rate.values())
    return [lang for lang in corpora.LANGS if lang in rate and rate[lang] >= COVERED * best]


def builtin_sample(tokenizer, n: int = SAMPLE_TEXTS) -> tuple[list[str], list[str]]:
    """(texts, languages): `n` held-out lines of the repo's corpora in the languages `tokenizer` covers."""
    langs = sample_languages(tokenizer)
    per = max(2, n // len(langs))
    texts = [t for lang in langs for t in _heldout(lang, max(per, SAMPLE_TEXTS))[:per] if t.strip()]
    return texts, langs


@lru_cache(maxsize=None)
def _heldout(lang: str, n: int) -> tuple[str, ...]:
    from embtool.core import corpora

    return tuple(corpora.corpus_lines(lang, "heldout", 0, n))


def eval_texts(req, orig: Model, new: Model, summary: dict[str, Any]) -> tuple[list[str], dict[str, Any]] | None:
    """The texts of the fidelity check and where they come from: --eval FILE, or (unless --no-eval) the
    built-in sample in the languages the output's tokenizer covers. None, with a note in
    summary["notes"], when there is nothing to check."""
    from embtool.core.errors import InputError
    from embtool.core.texts import read_lines

    if req.eval_file:
        texts = read_lines(req.eval_file, req.eval_limit)
        if len(texts) < 2:
            raise InputError(f"{req.eval_file}: need at least 2 texts to evaluate on")
        return texts, {"source": str(req.eval_file)}
    gated = [f"--{opt.replace('_', '-')}" for opt, _, _ in GATES if getattr(req, opt, None) is not None]
    if getattr(req, "no_eval", False):
        if gated:
            raise InputError(f"{gated[0]} needs the fidelity check; it does not go with --no-eval")
        return None
    if orig.tokenizer is None or new.tokenizer is None:
        if gated:
            raise InputError(f"{gated[0]} needs the fidelity check, and the model has no tokenizer.json "
                             "(pass --tokenizer PATH)")
        summary.setdefault("notes", []).append("fidelity not checked: the model has no tokenizer.json "
                                               "(pass --tokenizer PATH, or --eval FILE)")
        return None
    texts, langs = builtin_sample(new.tokenizer, min(SAMPLE_TEXTS, req.eval_limit))
    return texts, {"source": "built-in sample", "languages": langs}


def warn_if_low(ev: dict[str, Any]) -> None:
    if ev["cosine_mean"] < LOW_FIDELITY:
        import logging

        where = ev.get("source", "held-out texts")
        if ev.get("languages"):
            where += f" ({', '.join(ev['languages'])})"
        logging.getLogger("embtool").warning(
            f"the output is far from the input: mean cosine {ev['cosine_mean']:.4f} on {ev['texts']} texts of the "
            f"{where} (below {LOW_FIDELITY}); check it before use, or gate with --min-cosine")


def check_runnable(m: Model, req, notes: list[str]) -> bool:
    """Up front, before any heavy work: can embtool's runtime build this (safetensors) model, and so
    run and check what the command writes? If not, refuse, unless --force-unsupported: then the output
    is written unchecked, which the summary says. Returns whether the output can be checked."""
    if m.format != "safetensors":
        return True
    from embtool.core.errors import CorruptFile, Unsupported
    from embtool.runtime.graphs import detect_arch

    try:
        detect_arch(m)
    except (Unsupported, CorruptFile) as e:
        if not getattr(req, "force_unsupported", False):
            raise Unsupported(f"{e}. embtool would write a model it cannot run or check, so it refuses; "
                              "--force-unsupported writes it anyway, unchecked") from None
        note = (f"NOT CHECKED: embtool cannot run this model ({str(e).split(';')[0]}); it is written "
                "because of --force-unsupported, and nothing verifies that it works")
        notes.append(note)
        import logging

        logging.getLogger("embtool").warning(note)
        return False
    return True
