"""trim-vocab: keep the tokens a corpus (or a set of scripts) needs; slice every vocabulary tensor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
import json
from typing import Any

import numpy as np

from embtool.algorithms import vocab as VA
from embtool.core.counting import count_model_corpus
from embtool.core.errors import BadUsage, CorruptFile, InputError, Unsupported
from embtool.core.formats.record import provenance, write_model_record
from embtool.core.model import Model, find_vocab_tensors, open_model
from embtool.core.qrecord import has_record, read_record, record_metadata, with_rows
from embtool.core.st_config import counting_prefixes, eval_prefix_for
from embtool.core.model_out import (copy_unchanged, metadata_json, slice_onnx_initializers, updated_config,
                                    write_configs, write_weights)
from embtool.core.texts import read_lines
from embtool.core.tokenizer_io import (SIDE_FILES_DROPPED, SIDE_FILES_REWRITTEN, TokenizerJson, encode_batch,
                                       remap_added_tokens_json, vocab_side_files)
from embtool.core.writer import OutputFolder
from embtool.jobs.fidelity import SAMPLE_MAX_TOKENS, check_runnable, eval_texts, gate, warn_if_low


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
    # always: the prompts' own tokens (alone, with the special tokens around them)
    tok.no_truncation()
    for p in dict.fromkeys([*prefixes, *m.st.prompt_texts()]):
        if p:
            keep[[i for i in tok.encode(p).ids if i < V_tok]] = True
    # always: special / added tokens, and what the tokenizer type needs
    for a in doc.get("added_tokens") or []:
        keep[a["id"]] = True
    inv = {i: t for t, i in ids.items()}
    chars = set()
    for i in np.flatnonzero(keep):
        t = inv.get(int(i))
        if t is not None:
            chars.update(VA.strip_markers(t))
    keep[list(VA.required_ids(doc, chars))] = True
    kept = np.flatnonzero(keep)
    if doc["model"]["type"] == "BPE":
        kept = np.array(sorted(VA.bpe_closure(doc["model"]["vocab"], doc["model"].get("merges", []), set(kept.tolist()))))
    covered = None
    if counts is not None:
        covered = float(counts[kept].sum() / counts.sum())
    return {"kept": kept, "V_tok": V_tok, "rows": rows, "coverage": covered, "notes": notes, **info}


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
    fid = compare(*embed_both(orig, new, texts, threads, prefix, max_length))
    return {"identical_tokenization": same / len(texts), "new_unknown_token_share": new_unk / max(n_tok, 1), **fid}


def run_trim(req: TrimRequest, progress=None) -> dict[str, Any]:
    t0 = time.perf_counter()
    if not req.corpus and not req.scripts and not req.keep_file:
        raise BadUsage("nothing to select by: give a corpus (-c), --script or --keep")
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
        **{k: plan[k] for k in ("corpus_lines", "corpus_bytes", "counting", "corpus_tokens", "count_seconds", "prefixes")
           if k in plan},
        "notes": plan["notes"], "dry_run": req.dry_run,
    }
    if req.dry_run:
        byte_ratio = sum(v.nbytes for v in vt) / max(1, sum(int(np.prod(v.shape)) for v in vt))
        summary["bytes_after_estimate"] = int(bytes_before - sum(v.nbytes for v in vt) + per_row * len(kept) * byte_ratio)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return summary
    new_doc, remap = VA.rewrite_tokenizer(m.tokenizer.data, kept)
    TokenizerJson.from_data(new_doc)  # the rewritten file must load
    keep_idx = np.asarray(kept, dtype=np.int64)
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
            for k in ws.keys():
                arr = ws.get(k)
                tensors[k] = np.take(arr, keep_idx, axis=vocab_axes[k]) if k in vocab_axes else arr
            meta = {"embtool": metadata_json(prov)}
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

