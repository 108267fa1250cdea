"""Sentence embeddings through onnxruntime, for ONNX models and built safetensors graphs.

Texts are tokenized in chunks with the fast (multi-threaded) batch tokenizer, sorted by length so
batches carry little padding, run, pooled, and put back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from embtool.algorithms import pooling as P
from embtool.core.architectures import position_offset
from embtool.core.errors import CorruptFile, InputError, Unsupported
from embtool.core.model import NOT_LINEAR, Model, find_vocab_tensors
from embtool.core.st_config import prompt_length, resolve_prompt
from embtool.core.threads import resolve_threads
from embtool.core.tokenizer_io import encode_batch

CHUNK = 4096  # texts tokenized at once; bounds memory for streams of any length
TOKEN_BUDGET = 8192  # padded tokens per onnxruntime call, at most
AUTO_TOKENS = 1024  # default batching: about this many padded tokens per call (see encode_ids)
AUTO_MAX_TEXTS = 256
CHAR_BUDGET_PER_TOKEN = 8  # a text is tokenized from its first 8 * max_length characters (widened when they give fewer tokens)


@dataclass
class EmbedSettings:
    pooling: str = "auto"
    normalize: bool | None = None  # None: from the sentence-transformers config
    dim: int | None = None
    prefix: str = ""  # "" = none given: the model's default prompt, if it has one
    prompt_name: str | None = None  # a prompt of the model's sentence-transformers config (query, document, ...)
    max_length: int | None = None
    batch_size: int | None = None  # None: about AUTO_TOKENS padded tokens per call
    threads: int = 0
    output_name: str | None = None
    sort: bool = True


@dataclass
class EmbedStats:
    texts: int = 0
    tokens: int = 0
    truncated: int = 0
    padded_tokens: int = 0


_ORT_QUIET = False


def quiet_onnxruntime() -> None:
    """Before the first session: onnxruntime's telemetry off and its default logger at error level, so that
    it writes nothing about this process and prints no warnings of its own past --quiet (a read-only HOME,
    graph optimizer notes). The CLI also sets ORT_DISABLE_TELEMETRY=1 before onnxruntime loads: loading
    it writes a device id under ~/.cache/Microsoft otherwise."""
    global _ORT_QUIET
    if _ORT_QUIET:
        return
    if hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    ort.set_default_logger_severity(3)
    _ORT_QUIET = True


# onnxruntime rewrites Add + LayerNormalization into its SkipLayerNormalization kernel, which is slower on CPU here:
# multilingual-e5-small embeds 1.08x faster without the rewrite (CPU time, 1 thread, medians of 5 alternating runs,
# same embeddings to 1.1e-7); emitting the op ourselves measured 0.87x on all-MiniLM
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def session_options(threads: int) -> ort.SessionOptions:
    quiet_onnxruntime()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = resolve_threads(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def make_session(model: Model, threads: int = 0, build=None):
    """(session, feeds as OrtValues). ONNX models load from their path (external data included);
    safetensors models are built in memory with their vocabulary tensors fed zero-copy."""
    so = session_options(threads)
    if model.format == "onnx":
        _ = model.onnx_model  # validates external-data locations before onnxruntime sees the file
        try:
            sess = ort.InferenceSession(str(model.weight_path), so, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=DISABLED_OPTIMIZERS)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.NotImplemented) as e:
            raise Unsupported(f"{model.weight_path}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from e
        return sess, {}
    from embtool.runtime.graphs import build_encoder

    if build is None:
        return graph_session(build_encoder(model, feed_weights=fed_linears(model)), threads)
    return graph_session(build(model), threads)


# Float Linear weights above this many bytes in all are fed to the session zero-copy instead of embedded in the
# graph: an embedded weight exists as numpy, protobuf, serialized bytes and onnxruntime's own copy while the
# session is made (all-mpnet-base-v2: 2.1 GB peak RSS for 438 MB of weights; fed: 0.84 GB, and 1.4 s instead of
# 4.6 s to load). Below it the weights stay constants that onnxruntime prepacks (all-MiniLM measured a few
# percent faster embedding that way, and its copies are small).
FEED_LINEARS_ABOVE = 256 * 2**20


def fed_linears(model: Model) -> frozenset[str]:
    """The float Linear weights (2-D `.weight` tensors other than the vocabulary, position and type tables, which
    are fed or kept as they are anyway) to feed zero-copy: all of them when their float32 copies exceed
    FEED_LINEARS_ABOVE, else none."""
    ws = model.weights
    vocab = {v.name for v in find_vocab_tensors(model)}
    names = [k for k in ws.keys() if k.endswith(".weight") and len(ws.info(k).shape) == 2 and k not in vocab
             and ws.info(k).dtype in ("F32", "F16", "BF16", "F64") and not NOT_LINEAR.search(k)]
    return frozenset(names) if sum(4 * ws.info(k).numel for k in names) > FEED_LINEARS_ABOVE else frozenset()



def graph_session(built, threads: int = 0, feeds: dict[str, np.ndarray] | None = None):
    """(session, feeds as OrtValues) for a graph built in memory (`BuiltGraph`). The weights fed as graph inputs
    are wrapped without a copy: `feeds` (default: the graph's own) are the numpy buffers the session reads, so a
    caller that owns them (the sensitivity probe) can change a weight in place between runs."""
    arrays = built.feeds if feeds is None else feeds
    ov = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    # keep one copy of the graph's weights at a time: proto -> bytes -> session
    m = built.to_model(embed_feeds=False)
    del built
    return proto_session(m, threads), ov


def proto_session(model, threads: int = 0, initializers: dict[str, np.ndarray] | None = None):
    """An onnxruntime session of an in-memory ONNX ModelProto, or of its serialized bytes (CPU, embtool's session
    options); the graph is serialized once and the proto may be dropped by the caller. `initializers` replace the
    graph's initializers of those names (constants to onnxruntime, which may pack them once)."""
    blob = model if isinstance(model, bytes) else model.SerializeToString()
    del model
    so = session_options(threads)
    values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for name, a in (initializers or {}).items()}
    for name, v in values.items():
        so.add_initializer(name, v)
    try:
        sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.NotImplemented) as e:
        # a graph built from weights that contradict each other (shapes, packed layouts): one line, not a traceback
        raise Unsupported(f"onnxruntime cannot load the graph built from this model: {str(e).splitlines()[0][:300]}") from None
    sess._embtool_initializers = values  # onnxruntime reads them for the session's life
    return sess


def default_max_length(model: Model) -> int:
    cfg = model.config
    limits = []
    mpe = cfg.get("max_position_embeddings")
    if isinstance(mpe, int) and mpe > 0:
        limits.append(mpe - position_offset(cfg))  # RoBERTa's positions start after its padding id
    if model.st.max_seq_length:
        limits.append(model.st.max_seq_length)
    return min(limits) if limits else 512


def resolve_settings(model: Model, s: EmbedSettings) -> EmbedSettings:
    """`s` with every default the model decides made explicit: pooling ("auto": the sentence-transformers config,
    else mean), normalize, prefix and prompt_name (`resolve_prompt`), max_length. What an Encoder embeds with,
    known without a session: an index records it, a Ray driver computes it for the shards its actors embed."""
    prefix, prompt_name = resolve_prompt(model.st, s.prompt_name, s.prefix)
    return replace(s, pooling=(model.st.pooling or "mean") if s.pooling == "auto" else s.pooling,
                   normalize=s.normalize if s.normalize is not None else bool(model.st.normalize),
                   prefix=prefix, prompt_name=prompt_name, max_length=s.max_length or default_max_length(model))


def open_encoder(model: Model, **options) -> "Encoder":
    """An Encoder from EmbedSettings fields given by name; an unknown name is a TypeError (a caller's typo)."""
    unknown = set(options) - set(EmbedSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"Encoder() got unexpected options: {', '.join(sorted(unknown))}")
    return Encoder(model, EmbedSettings(**options))


class Encoder:
    def __init__(self, model: Model, settings: EmbedSettings | None = None, session=None):
        if model.tokenizer is None:
            raise InputError(f"{model.root}: no tokenizer.json beside the model; embtool needs it to embed text")
        self.model = model
        self.s = settings or EmbedSettings()
        self.resolved = resolve_settings(model, self.s)  # what an index records of this encoder
        limit = default_max_length(model)
        self.max_length = self.resolved.max_length
        if self.max_length < 2:
            raise InputError(f"--max-length {self.max_length} is too small")
        if model.format == "safetensors" and self.max_length > limit and "max_position_embeddings" in model.config:
            raise InputError(f"--max-length {self.max_length} exceeds the model's limit of {limit} tokens")
        self.tok: Tokenizer = model.tokenizer.runtime()  # shared: truncation is set before each use
        self.sess, self.feeds = session if session is not None else make_session(model, self.s.threads)
        self.input_names = [i.name for i in self.sess.get_inputs() if i.name not in self.feeds]
        for need in ("input_ids",):
            if need not in self.input_names:
                raise Unsupported(f"{model.weight_path}: the ONNX graph has no {need!r} input "
                                  f"(inputs: {', '.join(self.input_names)})")
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
        if unknown:
            raise Unsupported(f"{model.weight_path}: the ONNX graph needs inputs embtool cannot feed: {', '.join(sorted(unknown))}")
        self.output_name, self.pooled_output = self._pick_output()
        pool = self.resolved.pooling
        try:
            P.pooling_modes(pool)
        except ValueError:
            raise InputError(f"pooling {pool!r} is not supported ({', '.join(P.ALL_POOLINGS)}; 'a+b' concatenates)") from None
        if model.st.unsupported and not self.pooled_output:
            raise Unsupported(f"{model.root}: modules.json has module(s) embtool cannot run: {', '.join(model.st.unsupported)}")
        self.pooling = pool
        self.normalize = self.resolved.normalize
        self.prefix, self.prompt_name = self.resolved.prefix, self.resolved.prompt_name
        self.prompt_length = 0  # prompt tokens left out of the pooling (include_prompt: false)
        if self.prefix and not model.st.include_prompt:
            self.prompt_length = prompt_length(self.tok, self.prefix, set(model.tokenizer.special_tokens().values()))
        self.stats = EmbedStats()
        self.hidden: int | None = None

    def _pick_output(self) -> tuple[str, bool]:
        outs = self.sess.get_outputs()
        if self.s.output_name:
            match = [o for o in outs if o.name == self.s.output_name]
            if not match:
                raise InputError(f"no output named {self.s.output_name!r} (outputs: {', '.join(o.name for o in outs)})")
            return match[0].name, len(match[0].shape) == 2
        for preferred in ("last_hidden_state", "token_embeddings"):
            for o in outs:
                if o.name == preferred:
                    return o.name, False
        rank3 = [o for o in outs if len(o.shape) == 3]
        if len(rank3) == 1:
            return rank3[0].name, False
        for preferred in ("sentence_embedding", "pooler_output", "embeddings"):
            for o in outs:
                if o.name == preferred:
                    return o.name, True
        if len(outs) == 1 and len(outs[0].shape) == 2:
            return outs[0].name, True
        raise InputError("cannot tell which output holds the embeddings; choose one with --output-name "
                         f"({', '.join(f'{o.name}{list(o.shape)}' for o in outs)})")

    # ------------------------------------------------------------------------------------------
    def run_outputs(self, names: list[str], ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs `names` for one padded batch (token ids and attention mask, [batch, seq] int64)."""
        feeds = dict(self.feeds)
        for name, a in self.batch_arrays(ids, mask).items():
            feeds[name] = ort.OrtValue.ortvalue_from_numpy(a)
        try:
            return [v.numpy() for v in self.sess.run_with_ort_values(names, feeds)]
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise Unsupported(f"{self.model.weight_path}: onnxruntime cannot run it on a batch of {ids.shape[1]} tokens "
                              f"({msg[:300]}); if the model has fewer positions, give --max-length") from None

    def batch_arrays(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's data inputs for one padded batch: input_ids, attention_mask and, when it takes them,
        token_type_ids (zeros) and position_ids (0, 1, ...)."""
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        if "position_ids" in self.input_names:
            arrays["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        return {name: arrays[name] for name in self.input_names}

    def padded(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, attention mask) [len(seqs), longest] int64, right-padded with the model's pad id."""
        L = max(1, max((len(s) for s in seqs), default=1))
        ids = np.full((len(seqs), L), self.pad_id(), dtype=np.int64)
        mask = np.zeros((len(seqs), L), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        return ids, mask

    def run_batch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooled (and head-applied) embeddings of one padded batch, before normalisation and --dim."""
        out = self.run_outputs([self.output_name], ids, mask)[0]
        if self.pooled_output:
            if out.ndim != 2:
                raise Unsupported(f"output {self.output_name!r} has shape {out.shape}, expected [batch, hidden]")
            return out.astype(np.float32, copy=False)
        if out.ndim != 3:
            raise Unsupported(f"output {self.output_name!r} has shape {out.shape}, expected [batch, seq, hidden]")
        return self._head(P.pool(out, mask, self.pooling, self.prompt_length))

    def _head(self, x: np.ndarray) -> np.ndarray:
        """The sentence-transformers modules after pooling, in order: Dense layers, Normalize."""
        for kind, layer in self.model.st.head:
            if kind == "dense":
                if x.shape[1] != layer.weight.shape[1]:
                    raise Unsupported(f"{self.model.root / layer.path}: the Dense layer takes {layer.weight.shape[1]} "
                                      f"features but the pooled embedding has {x.shape[1]}")
                x = P.dense(x, layer.weight, layer.bias, layer.activation, layer.residual, layer.use_residual)
            elif kind == "normalize" and self.s.normalize is None:
                x = P.normalize(x)
        return x

    def _finish(self, x: np.ndarray) -> np.ndarray:
        if self.hidden is None:
            self.hidden = x.shape[1]
            if self.s.dim is not None and self.s.dim > self.hidden:
                raise InputError(f"--dim {self.s.dim} is larger than the model's embedding size {self.hidden}")
        x = P.truncate_dim(x, self.s.dim)
        return P.normalize(x) if self.normalize else x.astype(np.float32, copy=False)

    def encode_ids(self, seqs: list[list[int]]) -> np.ndarray:
        """Embed already-tokenized sequences (special tokens included); input order kept."""
        n = len(seqs)
        order = sorted(range(n), key=lambda i: -len(seqs[i])) if self.s.sort else list(range(n))
        out: np.ndarray | None = None
        bs = max(1, self.s.batch_size) if self.s.batch_size else AUTO_MAX_TEXTS
        budget = TOKEN_BUDGET if self.s.batch_size else AUTO_TOKENS
        b0 = 0
        while b0 < n:
            # at most --batch-size texts and TOKEN_BUDGET padded tokens per call; by default about AUTO_TOKENS:
            # a call's activations then stay cache-sized, measured faster than a fixed count of texts both for
            # paragraphs (long texts come a few per call) and for single words (a few hundred per call)
            longest = max(1, max(len(seqs[i]) for i in order[b0 : b0 + bs]))
            idx = order[b0 : b0 + min(bs, max(1, budget // longest))]
            b0 += len(idx)
            ids, mask = self.padded([seqs[i] for i in idx])
            self.stats.padded_tokens += int(mask.size - mask.sum())
            vec = require_finite(self._finish(self.run_batch(ids, mask)), self.model.root)
            if out is None:
                out = np.empty((n, vec.shape[1]), dtype=np.float32)
            out[idx] = vec
        if out is None:
            out = np.empty((0, self.s.dim or 0), dtype=np.float32)
        return out

    def pad_id(self) -> int:
        if not hasattr(self, "_pad"):
            pad = None
            for name in ("<pad>", "[PAD]", "<|endoftext|>"):
                pad = self.tok.token_to_id(name)
                if pad is not None:
                    break
            cfg_pad = self.model.config.get("pad_token_id")
            self._pad = int(cfg_pad) if isinstance(cfg_pad, int) else (pad if pad is not None else 0)
        return self._pad

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if self.prefix:
            texts = [self.prefix + t for t in texts]
        if self.model.st.do_lower_case:
            texts = [t.lower() for t in texts]
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_length)
        encs = self._encode_cut(texts)
        seqs = []
        for e in encs:
            if e.overflowing:
                self.stats.truncated += 1
            seqs.append(e.ids)
            self.stats.tokens += len(e.ids)
        self.stats.texts += len(texts)
        return seqs

    def _encode_cut(self, texts: list[str]) -> list:
        """Encodings (truncated to max_length) of texts, each tokenized from a prefix of at most a character
        budget, so a text of any length costs time and memory bounded by max_length. The cut text is accepted
        when it still overflows max_length and a word boundary follows the last kept token: then the kept tokens
        and the overflow (the truncation count) are those of the whole text. Otherwise the budget widens."""
        out: list = [None] * len(texts)
        todo = list(range(len(texts)))
        budget = CHAR_BUDGET_PER_TOKEN * self.max_length + 64
        while todo:
            cut = [texts[i][:budget] for i in todo]
            encs = encode_batch(self.tok, cut, first=self.stats.texts + 1, what="input text")
            later = []
            for i, c, e in zip(todo, cut, encs):
                if len(c) == len(texts[i]) or (e.overflowing and self._boundary_after(c, e)):
                    out[i] = e
                else:
                    later.append(i)
            todo = later
            budget *= 4
        return out

    def _boundary_after(self, cut: str, enc) -> bool:
        """A word ends between the last kept token of `enc` and the end of `cut`, so cutting the text there changed
        none of the kept tokens: whitespace, else a split by the tokenizer's own normalizer and pre-tokenizer."""
        end = max((b for _, b in enc.offsets), default=0)
        tail = cut[end:]
        if any(ch.isspace() for ch in tail):
            return True
        pre = self.tok.pre_tokenizer
        if pre is None or not tail:
            return False
        norm = self.tok.normalizer
        t = norm.normalize_str(tail) if norm is not None else tail
        return len(pre.pre_tokenize_str(t)) >= 2

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encode_ids(self.tokenize(list(texts)))

    def embed_stream(self, texts: Iterable[str], chunk: int = CHUNK, progress=None) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yields (texts, vectors) per chunk, in input order, with bounded memory."""
        buf: list[str] = []
        for t in texts:
            buf.append(t)
            if len(buf) >= chunk:
                yield buf, self.embed(buf)
                if progress is not None:
                    progress.update(len(buf))
                buf = []
        if buf:
            yield buf, self.embed(buf)
            if progress is not None:
                progress.update(len(buf))


def require_finite(values: np.ndarray, model, what: str = "texts") -> np.ndarray:
    """`values` (embeddings, one row per text, or other outputs of `model`, a model path; `what` its rows are) when
    all are finite;
    else CorruptFile: NaN or infinity means the model's weights or config.json cannot be right, and no embedding,
    fidelity figure or output built from them is worth anything. Every embedding the encoder returns passes here."""
    finite = np.isfinite(values)
    if not finite.all():
        rows = values.shape[0] if values.ndim > 1 else 1
        bad = int((~finite.reshape(rows, -1)).any(axis=1).sum())
        raise CorruptFile(f"{model}: the model gives NaN or infinite values (for {bad} of {rows} {what}); its weights "
                          "or config.json cannot be right")
    return values


def run_embed(encoder: Encoder, texts: Iterable[str], sink, progress=None, shard: tuple[int, int] | None = None) -> list[int]:
    """Embed a stream of texts into `sink` (an EmbeddingSink). Returns the global ids written
    (with --shard i/n, text number j goes to shard j % n)."""
    ids: list[int] = []

    def selected() -> Iterator[str]:
        for j, t in enumerate(texts):
            if shard is None or j % shard[1] == shard[0]:
                ids.append(j)
                yield t

    for chunk, vecs in encoder.embed_stream(selected(), progress=progress):
        sink.add(chunk, vecs)
    return ids
