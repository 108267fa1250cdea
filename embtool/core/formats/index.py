"""The embeddings index: what `embtool embed -o X.safetensors` (or `X.parquet`, or `--ray -o FOLDER`) writes and
`embtool search` reads. This module is its one reader, writer, validator and description.

An index holds N embedded texts: their vectors, the texts, their ids, and how the vectors were made (the model and
every encoder setting), so that `search` embeds a text query exactly as the documents were embedded.

Metadata: safetensors `__metadata__`; in Parquet, the schema metadata key `embtool`, a JSON object of the same
strings. Values are strings; a reader refuses a value it cannot use (a `dim` of "abc", a `normalize` of "maybe")
and ignores keys it does not know (`embtool.write_embeddings(metadata=...)` may add some).

  embtool_index          "1", the format version. Every index embtool writes carries it: `embed --force`
                         replaces only a file that does and whose content agrees with it
  precision              float32 | float16 | int8 | binary: how `embeddings` stores the vectors
  count                  N
  dim                    D, the vectors' width (binary: bits); with `--dim` the truncated width
  binary_code            binary only: sign | centred | itq, how float rows became bits
  model                  the model as given to embed, an absolute path (a folder or a weights file)
  model_fingerprint      a cheap identity of its weights (sizes and first/last MiB of each file)
  tokenizer_fingerprint  sha256 prefix of the tokenizer.json used
  tokenizer              that tokenizer.json, when it was given apart from the model (--tokenizer)
  onnx_file              which ONNX file of the model folder ran (--onnx-file)
  pooling                the pooling applied, resolved (never "auto")
  normalize              "true" | "false": rows L2-normalised (cosine and l2 search then need no row norms)
  prefix                 the text put before every document: the resolved prompt, or --prefix
  prompt_name            the sentence-transformers prompt that prefix came from, if any
  max_length             tokens each text was truncated to
  output_name            the ONNX output asked for with --output-name, if any (else the model's default output)
  shard                  "i/n" for `embed --shard i/n` (text j went to shard j mod n), the part number k in an
                         `embed --ray` folder (part-0000k.*)
  id_offset              `embed --ray` parts: the first id of the part

Search embeds text queries with the recorded model (checked against its fingerprints) and settings: pooling,
normalize, max_length, output_name and dim as recorded; the prefix is the model's `query` prompt when it has one
(sentence-transformers' `encode_query`), else the recorded prefix. Keys absent from older indexes fall back to the
model's defaults, with a warning.

safetensors layout (plain safetensors: `safetensors.numpy.load_file` reads it):
  embeddings       [N, D] float32 | float16 | int8, or [N, ceil(D/8)] uint8 sign bits (binary, np.packbits)
  scales           [N] float32        int8 only: row i = int8_mean + embeddings[i] * scales[i]
  int8_sqnorms     [N] float32        int8 with int8_mean: |row i|^2 of the decoded rows, so cosine and l2 search
                                      need no pass over the codes for norms (computed when absent)
  int8_mean        [D] float32        int8 codes (of embeddings or embeddings_int8): the corpus mean they are
                                      centred by; codes = rint((x - int8_mean) / scale), scale = max|x - mean| / 127
                                      (absent in older indexes: mean 0)
  embeddings_float [N, D] float16     optional (--keep-float): search rescores int8/binary candidates with it
  embeddings_int8  [N, D] int8, scales_int8 [N] float32
                                      optional for binary (--keep-int8): rescoring at 1 byte per dimension;
                                      row i = int8_mean + embeddings_int8[i] * scales_int8[i]
  binary_mean      [D] float32        binary: the corpus mean, subtracted before taking signs (absent in older
                                      indexes: plain signs, and queries are binarized the same way)
  binary_rotation  [D, D] float32     binary, optional (itq): bits = sign((x - binary_mean) @ binary_rotation)
  texts            [bytes] uint8      UTF-8 of all texts, concatenated
  text_offsets     [N + 1] int64      text i = texts[text_offsets[i]:text_offsets[i+1]]
  ids              [N] int64          each row's id: its text number in embed's input (global across --shard and
                                      --ray parts). Without ids a row's id is its position in the files searched
Each file has its own means; its scores are those of its decoded rows, so scores of several files merge as they are.

Parquet layout (what Ray Data, Spark, DuckDB, LanceDB and Hugging Face datasets read natively):
  id         int64                           as `ids` above
  text       string
  embedding  fixed_size_list<float32>[D]     (float16 with --precision float16; Parquet holds no int8/binary index)
Rows are written in row groups of ROW_GROUP rows. Parquet cannot be memory-mapped: a reader holds the vectors in RAM
(use the safetensors layout for collections larger than memory). Search also reads Parquet files embtool did not
write: any integer `id`, string `text` and list-of-floats `embedding` columns (`id` and `text` optional).

A bare `.npy` matrix [N, D] of numbers is an index without texts, ids or metadata.

What a reader refuses (CorruptFile, one sentence naming the file): metadata values it cannot use; tensors or columns
of the wrong type or shape (1-D or 3-D embeddings, 2-D ids, float text_offsets, 2-D scales, a .npy of strings,
nested lists); Parquet vectors of unequal lengths, nulls in or instead of a vector, null ids or texts; a count or dim
that disagrees with the data; text offsets that decrease or leave the text bytes; scales, norms, means or rotations
that are negative or not finite. Values checked per row (a NaN inside a row) are checked as search scores them, block
by block: a row that scores NaN or infinity stops the search. The claims search trusts to skip work (unit rows,
stored int8 norms) are checked on every row a search returns, so no returned score rests on a broken claim: a row
that breaks one by scoring too high is among the hits. (A row shorter than the unit-row claim, or with a stored int8
norm larger than its own, scores too low: it can only drop out of the hits, as if it held other values. Parquet rows
are in memory and all checked when opened.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from embtool.algorithms import pooling as P
from embtool.core.errors import CorruptFile, InputError
from embtool.core.hub import recorded_name
from embtool.core.safetensors_io import SafetensorsFile, write_safetensors

VERSION = "1"
VERSION_KEY = "embtool_index"
PARQUET_META_KEY = b"embtool"
PRECISIONS = P.PRECISIONS
BINARY_CODES = ("sign", "centred", "itq")  # how float rows become bits: plain signs, minus the corpus mean, + ITQ rotation
ROW_GROUP = 65_536  # Parquet rows per row group
CHECK_ROWS = 1 << 20  # entries of an [N] array checked at a time when an index is opened
# |norm - 1| a unit row may show, by how it is stored: float32 rows normalised in float32 are within about 1e-6, float16
# rounding moves a norm by up to 5e-4; a score trusting the claim is off by at most this share
UNIT_TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-3}
# the metadata keys this module writes; any other key is kept as it is and means nothing to embtool
KEYS = (VERSION_KEY, "precision", "count", "dim", "binary_code", "model", "model_fingerprint", "tokenizer_fingerprint",
        "tokenizer", "onnx_file", "pooling", "normalize", "prefix", "prompt_name", "max_length", "output_name", "shard",
        "id_offset")
# safetensors: the `embeddings` dtype of each precision
STORED = {"float32": "F32", "float16": "F16", "int8": "I8", "binary": "U8"}
INT_TYPES = ("I64", "I32", "I16", "I8", "U32", "U16", "U8")  # ids: any integer that fits an int64
PARQUET_COLUMNS = ("id", "text", "embedding")


# ---------------------------------------------------------------------------------------------------------------
# metadata


@dataclass(frozen=True)
class EncoderRecord:
    """How the documents were embedded: the encoder settings a query must be embedded with. None: not recorded
    (an older index), the model's default."""

    pooling: str | None = None
    normalize: bool | None = None
    prefix: str | None = None
    prompt_name: str | None = None
    max_length: int | None = None
    output_name: str | None = None

    @classmethod
    def of(cls, settings: Any) -> "EncoderRecord":
        """From resolved encoder settings (runtime.encoder.resolve_settings, or an Encoder's `resolved`)."""
        return cls(settings.pooling, bool(settings.normalize), settings.prefix or "", settings.prompt_name or None,
                   settings.max_length, settings.output_name or None)

    @property
    def recorded(self) -> bool:
        return self.pooling is not None


@dataclass(frozen=True)
class IndexSource:
    """What an index records about where its vectors came from: the model and the encoder settings (everything but
    the stored layout, which the writer adds)."""

    model: str | None = None
    model_fingerprint: str | None = None
    tokenizer_fingerprint: str | None = None
    tokenizer: str | None = None
    onnx_file: str | None = None
    encoder: EncoderRecord = field(default_factory=EncoderRecord)
    shard: str | None = None
    id_offset: int | None = None

    @classmethod
    def of(cls, model: Any, settings: Any, path: str | os.PathLike | None = None,
           shard: tuple[int, int] | None = None) -> "IndexSource":
        """The source record of vectors embedded by `model` (an opened core.model.Model) with resolved `settings`.

        :param path: the model as given (a folder, a weights file or a ModelRef); default: the model's folder
        :param shard: (i, n) for `embed --shard i/n`
        """
        tok = model.tokenizer.path if model.tokenizer is not None else None
        apart = tok is not None and Path(tok).parent.resolve() != Path(model.root).resolve()
        given = path if path is not None else model.root
        return cls(model=recorded_name(model, given), model_fingerprint=model.fingerprint(),
                   tokenizer_fingerprint=model.tokenizer_fingerprint(), tokenizer=str(Path(tok).resolve()) if apart else None,
                   onnx_file=getattr(given, "onnx_file", None), encoder=EncoderRecord.of(settings),
                   shard=f"{shard[0]}/{shard[1]}" if shard else None)

    def part(self, k: int, first_id: int) -> "IndexSource":
        """The record of part k of an `embed --ray` folder, whose first id is `first_id`."""
        return IndexSource(**{**{f.name: getattr(self, f.name) for f in fields(self)}, "shard": str(k), "id_offset": first_id})

    def strings(self) -> dict[str, str]:
        e = self.encoder
        out = {"model": self.model, "model_fingerprint": self.model_fingerprint,
               "tokenizer_fingerprint": self.tokenizer_fingerprint, "tokenizer": self.tokenizer,
               "onnx_file": self.onnx_file, "pooling": e.pooling,
               "normalize": None if e.normalize is None else str(e.normalize).lower(), "prefix": e.prefix,
               "prompt_name": e.prompt_name, "max_length": None if e.max_length is None else str(e.max_length),
               "output_name": e.output_name, "shard": self.shard,
               "id_offset": None if self.id_offset is None else str(self.id_offset)}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class IndexRecord:
    """An index's metadata, parsed and validated."""

    source: IndexSource = field(default_factory=IndexSource)
    version: str | None = None  # None: not written by embtool (or by a release before the key)
    precision: str | None = None
    count: int | None = None
    dim: int | None = None
    binary_code: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # keys this module does not know, kept as they are

    @property
    def written_by_embtool(self) -> bool:
        return self.version is not None


def index_metadata(source: IndexSource | None, *, precision: str, count: int, dim: int, binary_code: str | None = None,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The metadata strings of an index: `source` (model and settings), the stored layout, and `extra` keys."""
    meta = {str(k): str(v) for k, v in (extra or {}).items() if k not in KEYS}
    meta.update({VERSION_KEY: VERSION, "precision": precision, "count": str(count), "dim": str(dim)})
    if precision == "binary":
        meta["binary_code"] = binary_code or "sign"
    if source is not None:
        meta.update(source.strings())
    return meta


def parse_metadata(raw: Any, where: str | os.PathLike) -> IndexRecord:
    """An index's metadata (a str -> str mapping) parsed; CorruptFile names `where` and the key it cannot use."""
    if not isinstance(raw, Mapping):
        raise CorruptFile(f"{where}: the index metadata is {type(raw).__name__}, not a JSON object of strings")
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CorruptFile(f"{where}: index metadata {k!r} is {type(v).__name__} {_short(v)}, not a string")

    def text(key: str) -> str | None:
        v = raw.get(key)
        return v if v else None  # "" was written for "none" by older releases

    def integer(key: str, least: int) -> int | None:
        v = text(key)
        if v is None:
            return None
        try:
            n = int(v)
        except ValueError:
            n = None
        if n is None or n < least:
            raise CorruptFile(f"{where}: index metadata {key} = {_short(v)} is not an integer >= {least}")
        return n

    def choice(key: str, allowed: tuple[str, ...]) -> str | None:
        v = text(key)
        if v is not None and v not in allowed:
            raise CorruptFile(f"{where}: index metadata {key} = {_short(v)} is not one of {', '.join(allowed)}")
        return v

    version = text(VERSION_KEY)
    if version is not None and version != VERSION:
        raise CorruptFile(f"{where}: index format {_short(version)} is not one this embtool reads ({VERSION}); "
                          "a newer embtool wrote it?")
    pooling = text("pooling")
    if pooling is not None and pooling != "auto":
        try:
            P.pooling_modes(pooling)
        except ValueError:
            raise CorruptFile(f"{where}: index metadata pooling = {_short(pooling)} is not a pooling embtool knows "
                              f"({', '.join(P.ALL_POOLINGS)})") from None
    normalize = choice("normalize", ("true", "false"))
    encoder = EncoderRecord(pooling=pooling, normalize=None if normalize is None else normalize == "true",
                            prefix=raw.get("prefix"), prompt_name=text("prompt_name"),
                            max_length=integer("max_length", 2), output_name=text("output_name"))
    offset = text("id_offset")
    source = IndexSource(model=text("model"), model_fingerprint=text("model_fingerprint"),
                         tokenizer_fingerprint=text("tokenizer_fingerprint"), tokenizer=text("tokenizer"),
                         onnx_file=text("onnx_file"), encoder=encoder, shard=text("shard"),
                         id_offset=None if offset is None else integer("id_offset", -(2**63)))
    return IndexRecord(source=source, version=version, precision=choice("precision", PRECISIONS),
                       count=integer("count", 0), dim=integer("dim", 1), binary_code=choice("binary_code", BINARY_CODES),
                       extra={k: v for k, v in raw.items() if k not in KEYS})


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ---------------------------------------------------------------------------------------------------------------
# writing


@dataclass
class IndexArrays:
    """The arrays of an index as its writer hands them over (the field names are the safetensors tensor names;
    see the layout above). Arrays may be memory-mapped spool files: they are written a block at a time."""

    embeddings: np.ndarray
    texts: np.ndarray
    text_offsets: np.ndarray
    ids: np.ndarray | None = None
    scales: np.ndarray | None = None
    int8_sqnorms: np.ndarray | None = None
    int8_mean: np.ndarray | None = None
    embeddings_float: np.ndarray | None = None
    embeddings_int8: np.ndarray | None = None
    scales_int8: np.ndarray | None = None
    binary_mean: np.ndarray | None = None
    binary_rotation: np.ndarray | None = None

    def tensors(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def write_index(path: str | os.PathLike, fmt: str, arrays: IndexArrays, metadata: Mapping[str, str]) -> None:
    """Write an index as `fmt` ("safetensors" or "parquet") to `path` (a temporary name the caller publishes)."""
    if fmt == "safetensors":
        write_safetensors(path, arrays.tensors(), metadata)
    elif fmt == "parquet":
        _write_parquet(path, arrays, metadata)
    else:
        raise ValueError(f"an index is .safetensors or .parquet, not {fmt}")


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet needs pyarrow: pip install 'embtool[parquet]'") from None
    return pa, pq


def _write_parquet(path: str | os.PathLike, a: IndexArrays, metadata: Mapping[str, str]) -> None:
    """Rows (vectors as the embed spool stores them, UTF-8 texts by offsets) as one Parquet file, a row group at a
    time: bounded memory."""
    pa, pq = _pa()
    emb, texts, offsets = a.embeddings, a.texts, a.text_offsets
    n, dim = emb.shape
    if emb.dtype not in (np.float32, np.float16):
        raise InputError("Parquet output stores float32 or float16 vectors; use .safetensors for int8/binary indexes")
    value_type = pa.float16() if emb.dtype == np.float16 else pa.float32()
    id_name, text_name, vec_name = PARQUET_COLUMNS
    schema = pa.schema([(id_name, pa.int64()), (text_name, pa.string()), (vec_name, pa.list_(value_type, dim))],
                       metadata={PARQUET_META_KEY: json.dumps(dict(metadata), sort_keys=True).encode()})
    with pq.ParquetWriter(str(path), schema, compression="zstd") as w:
        for r0 in range(0, n, ROW_GROUP):
            r1 = min(n, r0 + ROW_GROUP)
            o0, o1 = int(offsets[r0]), int(offsets[r1])
            offs = (np.asarray(offsets[r0:r1 + 1], dtype=np.int64) - o0).astype(np.int32 if o1 - o0 < 2**31 else np.int64)
            data = pa.py_buffer(np.ascontiguousarray(texts[o0:o1]).tobytes())
            text_arr = (pa.StringArray if offs.dtype == np.int32 else pa.LargeStringArray).from_buffers(
                r1 - r0, pa.py_buffer(offs.tobytes()), data)
            if offs.dtype != np.int32:
                text_arr = text_arr.cast(pa.string())
            flat = pa.array(np.ascontiguousarray(emb[r0:r1]).reshape(-1), type=value_type)
            vec = pa.FixedSizeListArray.from_arrays(flat, dim)
            id_col = pa.array(np.asarray(a.ids[r0:r1] if a.ids is not None else np.arange(r0, r1), dtype=np.int64))
            w.write_table(pa.Table.from_arrays([id_col, text_arr, vec], schema=schema), row_group_size=ROW_GROUP)


# ---------------------------------------------------------------------------------------------------------------
# reading


INDEX_SUFFIXES = (".safetensors", ".parquet", ".npy")


def open_index(path: str | os.PathLike) -> "StoredIndex":
    """The one way to open a search index file, validated: an embtool .safetensors index (memory-mapped), a
    Parquet embeddings file (read into RAM), or a bare .npy matrix."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such index file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return ParquetIndex(p)
    if suffix == ".npy":
        return NpyIndex(p)
    return SafetensorsIndex(p)


def replace_problem(path: str | os.PathLike, fmt: str) -> str | None:
    """Why the existing file `path` is not an index embtool wrote as `fmt` (None: it is, so `embed --force` may
    replace it): embtool's metadata must be there, the content must agree with it, and nothing else may be in it
    (no other tensors or columns a user added)."""
    try:
        if fmt == "safetensors":
            marked = VERSION_KEY in SafetensorsFile(path).metadata
        else:
            pa, pq = _pa()
            try:
                raw = (pq.read_schema(str(path)).metadata or {}).get(PARQUET_META_KEY, b"")
            except (pa.ArrowException, OSError):
                raise CorruptFile(f"{path}: not a readable Parquet file") from None
            marked = f'"{VERSION_KEY}"'.encode() in raw
        if not marked:
            return f"is not an embtool embeddings index (no {VERSION_KEY} metadata)"
        ix = SafetensorsIndex(path) if fmt == "safetensors" else ParquetIndex(path)
    except (CorruptFile, InputError) as e:
        return f"is not an embtool embeddings index that reads back ({str(e).removeprefix(f'{path}: ')})"
    if ix.record.count != len(ix):
        return f"holds {len(ix)} rows but its metadata says {ix.record.count}"
    others = sorted(set(ix.names) - set(_layout_names(fmt)))
    if others:
        return f"holds more than embtool wrote ({', '.join(others)})"
    if fmt == "safetensors":
        end = ix.file.data_start + max((t.end for t in ix.file.tensors.values()), default=0)
        if end != os.path.getsize(path):
            return f"has {os.path.getsize(path) - end} bytes after its tensors"
    return None


def _layout_names(fmt: str) -> tuple[str, ...]:
    return PARQUET_COLUMNS if fmt == "parquet" else tuple(f.name for f in fields(IndexArrays))


class StoredIndex:
    """What every index file offers search: rows (`emb`, decoded by `block`), their texts and ids, the record.

    `emb` holds the stored rows (float, int8 codes, or packed bits); int8 codes are of the rows minus `int8_mean`
    when it is not None. `ids` is None when the file stores none (a row's id is then its position)."""

    path: Path
    meta: dict[str, str]  # the metadata strings as stored
    record: IndexRecord
    names: tuple[str, ...] = ()  # the tensors or columns the file holds
    precision: str = "float32"
    dim: int = 0
    emb: np.ndarray
    # the other arrays (None: not stored): ids, int8 scales, the float copy, the rescoring int8 codes and their
    # scales, the int8 mean and squared norms, the binary mean and rotation (see the layout above)
    ids = scales = float = int8 = int8_scales = int8_mean = int8_sqnorms = binary_mean = binary_rotation = None

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    @property
    def has_texts(self) -> bool:
        return False

    def text(self, i: int) -> str:
        """Text of row i ("" when the file stores no texts)."""
        return ""

    @property
    def unit_rows(self) -> bool:
        """The index says its rows were L2-normalised (so cosine and l2 need no row norms; `check_hits` verifies)."""
        return self.record.source.encoder.normalize is True

    def block(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 as float32, decoded (int8: int8_mean + codes * scale; binary: ±1/sqrt(D)); refuses rows that
        are not finite numbers."""
        codes = self.emb[r0:r1]
        scale = self.scales[r0:r1] if self.scales is not None else None
        rows = P.from_precision(codes, scale, self.precision, self.dim, self.int8_mean if self.precision == "int8" else None)
        return self._finite(rows, r0)

    def _finite(self, rows: np.ndarray, r0: int) -> np.ndarray:
        ok = np.isfinite(rows).all(1)
        if not ok.all():
            raise CorruptFile(f"{self.path}: row {r0 + int(np.flatnonzero(~ok)[0])} holds a value that is not a "
                              "finite number (NaN or infinity)")
        return rows

    def query_bits(self, q: np.ndarray) -> np.ndarray:
        """Queries binarized the way this binary index's rows were (mean, rotation when stored)."""
        from embtool.algorithms.search import binarize

        return binarize(q, self.binary_mean, self.binary_rotation)

    @property
    def rescore_source(self) -> str | None:
        """Which stored vectors can rescore candidates of this index's scan: embeddings_float, else (binary)
        embeddings_int8, else None."""
        if self.precision not in ("int8", "binary"):
            return None
        if self.float is not None:
            return "embeddings_float"
        if self.precision == "binary" and self.int8 is not None:
            return "embeddings_int8"
        return None

    @property
    def rescore_unit_rows(self) -> bool:
        """Rescoring may trust the unit claim: its rows are the float copy (decoded int8 codes are unit vectors only
        to about 1%, so their norms are computed)."""
        return self.unit_rows and self.float is not None

    def rescore_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows `rows` (sorted local row numbers) from the rescoring vectors."""
        if self.float is not None:
            return np.asarray(self.float[rows], dtype=np.float32)
        return P.from_precision(self.int8[rows], self.int8_scales[rows], "int8", self.dim, self.int8_mean)

    def check_hits(self, rows: np.ndarray, metric: str, rescored: bool) -> None:
        """Refuse (CorruptFile) when a row a search returns was scored by a claim its values break: unit rows
        (normalize=true: cosine and l2 skip the row norms) or int8 rows' stored squared norms. A row that breaks
        them by scoring too high is among the hits, so no returned score rests on a broken claim.

        :param rows: local row numbers of the hits (any shape)
        :param metric: the search metric (dot trusts neither claim)
        :param rescored: the hits were rescored with the rescoring vectors"""
        if metric == "dot" or len(self) == 0:
            return
        r = np.unique(np.asarray(rows, dtype=np.int64))
        if rescored or self.precision in ("float32", "float16"):
            if not self.rescore_unit_rows if rescored else not self.unit_rows:
                return
            stored = self.float if rescored else self.emb
            self._check_unit(stored[r], r, UNIT_TOLERANCE[stored.dtype])
        elif self.precision == "int8" and self.int8_sqnorms is not None and self.int8_mean is not None:
            dec = P.from_precision(self.emb[r], self.scales[r], "int8", self.dim, self.int8_mean)
            sq = np.einsum("ij,ij->i", dec, dec, dtype=np.float64)
            stored = np.asarray(self.int8_sqnorms[r], dtype=np.float64)
            bad = np.abs(sq - stored) > 1e-4 * np.maximum(1.0, sq)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise CorruptFile(f"{self.path}: int8_sqnorms of row {int(r[j])} is {stored[j]:.6g}, but its decoded "
                                  f"row's squared norm is {sq[j]:.6g}")

    def _check_unit(self, x: np.ndarray, rows: np.ndarray, tolerance: float) -> None:
        """Rows x (numbers `rows`) are unit vectors within `tolerance`, or zero (a zero row stays zero normalised)."""
        x = np.asarray(x, dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        bad = (np.abs(norms - 1) > tolerance) & (norms > 1e-6)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise CorruptFile(f"{self.path}: the index says its rows are unit vectors (normalize=true), but row "
                              f"{int(rows[j])} has norm {norms[j]:.6g}")

    def prefetch(self, r0: int, r1: int) -> None:
        """Ask the OS to read rows r0..r1 ahead (memory-mapped files only)."""

    def release(self, r0: int, r1: int) -> None:
        """Drop the pages of rows r0..r1 from this process once they are scored (memory-mapped files only)."""


class SafetensorsIndex(StoredIndex):
    """An embtool .safetensors index, memory-mapped and validated when opened (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such index file")
        self.file = SafetensorsFile(self.path)
        self.meta = dict(self.file.metadata)
        self.record = parse_metadata(self.meta, self.path)
        self.names = tuple(self.file.tensors)
        t = self.file.tensors.get("embeddings")
        if t is None:
            raise CorruptFile(f"{self.path}: not an embtool index (no 'embeddings' tensor)")
        by_dtype = {v: k for k, v in STORED.items()}
        if len(t.shape) != 2:
            raise CorruptFile(f"{self.path}: 'embeddings' has shape {list(t.shape)}; an index stores a matrix [rows, dim]")
        if t.dtype not in by_dtype:
            raise CorruptFile(f"{self.path}: 'embeddings' is {t.dtype}; an index stores F32, F16, I8 or U8 (binary)")
        self.precision = self.record.precision or by_dtype[t.dtype]
        if STORED[self.precision] != t.dtype:
            raise CorruptFile(f"{self.path}: precision {self.precision} is stored as {STORED[self.precision]}, "
                              f"but 'embeddings' is {t.dtype}")
        n, cols = t.shape
        binary = self.precision == "binary"
        self.dim = self.record.dim or cols * (8 if binary else 1)
        if cols != (-(-self.dim // 8) if binary else self.dim):
            raise CorruptFile(f"{self.path}: rows of {cols} {'bytes' if binary else 'values'} do not hold dim {self.dim}")
        if self.record.count is not None and self.record.count != n:
            raise CorruptFile(f"{self.path}: the metadata says {self.record.count} rows, 'embeddings' has {n}")
        if n and not self.dim:
            raise CorruptFile(f"{self.path}: rows of 0 values")
        d = self.dim
        self.emb = self.file.get("embeddings")
        get = self._tensor
        self.scales = get("scales", ("F32",), (n,)) if self.precision == "int8" else None
        if self.precision == "int8" and self.scales is None:
            raise CorruptFile(f"{self.path}: an int8 index without 'scales'")
        self.float = get("embeddings_float", ("F16", "F32"), (n, d))
        self.int8, self.int8_scales = get("embeddings_int8", ("I8",), (n, d)), get("scales_int8", ("F32",), (n,))
        if (self.int8 is None) != (self.int8_scales is None):
            raise CorruptFile(f"{self.path}: 'embeddings_int8' and 'scales_int8' go together")
        self.int8_mean = get("int8_mean", ("F32",), (d,))  # None: older int8 codes, of the rows themselves (mean 0)
        self.int8_sqnorms = get("int8_sqnorms", ("F32",), (n,)) if self.precision == "int8" else None
        self.binary_mean = get("binary_mean", ("F32",), (d,))
        self.binary_rotation = get("binary_rotation", ("F32",), (d, d))
        self.ids = get("ids", INT_TYPES, (n,))
        texts, offsets = get("texts", ("U8",), None), get("text_offsets", ("I64", "I32"), (n + 1,))
        if (texts is None) != (offsets is None):
            raise CorruptFile(f"{self.path}: 'texts' and 'text_offsets' go together")
        self._texts = None if texts is None else (texts, offsets)
        for name, arr, least in (("scales", self.scales, 0), ("scales_int8", self.int8_scales, 0),
                                 ("int8_sqnorms", self.int8_sqnorms, 0), ("int8_mean", self.int8_mean, None),
                                 ("binary_mean", self.binary_mean, None), ("binary_rotation", self.binary_rotation, None)):
            if arr is not None:
                self._check_values(name, arr, least)
        if offsets is not None:
            self._check_offsets(offsets, texts.shape[0])

    def _tensor(self, name: str, dtypes: tuple[str, ...], shape: tuple[int, ...] | None) -> np.ndarray | None:
        """Tensor `name` if the file holds it, of one of `dtypes` and of `shape` (None: any 1-D)."""
        t = self.file.tensors.get(name)
        if t is None:
            return None
        if t.dtype not in dtypes:
            raise CorruptFile(f"{self.path}: '{name}' is {t.dtype}, expected {' or '.join(dtypes)}")
        if (len(t.shape) != 1) if shape is None else (t.shape != shape):
            raise CorruptFile(f"{self.path}: '{name}' has shape {list(t.shape)}, expected "
                              f"{'one dimension' if shape is None else list(shape)}")
        return self.file.get(name)

    def _check_values(self, name: str, arr: np.ndarray, least: float | None) -> None:
        """Every value of `arr` finite (and >= least), a bounded slice at a time."""
        flat = arr.reshape(-1)
        for r0 in range(0, flat.shape[0], CHECK_ROWS):
            part = flat[r0:r0 + CHECK_ROWS]
            bad = ~np.isfinite(part) if least is None else ~(np.isfinite(part) & (part >= least))
            if bad.any():
                i = r0 + int(np.flatnonzero(bad)[0])
                raise CorruptFile(f"{self.path}: '{name}' holds {flat[i]} at {i}; expected a finite number"
                                  + (f" >= {least}" if least is not None else ""))

    def _check_offsets(self, offsets: np.ndarray, size: int) -> None:
        """text_offsets start at 0, never decrease and end at the size of `texts`: each row has its own text."""
        if offsets[0] != 0 or offsets[-1] != size:
            raise CorruptFile(f"{self.path}: text_offsets run from {int(offsets[0])} to {int(offsets[-1])}, not from 0 "
                              f"to the {size} text bytes")
        for r0 in range(0, offsets.shape[0] - 1, CHECK_ROWS):
            part = offsets[r0:r0 + CHECK_ROWS + 1]
            down = part[1:] < part[:-1]
            if down.any():
                raise CorruptFile(f"{self.path}: text_offsets decrease at row {r0 + int(np.flatnonzero(down)[0])}")

    @property
    def has_texts(self) -> bool:
        return self._texts is not None

    def text(self, i: int) -> str:
        if self._texts is None:
            return ""
        t, o = self._texts
        return bytes(t[o[i]:o[i + 1]]).decode("utf-8", errors="replace")

    def prefetch(self, r0: int, r1: int) -> None:
        self._advise(r0, r1, "MADV_WILLNEED")

    def release(self, r0: int, r1: int) -> None:
        # the resident set stays bounded by one block whatever the index size (the data stays in the page cache)
        self._advise(r0, r1, "MADV_DONTNEED")

    def _advise(self, r0: int, r1: int, what: str) -> None:
        mm = self.file._mm
        if mm is None or not hasattr(mm, "madvise"):
            return
        import mmap

        advice = getattr(mmap, what, None)
        if advice is None:
            return
        t = self.file.tensors["embeddings"]
        row = t.nbytes // max(1, t.shape[0])
        start = self.file.data_start + t.begin + r0 * row
        end = self.file.data_start + t.begin + r1 * row
        page = mmap.PAGESIZE
        a = start - start % page
        b = end - end % page  # keep the partial last page: the next block starts in it
        if what == "MADV_WILLNEED":
            b = min(len(mm), end + page - 1 - (end + page - 1) % page)
        if b > a:
            mm.madvise(advice, a, b - a)


class NpyIndex(StoredIndex):
    """A bare .npy matrix [N, D] of numbers: an index without texts, ids or metadata."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CorruptFile(f"{self.path}: not a readable .npy matrix ({e})") from None
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise CorruptFile(f"{self.path}: expected a 2-D matrix, got shape {list(getattr(arr, 'shape', []))}")
        if arr.dtype.kind not in "fiu" or arr.dtype.itemsize > 8:
            raise CorruptFile(f"{self.path}: a .npy of {arr.dtype} is not a matrix of numbers")
        if arr.shape[0] and not arr.shape[1]:
            raise CorruptFile(f"{self.path}: rows of 0 values")
        self.emb, self.meta, self.record = arr, {}, IndexRecord()
        self.precision = "float16" if arr.dtype == np.float16 else "float32"
        self.dim = arr.shape[1]


class ParquetIndex(StoredIndex):
    """A Parquet embeddings file: read into RAM (float32) and validated as a whole when opened."""

    def __init__(self, path: str | os.PathLike):
        pa, pq = _pa()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such index file")
        id_name, text_name, vec_name = PARQUET_COLUMNS
        try:
            pf = pq.ParquetFile(str(self.path))
            schema = pf.schema_arrow
        except (pa.ArrowException, OSError) as e:
            raise CorruptFile(f"{self.path}: not a readable Parquet file ({_first_line(e)})") from None
        self.names = tuple(schema.names)
        if len(set(self.names)) != len(self.names):
            raise CorruptFile(f"{self.path}: column names repeat ({', '.join(self.names)})")
        if vec_name not in self.names:
            raise CorruptFile(f"{self.path}: no {vec_name!r} column (columns: {', '.join(self.names)})")
        raw = (schema.metadata or {}).get(PARQUET_META_KEY)
        try:
            self.meta = json.loads(raw) if raw else {}
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise CorruptFile(f"{self.path}: the {PARQUET_META_KEY.decode()} metadata is not JSON") from None
        self.record = parse_metadata(self.meta, self.path)
        vtype = schema.field(vec_name).type
        if not (pa.types.is_list(vtype) or pa.types.is_large_list(vtype) or pa.types.is_fixed_size_list(vtype)) \
                or not pa.types.is_floating(vtype.value_type):
            raise CorruptFile(f"{self.path}: column {vec_name!r} is {vtype}, expected a list of floats")
        if id_name in self.names:
            t = schema.field(id_name).type
            if not pa.types.is_integer(t) or t == pa.uint64():
                raise CorruptFile(f"{self.path}: column {id_name!r} is {t}, expected integers")
        if text_name in self.names:
            t = schema.field(text_name).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise CorruptFile(f"{self.path}: column {text_name!r} is {t}, expected strings")
        try:
            table = pf.read(columns=[c for c in PARQUET_COLUMNS if c in self.names])
        except (pa.ArrowException, OSError) as e:
            raise CorruptFile(f"{self.path}: unreadable Parquet data ({_first_line(e)})") from None
        self.emb = self._vectors(table.column(vec_name).combine_chunks())
        self.dim = self.emb.shape[1]
        if self.unit_rows:  # in memory already: every row checked now
            stored = np.dtype(np.float16) if pa.types.is_float16(vtype.value_type) else np.dtype(np.float32)
            self._check_unit(self.emb, np.arange(self.emb.shape[0]), UNIT_TOLERANCE[stored])
        n = self.emb.shape[0]
        if self.record.count is not None and self.record.count != n:
            raise CorruptFile(f"{self.path}: the metadata says {self.record.count} rows, the file has {n}")
        if self.record.precision not in (None, "float32", "float16"):
            raise CorruptFile(f"{self.path}: precision {self.record.precision} does not exist in Parquet")
        self.ids = self._column(table, id_name).to_numpy().astype(np.int64) if id_name in self.names else None
        self._texts = self._column(table, text_name).to_pylist() if text_name in self.names else None

    def _column(self, table, name: str):
        col = table.column(name).combine_chunks()
        if col.null_count:
            row = int(np.flatnonzero(np.asarray(col.is_null()))[0])
            raise CorruptFile(f"{self.path}: row {row} has no {name} (null)")
        return col

    def _vectors(self, col) -> np.ndarray:
        """[N, D] float32 from a list column: every row present, of the same length, of finite numbers."""
        pa, _ = _pa()
        n = len(col)
        if col.null_count:
            raise CorruptFile(f"{self.path}: row {int(np.flatnonzero(np.asarray(col.is_null()))[0])} has no vector (null)")
        if pa.types.is_fixed_size_list(col.type):
            lengths = np.full(n, col.type.list_size, dtype=np.int64)
        else:
            lengths = np.asarray(col.value_lengths(), dtype=np.int64)
        dim = int(lengths[0]) if n else (self.record.dim or 0)
        if n and (lengths != dim).any():
            row = int(np.flatnonzero(lengths != dim)[0])
            raise CorruptFile(f"{self.path}: row {row} has {int(lengths[row])} values, row 0 has {dim}")
        if n and not dim:
            raise CorruptFile(f"{self.path}: rows of 0 values")
        if self.record.dim is not None and self.record.dim != dim and n:
            raise CorruptFile(f"{self.path}: the metadata says dim {self.record.dim}, the vectors have {dim} values")
        values = col.flatten()
        if values.null_count:
            at = int(np.flatnonzero(np.asarray(values.is_null()))[0])
            raise CorruptFile(f"{self.path}: row {at // dim} has a null inside its vector")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes infinity: refused just below
            flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return self._finite(flat.reshape(n, dim), 0)

    @property
    def has_texts(self) -> bool:
        return self._texts is not None

    def text(self, i: int) -> str:
        return "" if self._texts is None else self._texts[i]


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__

