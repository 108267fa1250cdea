"""factorize / defactorize: OFA's low-rank token-embedding table, in safetensors and ONNX."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embtool.algorithms import factorize as FA
from embtool.core.errors import InputError, Unsupported
from embtool.core.architectures import FACTOR_F, FACTOR_P, find_token_table
from embtool.core.formats.record import provenance, write_model_record
from embtool.core.model import Model, find_vocab_tensors, onnx_embedding_gather, open_model
from embtool.core.model_out import copy_unchanged, metadata_json, updated_config, write_configs, write_derived_model, write_weights
from embtool.core.writer import OutputFolder
from embtool.jobs.fidelity import ConvertRequest, OutputRequest, check_conversion, check_runnable, evaluate_output


@dataclass
class FactorRequest(OutputRequest):
    model: str
    output: str | None
    rank: int | None = None
    energy: float | None = None
    max_error: float | None = None
    fmt: str = "safetensors"
    corpus: list[str] = field(default_factory=list)  # weight each row by its token's frequency in these texts
    text_field: str | None = None
    prefixes: list[str] | None = None  # count the corpus after these prefixes (default: the model's prompts)


def embedding_table(m: Model, command: str = "factorize") -> tuple[str, np.ndarray, Any]:
    """(name, E, onnx initializer or None) of the plain float token-embedding table."""
    if m.format == "onnx":
        from onnx import numpy_helper

        gather, sources = onnx_embedding_gather(m.onnx_model.graph)
        if gather is None or gather.op_type != "Gather" or len(sources) != 1 or sources[0].name != gather.input[0]:
            raise Unsupported(f"{m.root}: the token embedding is not a plain float Gather of an initializer "
                              f"(quantized or already factorized?); {command} the float model")
        t = sources[0]
        E = numpy_helper.to_array(t)
        if E.dtype not in (np.float32, np.float16) or E.ndim != 2:
            raise Unsupported(f"{m.root}: the embedding table is {E.dtype}, not float")
        return t.name, E, gather
    vt = find_vocab_tensors(m)
    if not vt:
        raise InputError(f"{m.root}: no token-embedding matrix found")
    if vt[0].role != "input embedding":
        raise InputError(f"{m.root}: the embedding table is already {vt[0].role.split('(')[-1].rstrip(')')}; "
                         "factorize the float model (or `embtool defactorize` first)")
    if any(v.role == "LM head" for v in vt):
        raise Unsupported(f"{m.root}: has an LM head on the vocabulary axis; embtool factorizes encoder-only models")
    name = vt[0].name
    return name, m.weights.get(name), None


def run_factorize(req: FactorRequest) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = open_model(req.model, need_tokenizer=bool(req.eval_file or req.corpus))
    notes: list[str] = []
    checkable = check_runnable(m, req, notes)
    name, E, gather = embedding_table(m)
    V, D = E.shape
    if req.rank is not None:
        if req.rank < 1:
            raise InputError("--rank must be at least 1")
        if req.rank > D:
            raise InputError(f"--rank {req.rank} > the hidden size {D}: a factorization of rank {D} or more saves nothing "
                             f"(F·P would have {V * req.rank + req.rank * D:,} parameters instead of {V * D:,})")
    weights, weighting = corpus_weights(m, req, V) if req.corpus else (None, None)
    if weights is None:
        spec, G = FA.spectrum(E), None
    else:  # the weighted basis, and the whole table's Gram for the energy it keeps: one pass over E
        G, Gw = FA.grams(E, weights)
        spec = FA.decompose(Gw)
    k = req.rank if req.rank is not None else (
        spec.rank_for_energy(req.energy) if req.energy is not None else spec.rank_for_error(req.max_error))
    if k >= D:
        notes.append(f"rank {k} = the hidden size: this factorization is lossless but saves nothing (it is larger)")
    F, P = FA.factors(E, spec, k)
    t_fact = time.perf_counter() - t0
    # energy / rel_frobenius_error: of the whole table, unweighted, whatever chose the basis
    energy = spec.energy(k) if G is None else FA.kept_energy(G, spec.vectors[:, :k])
    info = {"rank": int(k), "hidden": int(D), "rows": int(V), "energy": energy, "rel_frobenius_error": float(np.sqrt(max(0.0, 1 - energy))),
            "params_before": int(V * D), "params_after": int(V * k + k * D)}
    if weighting is not None:
        weighting.update(energy=spec.energy(k), rel_error=spec.rel_error(k))
        info["corpus_weighted"] = weighting
    prov = provenance("factorize", req, m, extra={"factorization": {"rank": int(k), "table": name}})
    with OutputFolder(req.output, req.force, inputs=[m.root]) as out:
        copy_unchanged(m, out, changed=["config.json"])
        base = name[: -len(".weight")]
        if m.format == "safetensors":
            ws = m.weights
            tensors = {key: ws.get(key) for key in ws.keys() if key != name}
            tensors[f"{base}.{FACTOR_F}"] = F
            tensors[f"{base}.{FACTOR_P}"] = P
            write_weights(m, out, tensors, {"embtool": metadata_json(prov)})
            cfg = updated_config(m, extra={"embtool_factorization": {"rank": int(k), "F": f"{base}.{FACTOR_F}",
                                                                      "P": f"{base}.{FACTOR_P}"}}) if m.config else None
            write_configs(m, out, cfg)
            if req.fmt == "onnx":
                from embtool.core.onnx_out import save_onnx
                from embtool.runtime.graphs import build_encoder

                save_onnx(build_encoder(open_model(out.path)).to_model(embed_feeds=True), out, prov)
                (out.path / "model.safetensors").unlink()
        else:
            rewrite_onnx_gather(m, gather, name, F, P)
            from embtool.core.onnx_out import save_onnx

            save_onnx(m.onnx_model, out, prov, rel=str(m.weight_path.relative_to(m.root)))
            if m.config:  # kept as it is (it was held back from the copy above)
                write_configs(m, out, dict(m.config))
        summary: dict[str, Any] = {}
        write_model_record(out, m, prov, summary)
        new = open_model(out.path, need_tokenizer=bool(req.eval_file))
        summary.update({"model": req.model, "output": req.output, "format": req.fmt if m.format == "safetensors" else "onnx",
                        **info, "bytes_before": m.weight_bytes(), "bytes_after": new.weight_bytes(),
                        "factorize_seconds": round(t_fact, 2), "notes": notes})
        if checkable:
            evaluate_output(m, out, req, summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def corpus_weights(m: Model, req: FactorRequest, rows: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Row weights from the corpus (each token's count + 1) and what they were made of."""
    from embtool.algorithms import vocab as VA
    from embtool.core.counting import count_model_corpus
    from embtool.core.st_config import counting_prefixes

    assert m.tokenizer is not None
    if any(c == "-" for c in req.corpus) and req.eval_file == "-":
        raise InputError("--corpus and --eval cannot both read stdin")
    V_tok = max(VA.tokenizer_ids(m.tokenizer.data).values()) + 1
    prefixes = counting_prefixes(m.st, req.prefixes)
    if V_tok > rows:  # before reading the corpus
        raise InputError(f"{m.root}: the tokenizer has ids up to {V_tok - 1} but the embedding table only {rows} rows")
    c = count_model_corpus(m.tokenizer.runtime(), req.corpus, req.text_field, prefixes, V_tok)
    if c.counts.sum() == 0:
        raise InputError("the corpus is empty (no tokens): " + ", ".join(req.corpus))
    info = {"corpus_lines": c.lines, "corpus_tokens": int(c.counts.sum()), "rows_used": int((c.counts > 0).sum()),
            "prefixes": prefixes, "smoothing": 1.0}
    return FA.row_weights(c.counts, rows), info


def rewrite_onnx_gather(m: Model, gather, name: str, F: np.ndarray, P: np.ndarray) -> None:
    """Gather(E, ids) -> MatMul(Gather(F, ids), P) in place."""
    from onnx import helper, numpy_helper

    g = m.onnx_model.graph
    idx = next(i for i, t in enumerate(g.initializer) if t.name == name)
    g.initializer[idx].CopyFrom(numpy_helper.from_array(F, name + ".factor_F"))
    g.initializer.append(numpy_helper.from_array(P, name + ".factor_P"))
    out_name = gather.output[0]
    rows = out_name + "_factor_rows"
    gather.input[0] = name + ".factor_F"
    gather.output[0] = rows
    pos = list(g.node).index(gather)
    g.node.insert(pos + 1, helper.make_node("MatMul", [rows, name + ".factor_P"], [out_name], name="embtool_factor_P"))


def run_defactorize(req: ConvertRequest) -> dict[str, Any]:
    """F·P back to one float32 embedding table, checked to embed as the factorized model does."""
    t0 = time.perf_counter()
    model, output = req.model, req.output
    m = open_model(model)
    ws = m.weights
    if ws is None:
        raise Unsupported("defactorize reads factorized safetensors models; this is an ONNX model")
    table = find_token_table(m.config, ws)
    if table is None or not table.factorized:
        raise InputError(f"{model} is not factorized (its token table has no {FACTOR_F} tensor)")
    if table.quantized:
        raise InputError(f"{model}: its factor F is quantized; `embtool dequantize` it first")
    F, P = f"{table.base}.{FACTOR_F}", f"{table.base}.{FACTOR_P}"
    tensors = {k: ws.get(k) for k in ws.keys() if k not in (F, P)}
    tensors[table.base + ".weight"] = np.asarray(ws.get(F), np.float32) @ np.asarray(ws.get(P), np.float32)
    prov = provenance("defactorize", {}, m)
    summary: dict[str, Any] = {"model": model, "output": output, "bytes_before": m.weight_bytes()}
    summary["bytes_after"] = write_derived_model(m, output, req.force, tensors, prov, drop="factorization",
                                                 check=lambda out: check_conversion(m, out, req, summary), summary=summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary

