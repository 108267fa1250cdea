"""trim-vocab: keep the tokens a corpus (or a set of scripts) needs; slice every vocabulary tensor."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
import json
from typing import Any, Iterator

import numpy as np

from embtool.algorithms import vocab as VA
from embtool.algorithms.quantize import stored_bytes
from embtool.core.counting import count_corpus, count_model_corpus
from embtool.core.errors import BadUsage, CorruptFile, InputError, Unsupported
from embtool.core.formats.record import provenance, write_model_record
from embtool.core.model import Model, find_vocab_tensors, open_model
from embtool.core.qrecord import has_record, read_record, record_metadata, with_rows
from embtool.core.st_config import SentenceTransformersInfo, counting_prefixes, eval_prefix_for
from embtool.core.model_out import (copy_unchanged, metadata_json, slice_onnx_initializers, updated_config,
                                    write_configs, write_weights)
from embtool.core.texts import iter_texts, read_lines
from embtool.core.tokenizer_io import (SIDE_FILES_DROPPED, SIDE_FILES_REWRITTEN, TokenizerJson, encode_batch,
                                       remap_added_tokens_json, vocab_side_files)
from embtool.core.writer import OutputFolder
from embtool.jobs.fidelity import SAMPLE_MAX_TOKENS, check_runnable, eval_texts, gate, warn_if_low


# --extra auto: the extra rows take at most EXTRA_SHARE of the bytes the corpus' own selection keeps (shrink: a share of
# its budget). What they cover of held-out text is predicted on a split of the corpus (every EXTRA_EVERY-th of its first
# EXTRA_LINES texts against the selection the other lines make); the prediction holds on text of another source
# (tools/trim_heldout.py: all-MiniLM, 90% of the split's misses predicted, 91.8% of the held-out ones covered;
# multilingual-e5-small German, 90% / 89.0%)
EXTRA_EVERY = 10
EXTRA_LINES = 20000
EXTRA_SHARE = 0.08
EXTRA_BITS = 2  # the extra tokens' rows, packed (a rare word keeps its token at 1/10 of a float row's bytes)


@dataclass
class TrimRequest:
    model: str
    output: str | None
    corpus: list[str] = field(default_factory=list)
    text_field: str | None = None
    top: int | None = None
    min_freq: int | None = None
    coverage: float | None = None
    keep_file: str | None = None
    scripts: list[str] = field(default_factory=list)
    extra: str | None = None  # "auto" | "all" | "none"; None: auto with the default selection, else none
    extra_bits: int = EXTRA_BITS  # bits of the extra tokens' rows (32: as the others)
    extra_max_bytes: int | None = None  # --extra auto: the extra rows' bytes at most (None: EXTRA_SHARE of the rest)
    prefixes: list[str] | None = None  # None: the text alone and with each of the model's prompts
    eval_prefix: str | None = None  # None: the model's document prompt / the first prefix
    eval_file: str | None = None
    eval_limit: int = 1000
    min_cosine: float | None = None
    min_cosine_min: float | None = None
    min_recall: float | None = None
    no_eval: bool = False
    force_unsupported: bool = False
    dry_run: bool = False
    force: bool = False
    threads: int = 0


def _keep_tokens(path: str, ids: dict[str, int]) -> tuple[set[int], list[str]]:
    kept, unknown = set(), []
    for tok in read_lines(path):
        t = tok.strip()
        if t in ids:
            kept.add(ids[t])
        else:
            unknown.append(t)
    return kept, unknown


def card_prompt_note(st: SentenceTransformersInfo, given: list[str] | None) -> str | None:
    """The warning when the corpus is read with prompts that only the model card documents (none declared, no
    --prefix given); None otherwise."""
    if given or st.prompts or not st.card_prompts:
        return None
    shown = " / ".join(repr(v) for v in dict.fromkeys(st.card_prompts.values()))
    return (f"the model card says texts start with {shown}, but the model declares no prompts: the corpus is counted "
            f"with each of them too (their tokens kept) and measured with the document one; give --prefix to choose")


def plan_trim(m: Model, req: TrimRequest, progress=None) -> dict[str, Any]:
    """Decide the kept ids. Returns the plan (kept old ids, counts, coverage, notes)."""
    assert m.tokenizer is not None
    doc = m.tokenizer.data
    tok = m.tokenizer.runtime()
    ids = VA.tokenizer_ids(doc)
    V_tok = max(ids.values()) + 1
    vt = find_vocab_tensors(m)
    if not vt:
        raise Unsupported(f"{m.root}: no token-embedding matrix found; nothing to trim")
    rows = vt[0].shape[vt[0].axis]
    if V_tok > rows:
        raise CorruptFile(f"{m.root}: the tokenizer has ids up to {V_tok - 1} but the embedding matrix only {rows} rows")
    if req.top is not None and req.top > V_tok:
        raise InputError(f"--top {req.top} is larger than the vocabulary ({V_tok} tokens)")
    keep = np.zeros(V_tok, dtype=bool)
    notes: list[str] = []
    counts = None
    info: dict[str, Any] = {}
    prefixes = counting_prefixes(m.st, req.prefixes)
    info["prefixes"] = prefixes
    card = card_prompt_note(m.st, req.prefixes)
    if card:
        notes.append(card)
        logging.getLogger("embtool").warning(card)
    if req.corpus:
        t_count = time.perf_counter()

        c = count_model_corpus(tok, req.corpus, req.text_field, prefixes, V_tok, progress)
        info["count_seconds"] = round(time.perf_counter() - t_count, 3)
        if c.counts.sum() == 0:
            raise InputError("the corpus is empty (no tokens): " + ", ".join(req.corpus))
        counts = c.counts
        unk = VA.unk_id(doc, ids)
        if unk is not None and counts[unk] > 0.5 * counts.sum():
            raise InputError(f"{100 * counts[unk] / counts.sum():.0f}% of the corpus tokens are unknown to this tokenizer "
                             "(a script the model does not cover?); trimming to it would keep almost nothing useful")
        keep |= VA.select_by_counts(counts, req.top, req.min_freq, req.coverage)
        info.update(corpus_lines=c.lines, corpus_bytes=c.bytes, counting=c.mode,
                    corpus_tokens=int(counts.sum()))
    if req.scripts:
        unknown = [s for s in req.scripts if s not in VA.SCRIPTS]
        if unknown:
            raise InputError(f"unknown script(s) {', '.join(unknown)}; known: {', '.join(VA.SCRIPTS)}")
        sset = set(req.scripts)
        inv = {i: t for t, i in ids.items()}
        for i in range(V_tok):
            t = inv.get(i)
            if t is not None and VA.in_scripts(t, sset):
                keep[i] = True
    if req.keep_file:
        extra, unknown = _keep_tokens(req.keep_file, ids)
        keep[list(extra)] = True
        if unknown:
            notes.append(f"{len(unknown)} token(s) of --keep are not in the vocabulary (e.g. {unknown[0]!r})")
    # always: the prompts' own tokens (alone, with the special tokens around them), special / added tokens
    always = np.zeros(V_tok, dtype=bool)
    tok.no_truncation()
    for p in dict.fromkeys([*prefixes, *m.st.prompt_texts(), *m.st.expected_prompts().values()]):
        if p:
            always[[i for i in tok.encode(p).ids if i < V_tok]] = True
    for a in doc.get("added_tokens") or []:
        always[a["id"]] = True
    keep |= always
    inv = {i: t for t, i in ids.items()}
    keep, chars = _with_required(doc, inv, keep)
    extra_mode = req.extra if req.extra is not None else (
        "auto" if counts is not None and req.top is None and req.min_freq is None and req.coverage is None else "none")
    extra = np.zeros(V_tok, dtype=bool)
    if extra_mode != "none":
        if counts is None:
            raise BadUsage("--extra needs a corpus (-c): the extra tokens are those of the corpus' characters")
        t_extra = time.perf_counter()
        group, _ = soft_group(m, vt, req)
        row = sum(v.nbytes // v.shape[v.axis] for v in vt)  # a kept row's bytes at the table's width
        row_extra = stored_bytes(1, vt[0].shape[1], req.extra_bits, group, False) if group else row
        cap = (req.extra_max_bytes if req.extra_max_bytes is not None
               else EXTRA_SHARE * (m.weight_bytes() - sum(v.nbytes for v in vt) + row * int(keep.sum())))
        extra, info["extra"] = _extra_tokens(m, req, doc, inv, keep, always, counts, chars, prefixes, extra_mode, notes,
                                             row_extra, cap)
        info["extra_seconds"] = round(time.perf_counter() - t_extra, 3)
    kept = np.flatnonzero(keep | extra)
    if doc["model"]["type"] == "BPE":
        closure = lambda ids_: np.array(sorted(VA.bpe_closure(doc["model"]["vocab"], doc["model"].get("merges", []),  # noqa: E731
                                                             set(ids_.tolist()))), dtype=np.int64)
        core = closure(np.flatnonzero(keep))
        kept = closure(kept) if extra.any() else core
    else:
        core = np.flatnonzero(keep)
    covered = None
    if counts is not None:
        covered = float(counts[kept].sum() / counts.sum())
    extra_ids = np.setdiff1d(kept, core)
    return {"kept": kept, "extra_ids": extra_ids, "V_tok": V_tok, "rows": rows, "coverage": covered, "notes": notes, **info}


def _with_required(doc: dict[str, Any], inv: dict[int, str], keep: np.ndarray) -> tuple[np.ndarray, set[str]]:
    """`keep` and what the tokenizer type needs for its tokens' characters (VA.required_ids); those characters."""
    chars: set[str] = set()
    for i in np.flatnonzero(keep):
        t = inv.get(int(i))
        if t is not None:
            chars.update(VA.strip_markers(t))
    keep = keep.copy()
    keep[list(VA.required_ids(doc, chars))] = True
    return keep, chars


def _extra_tokens(m: Model, req: TrimRequest, doc: dict[str, Any], inv: dict[int, str], keep: np.ndarray, always: np.ndarray,
                  counts: np.ndarray, chars: set[str], prefixes: list[str], mode: str, notes: list[str], row_bytes: int,
                  max_bytes: float) -> tuple[np.ndarray, dict[str, Any]]:
    """(mask of the extra tokens, what was fitted): every single character of the scripts the corpus uses, and the
    model's most common tokens (VA.token_prior) made of the corpus' characters only, as many as their rows (`row_bytes`
    each) fit in `max_bytes` ("auto"), or all of them ("all"); "auto" also predicts what they cover of held-out text:
    the share of what a held-out split of the corpus (every EXTRA_EVERY-th of its first EXTRA_LINES texts) uses
    beyond the selection made from the other lines that the same number of extra tokens covers."""
    V = len(keep)
    bodies = (VA.token_bodies(doc) + [None] * V)[:V]
    prior = np.resize(VA.token_prior(doc), V)

    def singles_of(cs: set[str]) -> np.ndarray:
        return VA.single_characters(bodies, {VA.char_script(c) for c in cs} - {"Common"})

    singles = singles_of(chars) & ~keep
    order = VA.extra_order(VA.made_of(bodies, chars) & ~keep & ~singles, prior)
    fit: dict[str, Any] = {"mode": mode, "single_characters": int(singles.sum()), "candidates": int(len(order))}
    n = len(order)
    if mode == "auto":
        n = min(n, max(0, int(max_bytes // max(row_bytes, 1)) - int(singles.sum())))
        fit.update(max_bytes=int(max_bytes), capped=n < len(order))
        split = _split_counts(m, req, prefixes, V)
        if split is None:
            notes.append("the corpus is standard input (read once): the extra tokens' held-out coverage is not predicted")
        else:
            probe, n_split = split
            rest = counts - probe
            core, rest_chars = _with_required(doc, inv, always | VA.select_by_counts(rest))
            core |= singles_of(rest_chars)
            misses = np.where(core, 0, probe)
            order_rest = VA.extra_order(VA.made_of(bodies, rest_chars) & ~core, prior)
            fit.update(split_texts=n_split, split_missed_tokens=int(misses.sum()),
                       split_coverage=round(VA.covered_share(order_rest, misses, n), 4))
    extra = singles.copy()
    extra[order[:n]] = True
    fit["tokens"] = int(n)
    return extra, fit


def _split_counts(m: Model, req: TrimRequest, prefixes: list[str], V: int) -> tuple[np.ndarray, int] | None:
    """(token counts, texts) of the --extra fit's held-out split (each text after each counting prefix); None when
    the corpus is standard input (already read)."""
    if "-" in req.corpus:
        return None

    def lines() -> Iterator[str]:
        for i, t in enumerate(iter_texts((), req.corpus, req.text_field)):
            if i >= EXTRA_LINES:
                break
            if i % EXTRA_EVERY == EXTRA_EVERY - 1:
                for p in prefixes or [""]:
                    yield p + t

    c = count_corpus(m.tokenizer.runtime(), lines, V)
    return c.counts, c.lines // max(1, len(prefixes))


def evaluate(orig: Model, new: Model, remap: dict[int, int], texts: list[str], threads: int, prefix: str = "",
             max_length: int | None = None) -> dict[str, Any]:
    """Held-out fidelity of prefix + text: identical tokenization share, new unknown tokens, embedding cosine."""
    from embtool.jobs.fidelity import compare, embed_both

    a_tok, b_tok = orig.tokenizer.runtime(), new.tokenizer.runtime()
    a_tok.no_truncation()
    b_tok.no_truncation()
    texts_seen = [prefix + t for t in texts]
    ea = encode_batch(a_tok, texts_seen, what="--eval line")
    eb = encode_batch(b_tok, texts_seen, what="--eval line")
    unk_b = VA.unk_id(new.tokenizer.data)
    unk_a = VA.unk_id(orig.tokenizer.data)
    same = 0
    n_tok = new_unk = 0
    for x, y in zip(ea, eb):
        mapped = [remap.get(i, -1) for i in x.ids]
        same += mapped == y.ids
        n_tok += len(x.ids)
        new_unk += sum(1 for i in y.ids if i == unk_b) - sum(1 for i in x.ids if i == unk_a)
    fid = compare(*embed_both(orig, new, texts, threads, prefix, max_length), texts)
    return {"identical_tokenization": same / len(texts), "new_unknown_token_share": new_unk / max(n_tok, 1), **fid}


def run_trim(req: TrimRequest, progress=None) -> dict[str, Any]:
    t0 = time.perf_counter()
    if not req.corpus and not req.scripts and not req.keep_file:
        raise BadUsage("nothing to select by: give a corpus (-c), --script or --keep")
    if req.extra not in (None, "auto", "all", "none"):
        raise BadUsage(f"extra must be 'auto', 'all' or 'none', not {req.extra!r}")
    if req.extra_bits not in (2, 4, 8, 32):
        raise BadUsage(f"extra_bits must be 2, 4, 8 or 32, not {req.extra_bits!r}")
    m = open_model(req.model, need_tokenizer=True)
    notes: list[str] = []
    checkable = check_runnable(m, req, notes)
    plan = plan_trim(m, req, progress)
    plan["notes"] = notes + plan["notes"]
    kept = plan["kept"]
    vt = find_vocab_tensors(m)
    params_before, bytes_before = _size(m)
    vocab_params_before = sum(int(np.prod(v.shape)) for v in vt)
    per_row = sum(int(np.prod(v.shape)) // v.shape[v.axis] for v in vt)
    params_after = params_before - vocab_params_before + per_row * len(kept)
    summary: dict[str, Any] = {
        "model": req.model, "output": req.output,
        "vocab_before": plan["V_tok"], "embedding_rows_before": plan["rows"], "vocab_after": int(len(kept)),
        "parameters_before": params_before, "parameters_after": params_after,
        "bytes_before": bytes_before, "corpus_coverage": plan["coverage"],
        **{k: plan[k] for k in ("corpus_lines", "corpus_bytes", "counting", "corpus_tokens", "count_seconds", "extra_seconds",
                                "prefixes", "extra")
           if k in plan},
        "notes": plan["notes"], "dry_run": req.dry_run,
    }
    soft = _soft_table(m, vt, req, len(plan["extra_ids"]), summary["notes"])
    n_tail = len(plan["extra_ids"]) if soft else 0
    if soft:
        summary["extra_rows"] = {"rows": n_tail, "bits": req.extra_bits, "group_size": soft}
    if req.dry_run:
        byte_ratio = sum(v.nbytes for v in vt) / max(1, sum(int(np.prod(v.shape)) for v in vt))
        tail = stored_bytes(n_tail, vt[0].shape[1], req.extra_bits, soft, False) if soft else 0
        summary["bytes_after_estimate"] = int(bytes_before - sum(v.nbytes for v in vt) + per_row * (len(kept) - n_tail) * byte_ratio + tail)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return summary
    if soft:  # the corpus' rows first (the table itself), then the extra tokens' rows (its packed tail)
        order = np.concatenate([np.setdiff1d(kept, plan["extra_ids"]), plan["extra_ids"]]).astype(np.int64)
    else:
        order = np.asarray(kept, dtype=np.int64)
    new_doc, remap = VA.rewrite_tokenizer(m.tokenizer.data, order, sort=False)
    TokenizerJson.from_data(new_doc)  # the rewritten file must load
    keep_idx = order
    prov = provenance("trim-vocab", req, m, extra={"trim": {"vocab_before": plan["V_tok"], "vocab_after": int(len(kept))}})
    with OutputFolder(req.output, req.force, inputs=[m.root]) as out:
        side = [f for f in (*SIDE_FILES_REWRITTEN, *SIDE_FILES_DROPPED) if (m.root / f).is_file()]
        copy_unchanged(m, out, changed=["tokenizer.json", "config.json", "tokenizer_config.json", *side])
        summary["notes"] += _rewrite_side_files(m, out, new_doc, remap, side)
        out.write_text("tokenizer.json", json.dumps(new_doc, ensure_ascii=False, indent=2))
        vocab_axes = {v.name: v.axis for v in vt}
        if m.format == "safetensors":
            ws = m.weights
            tensors = {}
            n_head = len(keep_idx) - n_tail
            for k in ws.keys():
                arr = ws.get(k)
                tensors[k] = np.take(arr, keep_idx[:n_head], axis=vocab_axes[k]) if k in vocab_axes else arr
            meta = {"embtool": metadata_json(prov)}
            if soft:
                tail, rec = soft_tail(vt[0].name, np.take(ws.get(vt[0].name), keep_idx[n_head:], axis=0), req.extra_bits, soft)
                tensors.update(tail)
                meta.update(record_metadata(rec))
            if has_record(ws.metadata):  # sliced quantized tables: record their new row count
                rec = read_record(ws.metadata, str(m.root))
                meta.update(record_metadata(with_rows(rec, {b for b in rec if b + ".qweight" in vocab_axes}, len(keep_idx))))
            write_weights(m, out, tensors, meta)
        else:
            om = m.onnx_model
            slice_onnx_initializers(om, vocab_axes, keep_idx)
            from embtool.core.onnx_out import save_onnx

            save_onnx(om, out, prov, rel=str(m.weight_path.relative_to(m.root)))
        cfg = updated_config(m, vocab_size=len(kept), remap=remap) if m.config else None
        write_configs(m, out, cfg, remap)
        write_model_record(out, m, prov, summary)
        new_model = open_model(out.path, need_tokenizer=True)
        summary["bytes_after"] = new_model.weight_bytes()
        got = eval_texts(req, m, new_model, summary) if checkable else None
        if got is not None:
            texts, source = got
            summary["eval_prefix"] = (req.eval_prefix if req.eval_prefix is not None
                                      else eval_prefix_for(m.st, plan["prefixes"]))
            cap = SAMPLE_MAX_TOKENS if source["source"] == "built-in sample" else None
            summary["eval"] = {**evaluate(m, new_model, remap, texts, req.threads, summary["eval_prefix"], cap), **source}
            warn_if_low(summary["eval"])
            gate(summary, req, out)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _soft_table(m: Model, vt: list, req: TrimRequest, n_extra: int, notes: list[str]) -> int:
    """The group size of the packed tail that holds the extra tokens' rows, 0 when they are kept as the other rows
    (none, --extra-bits 32, or a model whose table cannot take a tail: see soft_group)."""
    if not n_extra:
        return 0
    group, why = soft_group(m, vt, req)
    if why:
        notes.append(f"the {n_extra:,} extra tokens' rows are kept at full width ({why})")
    return group


def soft_group(m: Model, vt: list, req: TrimRequest) -> tuple[int, str | None]:
    """(group size of the extra rows' packed tail, why there is none): 0 with --extra-bits 32, and for a model whose
    table cannot take a tail (ONNX, quantized, or more vocabulary tensors than the token table, e.g. an LM head)."""
    if req.extra_bits >= 32:
        return 0, None
    why = None
    if m.format != "safetensors":
        why = "an ONNX model"
    elif len(vt) != 1 or vt[0].role != "input embedding" or vt[0].dtype not in ("F32", "F16", "BF16"):
        why = "its token table is not one float matrix (quantized, factorized, or tied to an LM head)"
    elif has_record(m.weights.metadata):
        why = "a quantized model"
    elif _added_after_vocab(m.tokenizer.data):
        why = "its added tokens come after the model's vocabulary, where tokenizers keeps them"
    group = next((g for g in (32, 16, 8) if vt[0].shape[1] % g == 0), 0)
    if why is None and not group:
        why = f"its width {vt[0].shape[1]} is not a multiple of 8"
    return (0, why) if why else (group, None)


def _added_after_vocab(doc: dict[str, Any]) -> bool:
    """The tokenizer has added tokens that are not pieces of its model (e.g. Qwen's `<|endoftext|>`): `tokenizers`
    numbers those after the model's vocabulary whatever ids the file gives, so the ids cannot be reordered."""
    model = doc["model"]
    pieces = {p[0] for p in model["vocab"]} if model["type"] == "Unigram" else model["vocab"]
    return any(a["content"] not in pieces for a in doc.get("added_tokens") or [])


def soft_tail(table: str, rows: np.ndarray, bits: int, group_size: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, quantization record) of a soft-trimmed table's tail (core.model.TAIL): `rows` packed at `bits`."""
    from embtool.algorithms import quantize as QA
    from embtool.core.model import TAIL

    base = (table[: -len(".weight")] if table.endswith(".weight") else table) + TAIL
    q = QA.quantize(np.asarray(rows, np.float32), bits, group_size)
    out = {base + ".qweight": QA.pack(q.codes, bits), base + ".scales": q.scales}
    if q.zeros is not None:
        out[base + ".qzeros"] = QA.pack(q.zeros, bits)
    return out, {base: {"bits": bits, "group_size": group_size, "shape": [int(rows.shape[0]), int(rows.shape[1])],
                        "symmetric": q.zeros is None, "method": "rtn"}}


def _rewrite_side_files(m: Model, out: OutputFolder, new_doc: dict[str, Any], remap: dict[int, int],
                        side: list[str]) -> list[str]:
    """Vocabulary side files (vocab.txt, vocab.json + merges.txt, added_tokens.json) rewritten to the
    trimmed vocabulary; those that cannot be (sentencepiece models) are left out, with a note, so that
    nothing stale describes the old vocabulary."""
    from embtool.core.model import read_json

    files, drop = vocab_side_files(new_doc, side, remap)
    for name, text in files.items():
        out.write_text(name, text)
    if "added_tokens.json" in side:
        out.write_json("added_tokens.json", remap_added_tokens_json(read_json(m.root / "added_tokens.json"), remap))
    notes = []
    if files or "added_tokens.json" in side:
        notes.append(f"rewritten for the trimmed vocabulary: {', '.join([*files, *(['added_tokens.json'] if 'added_tokens.json' in side else [])])}")
    if drop:
        notes.append(f"not copied (they describe the untrimmed vocabulary and embtool cannot rewrite them; tokenizer.json "
                     f"is the tokenizer): {', '.join(drop)}")
    return notes


def _size(m: Model) -> tuple[int, int]:
    if m.format == "safetensors":
        ws = m.weights
        return sum(ws.info(k).numel for k in ws.keys()), m.weight_bytes()
    from embtool.core.model import onnx_initializer_stats

    return onnx_initializer_stats(m)[0], m.weight_bytes()

