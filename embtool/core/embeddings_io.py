"""Embedding outputs: the streaming writer every embed output goes through (.npy, .safetensors and .parquet index,
.jsonl, word2vec text, stdout), and what `embed --force` may replace.

The index (.safetensors / .parquet: vectors, texts, ids, and how they were embedded) is a record with its own owner,
embtool/core/formats/index.py, which describes, reads, validates and writes it; the writer here spools rows and
computes the codes that depend on the whole corpus, then hands the arrays to that owner.

Why centred int8 codes: real sentence embeddings share a large common direction (multilingual-e5-small paragraphs:
mean pairwise cosine 0.83) that takes much of each row's range max|x|; codes of x - mean spend the 255 levels on
what tells rows apart. On 6,000 e5-small paragraphs, recall@10 of `embtool search` over the int8 index against the
float index: cosine 0.989 -> 0.991 (300 half-paragraph queries), 0.990 -> 0.995 (2,000 paragraphs as queries); dot
0.977 -> 0.988 and 0.979 -> 0.990. Per-row asymmetric codes (min..max, a zero point per row) measured no better
than symmetric centred ones (2,000 queries: +0.0006 ± 0.0006 cosine), so the codes stay symmetric. A .npy output has
no room for a mean: int8 .npy files hold plain codes rint(x / scale), binary ones plain signs.

Writers spool rows to temporary files so that any number of texts streams in bounded memory.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO

import numpy as np

from embtool.algorithms import pooling as P
from embtool.core.errors import BadUsage, InputError
from embtool.core.formats.index import (BINARY_CODES, INDEX_SUFFIXES, IndexArrays, IndexSource, index_metadata,
                                        open_index, replace_problem, write_index)

__all__ = ["BINARY_CODE", "BINARY_CODES", "EmbeddingSink", "FORMATS", "expand_index_paths", "format_for",
           "not_embeddings_file", "open_index"]

FORMATS = ("npy", "safetensors", "jsonl", "word2vec", "parquet")
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
    """Why an existing `path` is not an embeddings file embed writes as `fmt` (None: it is, so `embed --force` may
    replace it). The whole file is checked, not its first line: an index must carry embtool's metadata and agree with
    it (formats.index.replace_problem); a .npy must be a 2-D matrix of a dtype embed writes, of exactly the bytes its
    header announces; a JSONL file only {"id", "text", "embedding"} rows numbered from 0, with vectors of one length;
    a word2vec file exactly the rows of a word and DIM numbers its "COUNT DIM" header announces."""
    if fmt in ("safetensors", "parquet"):
        return replace_problem(path, fmt)
    check = {"npy": _npy_problem, "jsonl": _jsonl_problem, "word2vec": _word2vec_problem}.get(fmt)
    if check is None:
        return f"is not a {fmt} file"
    try:
        with open(path, "rb") as f:
            why = check(f)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return None if why is None else f"is not a {fmt} embeddings file as embed writes it: {why}"


def _npy_problem(f: IO[bytes]) -> str | None:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, SyntaxError):
        return "no .npy header"
    if len(shape) != 2 or fortran or dtype not in (np.float32, np.float16, np.int8, np.uint8):
        return f"a {dtype} array of shape {list(shape)}"
    want = f.tell() + int(np.prod(shape)) * dtype.itemsize
    size = os.fstat(f.fileno()).st_size
    return None if size == want else f"{size} bytes where its header announces {want}"


def _jsonl_problem(f: IO[bytes]) -> str | None:
    dim = None
    for no, line in enumerate(f):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            return f"line {no + 1} is not JSON"
        if not isinstance(row, dict) or set(row) != {"id", "text", "embedding"}:
            return f"line {no + 1} is not an {{id, text, embedding}} row"
        vec = row["embedding"]
        if row["id"] != no or isinstance(row["id"], bool) or not isinstance(row["text"], str) or not isinstance(vec, list):
            return f"line {no + 1} is not row {no} with a text and a vector"
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vec):
            return f"line {no + 1} has a vector value that is not a finite number"
        if dim is None:
            dim = len(vec)
        if len(vec) != dim or not dim:
            return f"line {no + 1} has {len(vec)} values, line 1 has {dim}"
    return None if dim is not None else "no rows"


def _word2vec_problem(f: IO[bytes]) -> str | None:
    head = f.readline().split()
    if len(head) != 2 or not all(h.isdigit() for h in head):
        return 'no "COUNT DIM" header'
    count, dim = int(head[0]), int(head[1])
    n = 0
    for n, line in enumerate(f, 1):
        parts = line.rstrip(b"\n").split(b" ")
        try:
            ok = len(parts) == dim + 1 and parts[0] != b"" and all(math.isfinite(float(x)) for x in parts[1:])
            parts[0].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            return f"line {n + 1} is not a word and {dim} numbers"
    return None if n == count else f"{n} vectors where its header announces {count}"


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
        self.ids: np.ndarray | None = None  # an index's ids (global text numbers); None: 0..N-1

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

    def _quantize_spooled(self) -> dict[str, np.ndarray]:
        """Codes of the spooled float rows, by the corpus mean: binary bits centred (and rotated, ITQ, when asked);
        int8 codes of x - mean (the index's own, or a binary index's rescoring codes). Returns the corpus-level
        arrays (IndexArrays fields: the mean, the rotation, the int8 rows' squared norms)."""
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
        return dict(int8_sqnorms=np.concatenate(sqnorms) if sqnorms else None,
                    binary_mean=mean if self.precision == "binary" else None, binary_rotation=rot,
                    int8_mean=mean if self.centre_int8 else None)

    def _arrays(self) -> IndexArrays:
        corpus = self._quantize_spooled() if self._raw is not None and self.count else {}
        for f in (self._vec, self._scl, self._txt, self._flt, self._i8, self._i8s):
            if f is not None:
                f.flush()
        d = Path(self._tmpdir.name)
        n = self.count
        cols = self._codes_cols if n else (self.dim or 0)
        dt = self._codes_dtype if n else np.dtype(np.float32)

        def spool(name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
            return np.memmap(d / name, dtype=dtype, mode="r", shape=shape) if math.prod(shape) else np.zeros(shape, dtype)

        dim = self.dim or 0
        keep_i8 = self._i8 is not None
        return IndexArrays(
            embeddings=spool("vec.bin", dt, (n, cols)),
            scales=spool("scale.bin", np.float32, (n,)) if self.precision == "int8" else None,
            embeddings_float=spool("flt.bin", np.float16, (n, dim)) if self._flt is not None else None,
            embeddings_int8=spool("i8.bin", np.int8, (n, dim)) if keep_i8 else None,
            scales_int8=spool("i8s.bin", np.float32, (n,)) if keep_i8 else None,
            texts=spool("text.bin", np.uint8, (self._offsets[-1],)),
            text_offsets=np.asarray(self._offsets, dtype=np.int64),
            ids=None if self.ids is None else np.asarray(self.ids, dtype=np.int64), **corpus)

    def finish(self, path: Path, source: IndexSource | None = None, extra: dict[str, str] | None = None) -> None:
        """Write the collected rows to `path` (a temporary name the caller then publishes).

        :param source: for an index, what it records of the model and the encoder settings (formats.index)
        :param extra: more metadata strings for an index (keys formats.index does not own)"""
        if self.stream is not None:
            return
        arrays = self._arrays()
        if self.fmt in ("safetensors", "parquet"):
            meta = index_metadata(source, precision=self.precision, count=self.count, dim=self.dim or 0,
                                  binary_code=self.binary_code, extra=extra)
            write_index(path, self.fmt, arrays, meta)
        elif self.fmt == "npy":
            emb = arrays.embeddings
            with open(path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(emb.dtype),
                                                          "fortran_order": False, "shape": emb.shape})
                for r0 in range(0, emb.shape[0], 65536):
                    f.write(np.ascontiguousarray(emb[r0:r0 + 65536]).tobytes())
        elif self.fmt in ("jsonl", "word2vec"):
            emb, texts, offs = arrays.embeddings, arrays.texts, arrays.text_offsets
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
