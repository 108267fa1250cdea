"""Embedding outputs (.npy, .safetensors index, .jsonl, word2vec, stdout) and the index reader.

The index format is plain safetensors, readable with `safetensors.numpy.load_file`:
  embeddings    [N, D] float32 | float16 | int8, or [N, ceil(D/8)] uint8 sign bits (binary)
  scales        [N] float32            (int8 only: row i = int8_mean + embeddings[i] * scales[i])
  int8_sqnorms  [N] float32            (int8 with int8_mean: |row i|^2 of the decoded rows, so cosine and l2 search
                                        need no pass over the codes for norms; computed when absent)
  int8_mean     [D] float32            (int8 codes, of embeddings or embeddings_int8: the corpus mean they are centred
                                        by; codes = rint((x - int8_mean) / scale), scale = max|x - int8_mean| / 127)
  embeddings_float [N, D] float16      (optional, --keep-float: used by search to rescore)
  embeddings_int8 [N, D] int8, scales_int8 [N] float32
                                       (optional, binary with --keep-int8: rescoring at 1 byte per dimension;
                                        row i = int8_mean + embeddings_int8[i] * scales_int8[i])
  binary_mean   [D] float32            (binary: the corpus mean, subtracted before taking signs)
  binary_rotation [D, D] float32       (binary, optional: bits = sign((x - mean) @ rotation))
  texts         [bytes] uint8          UTF-8 of all texts, concatenated
  text_offsets  [N + 1] int64          text i = texts[text_offsets[i]:text_offsets[i+1]]
  __metadata__  embtool_index=1, model, model_fingerprint, pooling, normalize, dim, precision,
                prefix, max_length, count, id_offset (first id of this shard), binary_code (sign | centred | itq)

Older binary indexes have no binary_mean: their bits are the plain signs, and search binarizes queries the same way.
int8 codes without int8_mean (older indexes; the rescoring codes of a binary index with the plain `sign` code) are
of x itself: the mean is 0. A .npy output has no room for a mean: int8 .npy files hold plain codes rint(x / scale).
Each file has its own mean (shards written apart too); its search scores are those of its decoded rows, so scores
of several files compare and merge as they are.

Why centred int8 codes: real sentence embeddings share a large common direction (multilingual-e5-small paragraphs:
mean pairwise cosine 0.83) that takes much of each row's range max|x|; codes of x - mean spend the 255 levels on
what tells rows apart. On 6,000 e5-small paragraphs, recall@10 of `embtool search` over the int8 index against the
float index: cosine 0.989 -> 0.991 (300 half-paragraph queries), 0.990 -> 0.995 (2,000 paragraphs as queries); dot
0.977 -> 0.988 and 0.979 -> 0.990. Per-row asymmetric codes (min..max, a zero point per row) measured no better
than symmetric centred ones (2,000 queries: +0.0006 ± 0.0006 cosine), so the codes stay symmetric.

Writers spool rows to temporary files so that any number of texts streams in bounded memory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

import numpy as np

from embtool.algorithms import pooling as P
from embtool.core.errors import BadUsage, CorruptFile, InputError
from embtool.core.safetensors_io import SafetensorsFile, write_safetensors

FORMATS = ("npy", "safetensors", "jsonl", "word2vec", "parquet")
BINARY_CODES = ("sign", "centred", "itq")  # how float rows become bits: plain signs, minus the corpus mean, + ITQ rotation
BINARY_CODE = "itq"
ROTATION_SAMPLE = 20000  # rows the ITQ rotation is fitted on (the first ones)
SPOOL_BLOCK_BYTES = 32 << 20  # spooled float rows quantized at a time at finish() (a few such temporaries)


def format_for(path: str | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    if path is None or path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("npy", "safetensors", "jsonl", "parquet"):
        return suffix
    if suffix in ("txt", "vec", "w2v"):
        return "word2vec"
    raise InputError(f"cannot tell the output format from {path!r}; use --format ({', '.join(FORMATS)})")


def not_embeddings_file(path: Path, fmt: str) -> str | None:
    """Why an existing `path` is not an embeddings file of format `fmt` as embed writes it (None: it is, so
    `embed --force` may replace it): an index carries embtool_index in its metadata, a .npy is a 2-D numeric
    matrix, a JSONL file starts with an {"id", "text", "embedding"} row, a word2vec file with "COUNT DIM"."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if fmt == "safetensors":
            if SafetensorsFile(path).metadata.get("embtool_index") is None:
                return "is not an embtool embeddings index (no embtool_index metadata)"
        elif fmt == "npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2 or arr.dtype.kind not in "fiu":
                return "is not a 2-D numeric .npy matrix"
        elif fmt == "jsonl":
            row = json.loads(head.split(b"\n", 1)[0])
            if not (isinstance(row, dict) and {"id", "text", "embedding"} <= set(row)):
                return "is not a JSONL embeddings file (first row lacks id, text, embedding)"
        elif fmt == "word2vec":
            count, dim = head.split(b"\n", 1)[0].split()
            int(count), int(dim)
        elif fmt == "parquet":
            from embtool.core.parquet_io import ParquetIndex

            ParquetIndex(path)
        else:
            return f"is not a {fmt} file"
    except (CorruptFile, ValueError, OSError, UnicodeDecodeError):
        return f"is not a {fmt} embeddings file"
    return None


class EmbeddingSink:
    """Accumulates (texts, vectors) chunks and writes one output file at `finish(path)`."""

    def __init__(self, fmt: str, precision: str = "float32", keep_float: bool = False, stream: IO[str] | None = None,
                 keep_int8: bool = False, binary_code: str = BINARY_CODE, spool_dir: str | os.PathLike | None = None):
        if fmt in ("jsonl", "word2vec", "parquet") and precision not in ("float32", "float16"):
            raise InputError(f"--precision {precision} is only stored in .npy or .safetensors outputs")
        if keep_int8 and precision != "binary":
            raise BadUsage("--keep-int8 goes with --precision binary (rescoring codes of a binary index)")
        if binary_code not in BINARY_CODES:
            raise InputError(f"unknown binary code {binary_code!r} ({', '.join(BINARY_CODES)})")
        self.fmt, self.precision, self.keep_float, self.keep_int8 = fmt, precision, keep_float, keep_int8
        # a .npy file has no room for the mean and rotation: it keeps the plain signs (and plain int8 codes)
        self.binary_code = binary_code if precision == "binary" and fmt == "safetensors" else "sign"
        # int8 codes of x - the corpus mean (int8_mean): the index's own codes, or a centred binary index's
        # rescoring codes (by the same mean as its bits)
        self.centre_int8 = fmt == "safetensors" and (precision == "int8" or (keep_int8 and self.binary_code != "sign"))
        self.stream = stream  # jsonl to stdout: written as it comes
        self.count = 0
        self.dim: int | None = None
        # spool_dir: where the rows wait (default: the temporary directory); an output's own temporary folder, so
        # that an interruption at any instant leaves nothing behind
        self._tmpdir = tempfile.TemporaryDirectory(prefix="embtool-spool-", dir=spool_dir)
        d = Path(self._tmpdir.name)
        self._vec = open(d / "vec.bin", "wb")
        self._flt = open(d / "flt.bin", "wb") if keep_float else None
        self._i8 = open(d / "i8.bin", "wb") if keep_int8 else None
        self._i8s = open(d / "i8s.bin", "wb") if keep_int8 else None
        # codes that depend on the whole corpus (its mean, a fitted rotation): the float rows are spooled and
        # quantized at finish()
        self._raw = open(d / "raw.bin", "wb") if self.binary_code != "sign" or self.centre_int8 else None
        self._sum: np.ndarray | None = None
        self._sample: list[np.ndarray] = []
        self._scl = open(d / "scale.bin", "wb")
        self._txt = open(d / "text.bin", "wb")
        self._offsets = [0]
        self._codes_dtype: np.dtype | None = None
        self._codes_cols = 0
        self.extra: dict[str, np.ndarray] = {}  # more tensors for the index (e.g. global "ids")

    def add(self, texts: list[str], vecs: np.ndarray) -> None:
        if self.dim is None:
            self.dim = vecs.shape[1]
        if self.stream is not None:
            for t, v in zip(texts, vecs):
                self.stream.write(json.dumps({"id": self.count, "text": t, "embedding": [round(float(x), 7) for x in v]},
                                             ensure_ascii=False) + "\n")
                self.count += 1
            self.stream.flush()
            return
        if self._raw is not None:
            v32 = np.ascontiguousarray(vecs, dtype=np.float32)
            self._raw.write(v32.tobytes())
            s = v32.sum(0, dtype=np.float64)
            self._sum = s if self._sum is None else self._sum + s
            have = sum(len(x) for x in self._sample)
            if self.binary_code == "itq" and have < ROTATION_SAMPLE:
                self._sample.append(v32[: ROTATION_SAMPLE - have].copy())
            if self.precision == "binary":
                self._codes_dtype, self._codes_cols = np.dtype(np.uint8), -(-vecs.shape[1] // 8)
            else:
                self._codes_dtype, self._codes_cols = np.dtype(np.int8), vecs.shape[1]
        else:
            codes, scale = P.to_precision(vecs, self.precision)
            self._codes_dtype, self._codes_cols = codes.dtype, codes.shape[1]
            self._vec.write(np.ascontiguousarray(codes).tobytes())
            if scale is not None:
                self._scl.write(scale.astype(np.float32).tobytes())
        if self._flt is not None:
            self._flt.write(vecs.astype(np.float16).tobytes())
        if self._i8 is not None and not self.centre_int8:
            c8, s8 = P.to_precision(vecs, "int8")
            self._i8.write(np.ascontiguousarray(c8).tobytes())
            self._i8s.write(s8.astype(np.float32).tobytes())
        for t in texts:
            b = t.encode("utf-8")
            self._txt.write(b)
            self._offsets.append(self._offsets[-1] + len(b))
        self.count += len(texts)

    def _quantize_spooled(self, out: dict[str, np.ndarray]) -> None:
        """Codes of the spooled float rows, by the corpus mean: binary bits centred (and rotated, ITQ, when asked);
        int8 codes of x - mean (the index's own, or a binary index's rescoring codes)."""
        from embtool.algorithms.search import binarize, fit_rotation

        self._raw.flush()
        d = Path(self._tmpdir.name)
        n, dim = self.count, self.dim or 0
        mean = (self._sum / max(1, n)).astype(np.float32)
        rot = None
        if self.precision == "binary" and self.binary_code == "itq" and dim > 1:
            rot = fit_rotation(np.concatenate(self._sample), mean)
        raw = np.memmap(d / "raw.bin", dtype=np.float32, mode="r", shape=(n, dim))
        step = max(1024, SPOOL_BLOCK_BYTES // (4 * max(1, dim)))
        sqnorms: list[np.ndarray] = []  # [N] float32 in all: small next to the codes
        for r0 in range(0, n, step):
            x = np.asarray(raw[r0:r0 + step])
            if self.precision == "binary":
                self._vec.write(np.ascontiguousarray(binarize(x, mean, rot)).tobytes())
            if self.centre_int8:
                c8, s8 = P.to_precision(x - mean[None, :], "int8")
                codes, scales = (self._vec, self._scl) if self.precision == "int8" else (self._i8, self._i8s)
                codes.write(np.ascontiguousarray(c8).tobytes())
                scales.write(s8.astype(np.float32).tobytes())
                if self.precision == "int8":  # the decoded rows' squared norms: cosine and l2 search read them
                    dec = P.from_precision(c8, s8, "int8", x.shape[1], mean)
                    sqnorms.append(np.einsum("ij,ij->i", dec, dec, dtype=np.float64).astype(np.float32))
        del raw
        if sqnorms:
            out["int8_sqnorms"] = np.concatenate(sqnorms)
        if self.precision == "binary":
            out["binary_mean"] = mean
        if rot is not None:
            out["binary_rotation"] = rot
        if self.centre_int8:
            out["int8_mean"] = mean

    def _arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self._raw is not None and self.count:
            self._quantize_spooled(out)
        for f in (self._vec, self._scl, self._txt, self._flt, self._i8, self._i8s):
            if f is not None:
                f.flush()
        d = Path(self._tmpdir.name)
        n = self.count
        cols = self._codes_cols if n else (self.dim or 0)
        dt = self._codes_dtype if n else np.dtype(np.float32)
        out["embeddings"] = (np.memmap(d / "vec.bin", dtype=dt, mode="r", shape=(n, cols)) if n
                             else np.zeros((0, cols), dt))
        if self.precision == "int8":
            out["scales"] = np.memmap(d / "scale.bin", dtype=np.float32, mode="r", shape=(n,)) if n else np.zeros(0, np.float32)
        if self._flt is not None:
            out["embeddings_float"] = (np.memmap(d / "flt.bin", dtype=np.float16, mode="r", shape=(n, self.dim))
                                       if n else np.zeros((0, self.dim or 0), np.float16))
        if self._i8 is not None:
            out["embeddings_int8"] = (np.memmap(d / "i8.bin", dtype=np.int8, mode="r", shape=(n, self.dim))
                                      if n else np.zeros((0, self.dim or 0), np.int8))
            out["scales_int8"] = np.memmap(d / "i8s.bin", dtype=np.float32, mode="r", shape=(n,)) if n else np.zeros(0, np.float32)
        size = self._offsets[-1]
        out["texts"] = np.memmap(d / "text.bin", dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)
        out["text_offsets"] = np.asarray(self._offsets, dtype=np.int64)
        out.update(self.extra)
        return out

    def finish(self, path: Path, metadata: dict[str, str]) -> None:
        """Write the collected rows to `path` (a temporary name the caller then publishes)."""
        if self.stream is not None:
            return
        arrays = self._arrays()
        if self.fmt == "safetensors":
            meta = {"embtool_index": "1", "precision": self.precision, "count": str(self.count),
                    "dim": str(self.dim or 0), **metadata}
            if self.precision == "binary":
                meta["binary_code"] = self.binary_code
            write_safetensors(path, arrays, meta)
        elif self.fmt == "parquet":
            from embtool.core.parquet_io import write_parquet

            meta = {"embtool_index": "1", "precision": self.precision, "count": str(self.count),
                    "dim": str(self.dim or 0), **metadata}
            write_parquet(path, arrays["embeddings"], arrays["texts"], arrays["text_offsets"], arrays.get("ids"), meta)
        elif self.fmt == "npy":
            emb = arrays["embeddings"]
            with open(path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(emb.dtype),
                                                          "fortran_order": False, "shape": emb.shape})
                for r0 in range(0, emb.shape[0], 65536):
                    f.write(np.ascontiguousarray(emb[r0:r0 + 65536]).tobytes())
        elif self.fmt in ("jsonl", "word2vec"):
            emb = arrays["embeddings"]
            texts, offs = arrays["texts"], arrays["text_offsets"]
            with open(path, "w", encoding="utf-8") as f:
                if self.fmt == "word2vec":
                    f.write(f"{self.count} {self.dim or 0}\n")
                for i in range(self.count):
                    t = bytes(texts[offs[i]:offs[i + 1]]).decode("utf-8")
                    v = emb[i].astype(np.float32)
                    if self.fmt == "word2vec":
                        if not t or any(c.isspace() for c in t):
                            raise InputError(f"word2vec output needs one word per line without spaces; line {i + 1} is {t!r}")
                        f.write(t + " " + " ".join(f"{x:.6g}" for x in v) + "\n")
                    else:
                        f.write(json.dumps({"id": i, "text": t, "embedding": [round(float(x), 7) for x in v]},
                                           ensure_ascii=False) + "\n")

    def close(self) -> None:
        for f in (self._vec, self._scl, self._txt, self._flt, self._i8, self._i8s, self._raw):
            if f is not None:
                f.close()
        self._tmpdir.cleanup()


class Index:
    """A search index: one embtool .safetensors embeddings file (or a bare .npy matrix)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such index file")
        if self.path.suffix.lower() == ".npy":
            try:
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise CorruptFile(f"{self.path}: not a readable .npy matrix ({e})") from e
            if arr.ndim != 2:
                raise CorruptFile(f"{self.path}: expected a 2-D matrix, got shape {arr.shape}")
            self.emb, self.scales, self.float, self.meta = arr, None, None, {"precision": str(arr.dtype)}
            self.int8 = self.int8_scales = self.int8_mean = self.int8_sqnorms = self.binary_mean = self.binary_rotation = None
            self.precision = "float16" if arr.dtype == np.float16 else "float32"
            self._texts = None
            self.ids = None
            self.dim = arr.shape[1]
            return
        self.file = SafetensorsFile(self.path)
        self.meta = dict(self.file.metadata)
        if "embeddings" not in self.file.tensors:
            raise CorruptFile(f"{self.path}: not an embtool index (no 'embeddings' tensor)")
        self.emb = self.file.get("embeddings")
        self.precision = self.meta.get("precision", {np.dtype(np.int8): "int8", np.dtype(np.uint8): "binary",
                                                     np.dtype(np.float16): "float16"}.get(self.emb.dtype, "float32"))
        self.scales = self.file.get("scales") if "scales" in self.file.tensors else None
        self.float = self.file.get("embeddings_float") if "embeddings_float" in self.file.tensors else None
        self.dim = int(self.meta.get("dim", self.emb.shape[1] * (8 if self.precision == "binary" else 1)))
        if self.precision == "int8" and (self.scales is None or self.scales.shape[0] != self.emb.shape[0]):
            raise CorruptFile(f"{self.path}: int8 index without matching 'scales'")
        self._texts = (self.file.get("texts"), self.file.get("text_offsets")) if "texts" in self.file.tensors else None
        if self._texts is not None and self._texts[1].shape[0] != self.emb.shape[0] + 1:
            raise CorruptFile(f"{self.path}: text_offsets does not match the number of embeddings")
        self.ids = self.file.get("ids") if "ids" in self.file.tensors else None
        if self.ids is not None and self.ids.shape[0] != self.emb.shape[0]:
            raise CorruptFile(f"{self.path}: 'ids' does not match the number of embeddings")
        n = self.emb.shape[0]
        get = lambda name: self.file.get(name) if name in self.file.tensors else None  # noqa: E731
        self.int8, self.int8_scales = get("embeddings_int8"), get("scales_int8")
        self.int8_mean = get("int8_mean")  # None: older int8 codes, of the rows themselves (mean 0)
        self.int8_sqnorms = get("int8_sqnorms") if self.precision == "int8" else None  # None: computed when searching
        self.binary_mean, self.binary_rotation = get("binary_mean"), get("binary_rotation")
        for name, arr, shape in (("embeddings_float", self.float, (n, self.dim)), ("embeddings_int8", self.int8, (n, self.dim)),
                                 ("scales_int8", self.int8_scales, (n,)), ("int8_mean", self.int8_mean, (self.dim,)),
                                 ("int8_sqnorms", self.int8_sqnorms, (n,)),
                                 ("binary_mean", self.binary_mean, (self.dim,)),
                                 ("binary_rotation", self.binary_rotation, (self.dim, self.dim))):
            if arr is not None and tuple(arr.shape) != shape:
                raise CorruptFile(f"{self.path}: '{name}' has shape {list(arr.shape)}, expected {list(shape)}")
        if (self.int8 is None) != (self.int8_scales is None):
            raise CorruptFile(f"{self.path}: 'embeddings_int8' and 'scales_int8' go together")
        if self.precision == "binary" and self.emb.shape[1] != -(-self.dim // 8):
            raise CorruptFile(f"{self.path}: binary rows of {self.emb.shape[1]} bytes do not hold {self.dim} bits")

    @property
    def unit_rows(self) -> bool:
        """The index records that its rows were L2-normalised (so cosine needs no row norms)."""
        return self.meta.get("normalize") == "true"

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

    def rescore_rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows `ids` (sorted local row numbers) from the rescoring vectors."""
        if self.float is not None:
            return np.asarray(self.float[ids], dtype=np.float32)
        return P.from_precision(self.int8[ids], self.int8_scales[ids], "int8", self.dim, self.int8_mean)

    def prefetch(self, r0: int, r1: int) -> None:
        """Ask the OS to read rows r0..r1 ahead (MADV_WILLNEED), so reading overlaps the scoring of the block before."""
        self._advise(r0, r1, "MADV_WILLNEED")

    def release(self, r0: int, r1: int) -> None:
        """Drop the pages of rows r0..r1 from this process once they are scored, so the resident set stays
        bounded by one block whatever the index size (the data stays in the OS page cache)."""
        self._advise(r0, r1, "MADV_DONTNEED")

    def _advise(self, r0: int, r1: int, what: str) -> None:
        f = getattr(self, "file", None)
        mm = f._mm if f is not None else None
        if mm is None or not hasattr(mm, "madvise"):
            return
        import mmap

        advice = getattr(mmap, what, None)
        if advice is None:
            return
        t = f.tensors["embeddings"]
        row = t.nbytes // max(1, t.shape[0])
        start = f.data_start + t.begin + r0 * row
        end = f.data_start + t.begin + r1 * row
        page = mmap.PAGESIZE
        a = start - start % page
        b = end - end % page  # keep the partial last page: the next block starts in it
        if what == "MADV_WILLNEED":
            b = min(len(mm), end + page - 1 - (end + page - 1) % page)
        if b > a:
            mm.madvise(advice, a, b - a)

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    @property
    def has_texts(self) -> bool:
        return self._texts is not None

    def block(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 as float32 (dequantized for int8: int8_mean + codes * scale; ±1/sqrt(D) for binary)."""
        codes = self.emb[r0:r1]
        scale = self.scales[r0:r1] if self.scales is not None else None
        return P.from_precision(codes, scale, self.precision, self.dim, self.int8_mean if self.precision == "int8" else None)

    def text(self, i: int) -> str:
        if self._texts is None:
            return ""
        t, o = self._texts
        return bytes(t[o[i]:o[i + 1]]).decode("utf-8", errors="replace")


def write_stdout_line(line: str) -> None:
    sys.stdout.write(line + "\n")


INDEX_SUFFIXES = (".safetensors", ".parquet", ".npy")


def open_index(path: str | os.PathLike):
    """The one way to open a search index file: embtool .safetensors (memory-mapped), a bare .npy matrix, or a
    Parquet embeddings file (read into RAM)."""
    if Path(path).suffix.lower() == ".parquet":
        from embtool.core.parquet_io import ParquetIndex

        return ParquetIndex(path)
    return Index(path)


def expand_index_paths(paths: list[str]) -> list[str]:
    """Index arguments with folders expanded: a folder stands for its index shards (what `embed --ray` writes),
    sorted by name."""
    out: list[str] = []
    for p in paths:
        d = Path(p)
        if d.is_dir():
            shards = sorted(str(x) for x in d.iterdir() if x.suffix.lower() in INDEX_SUFFIXES and x.is_file())
            if not shards:
                raise InputError(f"{p}: a folder without index files (.safetensors, .parquet, .npy)")
            out.extend(shards)
        else:
            out.append(str(p))
    return out
