"""init-subwords: a model for a new tokenizer, its embedding rows initialised by OFA, FVT or at random.

Steps: match the vocabularies (copy the rows of shared tokens), then for every other target token
OFA's neighbours (with word vectors), FVT's mean of source pieces, or N(mean, std). The recipe is
applied to every tensor on the vocabulary axis — in the factorized space F when the source is
factorized, so the output stays factorized. `--rank k` factorizes the output (OFA's parameter
saving): by default the best rank-k factorization of the new table itself; `--rank-basis source`
is OFA's recipe, the rows built as coordinates in the source table's rank-k factorization.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embtool.algorithms import factorize as FA
from embtool.algorithms import subwords as SW
from embtool.algorithms import vocab as VA
from embtool.core.errors import BadUsage, InputError, Unsupported
from embtool.core.architectures import FACTOR_F, FACTOR_P, pad_sets_positions
from embtool.core.formats.record import provenance, write_model_record
from embtool.core.hub import resolve_tokenizer
from embtool.core.model import Model, find_vocab_tensors, open_model, read_json
from embtool.core.model_out import copy_unchanged, metadata_json, updated_config, write_configs, write_weights
from embtool.core.texts import iter_texts
from embtool.core.tokenizer_io import TokenizerJson, encode_batch
from embtool.core.word_vectors import WordVectors, corpus_words, read_word_vectors
from embtool.core.writer import OutputFolder
from embtool.jobs.fidelity import OutputRequest, check_runnable, evaluate_output

METHODS = ("ofa", "fvt", "random")
# files that describe the source tokenizer: replaced by the target's, or dropped
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "sentencepiece.bpe.model", "spiece.model", "spm.model",
                   "tokenizer.model", "sentencepiece.model")
CONFIG_ROLES = {"pad_token_id": "pad", "bos_token_id": "cls", "eos_token_id": "sep", "sep_token_id": "sep",
                "cls_token_id": "cls", "unk_token_id": "unk", "mask_token_id": "mask"}


@dataclass
class InitRequest(OutputRequest):
    model: str
    output: str
    tokenizer: str
    method: str | None = None
    word_vectors: str | None = None
    word_vocab: str | None = None
    corpus: list[str] = field(default_factory=list)
    max_words: int = 50000
    neighbors: int = 10
    temperature: float = 0.1
    center: bool = True
    rank: int | None = None
    rank_basis: str = "output"
    seed: int = 0
    dry_run: bool = False


def load_target(path: str, cache_dir: str | None = None) -> tuple[TokenizerJson, Path]:
    """The target tokenizer: a tokenizer.json, a folder holding one, or a Hub id (its snapshot's tokenizer.json)."""
    p = Path(resolve_tokenizer(path, cache_dir=cache_dir))
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise InputError(f"{path}: no such tokenizer.json")
    return TokenizerJson.load(p), p


def check_request(req: InitRequest) -> str:
    """The method to use; BadUsage (exit 2) on flag combinations that make no sense."""
    method = req.method or ("ofa" if req.word_vectors else "fvt")
    if method not in METHODS:
        raise BadUsage(f"unknown --method {method!r} (choose {', '.join(METHODS)})")
    if method == "ofa" and not req.word_vectors:
        raise BadUsage("--method ofa needs word vectors: --word-vectors FILE, or --word-vectors auto with --corpus")
    if method != "ofa" and req.word_vectors:
        raise BadUsage(f"--word-vectors is only used by --method ofa (not {method})")
    if req.word_vectors == "auto" and not req.corpus:
        raise BadUsage("--word-vectors auto takes its words from a corpus: give -c/--corpus")
    if req.corpus and req.word_vectors != "auto":
        raise BadUsage("--corpus is only used with --word-vectors auto")
    if req.rank_basis not in ("output", "source"):
        raise BadUsage(f"--rank-basis must be output or source, not {req.rank_basis!r}")
    if req.word_vocab and not req.word_vectors:
        raise BadUsage("--word-vocab goes with --word-vectors FILE.npy")
    if req.neighbors < 1:
        raise BadUsage("--neighbors must be at least 1")
    if not req.temperature > 0:
        raise BadUsage("--temperature must be positive")
    return method


# ----------------------------------------------------------------------------------------------
# The source's vocabulary tensors
# ----------------------------------------------------------------------------------------------

@dataclass
class VocabTable:
    name: str  # the table the recipe works in: the embedding, or its factor F
    table: np.ndarray
    others: dict[str, tuple[np.ndarray, int]]  # further vocabulary-axis tensors: name -> (array, axis)
    P: np.ndarray | None = None  # the factor P when the source is factorized (kept as is)
    factorized_source: bool = False


def _vocab_table(m: Model) -> VocabTable:
    vt = find_vocab_tensors(m)
    if not vt:
        raise Unsupported(f"{m.root}: no token-embedding matrix found")
    role = vt[0].role
    if "quantized" in role or any("quantized" in v.role or "scale" in v.role for v in vt):
        raise Unsupported(f"{m.root}: the embedding table is quantized; run init-subwords on the float model "
                          "(or `embtool dequantize` it first)")
    if m.format == "onnx":
        from onnx import numpy_helper

        from embtool.jobs.factorize import embedding_table

        name, E, _ = embedding_table(m, "run init-subwords on")
        inits = {t.name: t for t in m.onnx_model.graph.initializer}
        others = {}
        for v in vt[1:]:
            arr = numpy_helper.to_array(inits[v.name])
            if arr.dtype.kind != "f":
                raise Unsupported(f"{m.root}: the vocabulary tensor {v.name} is {arr.dtype}, not float")
            others[v.name] = (arr, v.axis)
        return VocabTable(name, E, others)
    ws = m.weights
    others = {v.name: (ws.get(v.name), v.axis) for v in vt[1:] if not v.name.endswith("." + FACTOR_P)}
    for n, (a, _) in others.items():
        if a.dtype.kind != "f":
            raise Unsupported(f"{m.root}: the vocabulary tensor {n} is {a.dtype}, not float")
    E = ws.get(vt[0].name)
    if E.dtype.kind != "f" or E.ndim != 2:
        raise Unsupported(f"{m.root}: the embedding table {vt[0].name} is {E.dtype} {E.shape}, not a float matrix")
    if vt[0].name.endswith("." + FACTOR_F):
        p_name = vt[0].name[: -len(FACTOR_F)] + FACTOR_P
        return VocabTable(vt[0].name, E, others, P=ws.get(p_name), factorized_source=True)
    return VocabTable(vt[0].name, E, others)


# ----------------------------------------------------------------------------------------------
# Word vectors (OFA)
# ----------------------------------------------------------------------------------------------

def _word_vectors(m: Model, req: InitRequest, progress) -> tuple[WordVectors, dict[str, Any]]:
    if req.word_vectors != "auto":
        wv = read_word_vectors(req.word_vectors, req.word_vocab, req.max_words)
        return wv, {"source": req.word_vectors}
    from embtool.runtime.encoder import EmbedSettings, Encoder

    t0 = time.perf_counter()
    words, distinct = corpus_words(iter_texts((), req.corpus), req.max_words)
    if not words:
        raise InputError("the corpus has no words: " + ", ".join(req.corpus))
    enc = Encoder(m, EmbedSettings(threads=req.threads))
    parts = []
    for _, vecs in enc.embed_stream(iter(words), progress=progress):
        parts.append(vecs)
    vectors = np.concatenate(parts).astype(np.float32)
    return WordVectors(words, vectors, 0, distinct > len(words)), {
        "source": "auto (the model's own embeddings of corpus words)", "corpus_distinct_words": distinct,
        "embed_seconds": round(time.perf_counter() - t0, 2)}


def _tokenize_words(tj: TokenizerJson, words: list[str]) -> list[list[int]]:
    tok = tj.runtime()
    return [e.ids for e in encode_batch(tok, words, add_special_tokens=False, what="token")]


# ----------------------------------------------------------------------------------------------
# Special tokens and the post-processor
# ----------------------------------------------------------------------------------------------

def roles(tj: TokenizerJson) -> dict[str, int]:
    """role -> id of the tokenizer's special tokens (lowest id per role)."""
    out: dict[str, int] = {}
    for tok, i in sorted(tj.special_tokens().items(), key=lambda kv: kv[1]):
        r = SW.special_role(tok)
        if r is not None:
            out.setdefault(r, i)
    return out


def _template(src: TokenizerJson, tgt: TokenizerJson) -> tuple[dict | None, str] | None:
    """When the target adds no special tokens but the source does: the source's layout (e.g.
    `<s> $A </s>`) with the target's tokens, as a tokenizer.json post_processor object (None, with
    a note, when the target lacks a token for one of the roles). None when there is nothing to add."""
    from tokenizers import processors

    if tgt.data.get("post_processor"):
        return None
    s_rt = src.runtime()
    one = s_rt.encode("a", "b")
    if not any(one.special_tokens_mask):
        return None
    s_names = {i: t for t, i in src.special_tokens().items()}
    t_ids = roles(tgt)
    inv_t = {i: t for t, i in tgt.special_tokens().items()}

    def layout(enc) -> str:
        parts, prev = [], None
        for tid, special, type_id, seq in zip(enc.ids, enc.special_tokens_mask, enc.type_ids, enc.sequence_ids):
            if special:
                role = SW.special_role(s_names.get(tid, ""))
                if role is None or role not in t_ids:
                    raise KeyError(s_names.get(tid, str(tid)))
                parts.append(f"{inv_t[t_ids[role]]}:{type_id}")
                prev = None
            elif seq != prev:
                parts.append(f"${'A' if seq == 0 else 'B'}:{type_id}")
                prev = seq
        return " ".join(parts)

    try:
        single = layout(s_rt.encode("a"))
        pair = layout(one)
    except KeyError as e:
        return None, (f"the new tokenizer adds no special tokens and has none in the role of the source's {e.args[0]!r}: "
                      "the model will see texts without them (add a post_processor to the tokenizer)")
    used = sorted({p.rsplit(":", 1)[0] for p in (single + " " + pair).split() if not p.startswith("$")})
    pp = processors.TemplateProcessing(single=single, pair=pair, special_tokens=[(t, tgt.special_tokens()[t]) for t in used])
    return json.loads(pp.__getstate__()), f"the new tokenizer added no special tokens; gave it the source's layout: {single}"


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------

def plan_rows(m: Model, tgt: TokenizerJson, table: np.ndarray, req: InitRequest, method: str,
              progress=None) -> tuple[SW.Recipe, dict[str, Any]]:
    """The recipe of every target row, and what was decided (counts, word-vector statistics)."""
    src = m.tokenizer
    assert src is not None
    s_tokens, t_tokens = src.id_to_token(), tgt.id_to_token()
    if len(s_tokens) > table.shape[0]:
        raise InputError(f"{m.root}: the tokenizer has ids up to {len(s_tokens) - 1} but the embedding table only "
                         f"{table.shape[0]} rows")
    if s_tokens == t_tokens:
        raise InputError("nothing to do: the new tokenizer has exactly the model's vocabulary (same tokens, same ids)")
    s_special, t_special = set(src.special_tokens().values()), set(tgt.special_tokens().values())
    sconv, tconv = SW.convention(src.data), SW.convention(tgt.data)
    ov = SW.match_overlap(t_tokens, t_special, tconv, s_tokens, s_special, sconv)
    ovc = ov.counts()
    if ovc["exact"] + ovc["case"] == 0:
        raise InputError("the new vocabulary shares no token with the model's (after normalising ▁/##/Ġ markers and "
                         "case): the tokenizers are unrelated (another script?) and every row would be a guess")
    parts: dict[int, tuple[int, list[int], list[float]]] = {j: (SW.COPIED, [i], [1.0]) for j, i in ov.source_of.items()}
    holes = [j for j, t in enumerate(t_tokens) if t is None]
    todo = [j for j, t in enumerate(t_tokens) if t is not None and j not in parts and j not in t_special]
    info: dict[str, Any] = {"overlap": ovc, "conventions": {"source": sconv.style, "target": tconv.style}}
    if method == "ofa" and todo:
        t0 = time.perf_counter()
        wv, winfo = _word_vectors(m, req, progress)
        W = SW.center(wv.vectors) if req.center else wv.vectors
        s_ids, s_vec = SW.subword_vectors(W, _tokenize_words(src, wv.words), len(s_tokens), skip=_not_pieces(src))
        t_ids, t_vec = SW.subword_vectors(W, _tokenize_words(tgt, wv.words), len(t_tokens), skip=_not_pieces(tgt))
        if s_ids.size == 0:
            raise InputError("no source token occurs in the tokenization of the word vectors' words: "
                             "are they words of a language the model knows?")
        pending = np.asarray(todo, dtype=np.int64)
        q_rows = np.flatnonzero(np.isin(t_ids, pending))
        k = min(req.neighbors, s_ids.size)
        if q_rows.size:
            pos, w, _ = SW.softmax_neighbours(t_vec[q_rows], s_vec, k, req.temperature)
            for j, p_row, w_row in zip(t_ids[q_rows].tolist(), pos, w):
                parts[j] = (SW.NEIGHBOURS, s_ids[p_row].tolist(), w_row.tolist())
        info["word_vectors"] = {**winfo, "words": len(wv.words), "dim": wv.dim, "duplicates_dropped": wv.duplicates,
                                "truncated_to_max_words": wv.truncated, "source_subwords_with_vector": int(s_ids.size),
                                "target_subwords_with_vector": int(t_ids.size), "neighbors": k,
                                "temperature": req.temperature, "centered": req.center, "seconds": round(time.perf_counter() - t0, 2)}
        todo = [j for j in todo if j not in parts]
    if method in ("ofa", "fvt") and todo:
        split = _splitter(src, sconv)
        pieces = {}
        for j in todo:
            c = SW.canonical(t_tokens[j], tconv)
            if c is not None:
                pieces[j] = split(*c)
        parts.update(SW.fvt_parts(pieces))
    return SW.build_recipe(len(t_tokens), parts, unused=holes), info


def prompt_rows(m: Model, tgt: TokenizerJson, recipe: SW.Recipe, notes: list[str]) -> dict[str, dict[str, Any]]:
    """How the new vocabulary carries each prompt of the model's sentence-transformers config: the prompt's
    tokens under the new tokenizer and how their rows were made. A prompt whose rows are not all copied
    shifts every prompted text; say so."""
    out: dict[str, dict[str, Any]] = {}
    tok = tgt.runtime()
    for p in m.st.prompt_texts():
        ids = tok.encode(p, add_special_tokens=False).ids
        kinds = [SW.KIND_NAMES[recipe.kind[i]] if i < recipe.size else "unused" for i in ids]
        out[p] = {"tokens": [tok.id_to_token(i) for i in ids], "rows": {k: kinds.count(k) for k in dict.fromkeys(kinds)}}
        made = [f"{t} ({k})" for t, k in zip(out[p]["tokens"], kinds) if k != "copied"]
        if made:
            notes.append(f"prompt {p!r}: {len(made)} of its {len(ids)} tokens under the new tokenizer are not copied "
                         f"rows ({', '.join(made[:4])}); texts embedded after it shift with them")
    return out


def _not_pieces(tj: TokenizerJson) -> set[int]:
    """Ids that stand for no text: the special tokens and the unknown token."""
    unk = VA.unk_id(tj.data)
    return set(tj.special_tokens().values()) | ({unk} if unk is not None else set())


def _splitter(src: TokenizerJson, conv: SW.Convention):
    rt = src.runtime()
    norm = rt.normalizer
    mtype = src.data["model"]["type"]
    vocab = src.data["model"]["vocab"] if mtype == "WordPiece" else None
    pre = rt.pre_tokenizer
    pre_split = (lambda b: [w for w, _ in pre.pre_tokenize_str(b)]) if (pre is not None and mtype == "WordPiece") else None
    return SW.make_splitter(mtype, lambda s: [t.id for t in rt.model.tokenize(s)], conv,
                            normalize=norm.normalize_str if norm is not None else None, vocab=vocab,
                            drop=_not_pieces(src), pre_split=pre_split)


def run_init_subwords(req: InitRequest, progress=None) -> dict[str, Any]:
    t0 = time.perf_counter()
    method = check_request(req)
    m = open_model(req.model, need_tokenizer=True)
    tgt, tgt_path = load_target(req.tokenizer, getattr(req.model, "cache_dir", None))
    vt = _vocab_table(m)
    V_src, D_table = vt.table.shape
    notes: list[str] = []
    checkable = check_runnable(m, req, notes)
    if req.rank is not None:
        if vt.factorized_source:
            raise InputError(f"{req.model} is already factorized (rank {D_table}); drop --rank (the rows are built in "
                             "its factorized space) or `embtool defactorize` it first")
        if not 1 <= req.rank < D_table:
            raise InputError(f"--rank must be between 1 and {D_table - 1} (the hidden size is {D_table})")
    table = vt.table
    P = vt.P
    if req.rank is not None and req.rank_basis == "source":
        E = np.asarray(table, dtype=np.float32)
        spec = FA.spectrum(E)
        table, P = FA.factors(E, spec, req.rank)
        notes.append(f"rows built as coordinates in the source table's rank-{req.rank} factorization "
                     f"(it keeps {100 * spec.energy(req.rank):.2f}% of the source's energy)")
    recipe, info = plan_rows(m, tgt, table, req, method, progress)
    t_plan = time.perf_counter() - t0
    counts = recipe.counts()
    prompts = prompt_rows(m, tgt, recipe, notes)
    factorized_out = P is not None or req.rank is not None
    summary: dict[str, Any] = {
        "model": req.model, "tokenizer": req.tokenizer, "output": req.output, "method": method, "dry_run": req.dry_run,
        "vocab_before": len(m.tokenizer.id_to_token()), "vocab_after": recipe.size, "rows": counts,
        "overlap": info["overlap"], "conventions": info["conventions"],
        **({"word_vectors": info["word_vectors"]} if "word_vectors" in info else {}),
        "factorized": factorized_out, "rank": int(req.rank or table.shape[1]) if factorized_out else None,
        "embedding_params_before": int(np.prod(vt.table.shape)) + (int(np.prod(vt.P.shape)) if vt.P is not None else 0),
        "embedding_params_after": recipe.size * int(req.rank or table.shape[1])
                                  + (int(np.prod(P.shape)) if P is not None else int(req.rank or 0) * D_table),
        **({"prompts": prompts} if prompts else {}), "notes": notes}
    if req.dry_run:
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return summary
    new_table = SW.apply_recipe(recipe, table, np.random.default_rng([req.seed, 0]))
    if req.rank is not None and req.rank_basis == "output":
        spec = FA.spectrum(new_table)
        new_table, P = FA.factors(new_table, spec, req.rank)
        notes.append(f"output table factorized at rank {req.rank} (energy kept {100 * spec.energy(req.rank):.2f}%, "
                     f"relative Frobenius error {spec.rel_error(req.rank):.4f})")
    new_others = {}
    for n, (name, (arr, axis)) in enumerate(sorted(vt.others.items()), start=1):
        a = np.moveaxis(np.asarray(arr), axis, 0)
        new_others[name] = np.ascontiguousarray(np.moveaxis(SW.apply_recipe(recipe, a, np.random.default_rng([req.seed, n])), 0, axis))
    if counts["random"] > 0.5 * recipe.size:
        notes.append(f"{counts['random']:,} of {recipe.size:,} rows ({100 * counts['random'] / recipe.size:.0f}%) are random: "
                     "expect continued pretraining to be needed")
    if counts["unused"]:
        notes.append(f"{counts['unused']} ids of the new tokenizer have no token (holes in its id space): zero rows")
    # the tokenizer written with the model (given the source's special-token layout when it has none)
    tpl = _template(m.tokenizer, tgt)
    tok_text = tgt.dumps()
    if tpl is not None:
        pp, note = tpl
        notes.append(note)
        if pp is not None:
            tok_text = TokenizerJson.from_data({**tgt.data, "post_processor": pp}).dumps()
    cfg, cfg_notes = _config(m, tgt, recipe.size)
    notes += cfg_notes
    args = {k: v for k, v in req.__dict__.items() if k not in ("output", "force")}
    prov = provenance("init-subwords", {**args, "method": method}, m, {"tokenizer": tgt.fingerprint()},
                      {"init_subwords": {"method": method, "vocab_before": int(V_src), "vocab_after": recipe.size, **counts},
                       **({"factorization": {"rank": int(P.shape[0]), "table": vt.name}} if P is not None else {})})
    with OutputFolder(req.output, req.force, inputs=[m.root]) as out:
        copy_unchanged(m, out, changed=["config.json", *TOKENIZER_FILES])
        out.write_text("tokenizer.json", tok_text)
        _tokenizer_sidecars(m, tgt, tgt_path, out)
        if m.format == "safetensors":
            ws = m.weights
            tensors = {k: ws.get(k) for k in ws.keys() if k != vt.name and k not in vt.others}
            tensors.update(new_others)
            if req.rank is not None:
                base = vt.name[: -len(".weight")]
                tensors[base + ".factor_F"] = new_table
                tensors[base + ".factor_P"] = P
                cfg["embtool_factorization"] = {"rank": int(req.rank), "F": base + ".factor_F", "P": base + ".factor_P"}
            else:
                tensors[vt.name] = new_table
            write_weights(m, out, tensors, {"embtool": metadata_json(prov)})
        else:
            from embtool.core.model_out import replace_onnx_initializers
            from embtool.core.onnx_out import save_onnx
            from embtool.jobs.factorize import rewrite_onnx_gather

            om = m.onnx_model
            replace_onnx_initializers(om, {**new_others, **({} if req.rank is not None else {vt.name: new_table})})
            if req.rank is not None:
                from embtool.core.model import onnx_embedding_gather

                gather, _ = onnx_embedding_gather(om.graph)
                rewrite_onnx_gather(m, gather, vt.name, new_table, P)
            save_onnx(om, out, prov, rel=str(m.weight_path.relative_to(m.root)))
        if m.config or (m.root / "config.json").is_file():
            write_configs(m, out, cfg)
        write_model_record(out, m, prov, summary)
        summary.update(bytes_before=m.weight_bytes(), bytes_after=open_model(out.path).weight_bytes(),
                       plan_seconds=round(t_plan, 2))
        if checkable:
            if not req.eval_prefix and m.st.document_prompt():  # texts as the model is used: after its document prompt
                from dataclasses import replace

                req = replace(req, eval_prefix=m.st.document_prompt())
            summary["eval_prefix"] = req.eval_prefix
            evaluate_output(m, out, req, summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _config(m: Model, tgt: TokenizerJson, V: int) -> tuple[dict[str, Any], list[str]]:
    """config.json for the new vocabulary: vocab_size, and special-token ids by role. RoBERTa-family
    models keep pad_token_id: it sets their position-id offset, which the position table was trained with."""
    notes: list[str] = []
    cfg = updated_config(m, vocab_size=V) if m.config else {}
    if not cfg:
        return cfg, notes
    t_roles = roles(tgt)
    roberta = pad_sets_positions(cfg)
    for key, role in CONFIG_ROLES.items():
        if key not in cfg or not isinstance(cfg[key], int) or isinstance(cfg[key], bool):
            continue
        if key == "pad_token_id" and roberta:
            if t_roles.get("pad") != cfg[key]:
                notes.append(f"config pad_token_id stays {cfg[key]} (it sets this architecture's position offset); "
                             f"the new tokenizer pads with id {t_roles.get('pad')}, which the attention mask hides")
            continue
        if role in t_roles:
            cfg[key] = t_roles[role]
        else:
            del cfg[key]
            notes.append(f"the new tokenizer has no {role} token: {key} removed from config.json")
    return cfg, notes


def _tokenizer_sidecars(m: Model, tgt: TokenizerJson, tgt_path: Path, out: OutputFolder) -> None:
    """tokenizer_config.json and special_tokens_map.json: the new tokenizer's own when it has them,
    else written for it (the source's describe the old vocabulary)."""
    have = False
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = tgt_path.parent / name
        if p.is_file() and p.resolve() != (m.root / name).resolve():
            out.write_json(name, read_json(p))
            have = True
    if have:
        return
    specials = {t: i for t, i in tgt.special_tokens().items()}
    by_role = {r: next(t for t, i in specials.items() if i == idx) for r, idx in roles(tgt).items()}
    keys = {"cls": ("cls_token", "bos_token"), "sep": ("sep_token", "eos_token"), "pad": ("pad_token",),
            "unk": ("unk_token",), "mask": ("mask_token",)}
    stm = {k: by_role[r] for r, ks in keys.items() if r in by_role for k in ks}
    tc: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **stm}
    old = m.root / "tokenizer_config.json"
    if old.is_file():
        d = read_json(old)
        if isinstance(d, dict) and isinstance(d.get("model_max_length"), int):
            tc["model_max_length"] = d["model_max_length"]
    out.write_json("tokenizer_config.json", tc)
    out.write_json("special_tokens_map.json", stm)
