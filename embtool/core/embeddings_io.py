"""Embedding outputs (.npy, .safetensors index, .jsonl, word2vec, stdout) and the index reader.

The index format is plain safetensors, readable with `safetensors.numpy.load_file`:
  embeddings    [N, D] float32 | float16 | int8, or [N, ceil(D/8)] uint8 sign bits (binary)
  scales        [N] float32            (int8 only: row i = embeddings[i] * scales[i])
  embeddings_float [N, D] float16      (optional, --keep-float: used by search to rescore)
  texts         [bytes] uint8          UTF-8 of all texts, concatenated
  text_offsets  [N + 1] int64          text i = texts[text_offsets[i]:text_offsets[i+1]]
  __metadata__  embtool_index=1, model, model_fingerprint, pooling, normalize, dim, precision,
                prefix, max_length, count, id_offset (first id of this shard)

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
from embtool.core.errors import CorruptFile, InputError
from embtool.core.safetensors_io import SafetensorsFile, write_safetensors

FORMATS = ("npy", "safetensors", "jsonl", "word2vec")


def format_for(path: str | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    if path is None or path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("npy", "safetensors", "jsonl"):
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
        else:
            return f"is not a {fmt} file"
    except (CorruptFile, ValueError, OSError, UnicodeDecodeError):
        return f"is not a {fmt} embeddings file"
    return None


class EmbeddingSink:
    """Accumulates (texts, vectors) chunks and writes one output file at `finish(path)`."""

    def __init__(self, fmt: str, precision: str = "float32", keep_float: bool = False, stream: IO[str] | None = None):
        if fmt in ("jsonl", "word2vec") and precision not in ("float32", "float16"):
            raise InputError(f"--precision {precision} is only stored in .npy or .safetensors outputs")
        self.fmt, self.precision, self.keep_float = fmt, precision, keep_float
        self.stream = stream  # jsonl to stdout: written as it comes
        self.count = 0
        self.dim: int | None = None
        self._tmpdir = tempfile.TemporaryDirectory(prefix="embtool-spool-")
        d = Path(self._tmpdir.name)
        self._vec = open(d / "vec.bin", "wb")
        self._flt = open(d / "flt.bin", "wb") if keep_float else None
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
        codes, scale = P.to_precision(vecs, self.precision)
        self._codes_dtype, self._codes_cols = codes.dtype, codes.shape[1]
        self._vec.write(np.ascontiguousarray(codes).tobytes())
        if scale is not None:
            self._scl.write(scale.astype(np.float32).tobytes())
        if self._flt is not None:
            self._flt.write(vecs.astype(np.float16).tobytes())
        for t in texts:
            b = t.encode("utf-8")
            self._txt.write(b)
            self._offsets.append(self._offsets[-1] + len(b))
        self.count += len(texts)

    def _arrays(self) -> dict[str, np.ndarray]:
        for f in (self._vec, self._scl, self._txt, self._flt):
            if f is not None:
                f.flush()
        d = Path(self._tmpdir.name)
        n = self.count
        out: dict[str, np.ndarray] = {}
        cols = self._codes_cols if n else (self.dim or 0)
        dt = self._codes_dtype if n else np.dtype(np.float32)
        out["embeddings"] = (np.memmap(d / "vec.bin", dtype=dt, mode="r", shape=(n, cols)) if n
                             else np.zeros((0, cols), dt))
        if self.precision == "int8":
            out["scales"] = np.memmap(d / "scale.bin", dtype=np.float32, mode="r", shape=(n,)) if n else np.zeros(0, np.float32)
        if self._flt is not None:
            out["embeddings_float"] = (np.memmap(d / "flt.bin", dtype=np.float16, mode="r", shape=(n, self.dim))
                                       if n else np.zeros((0, self.dim or 0), np.float16))
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
            write_safetensors(path, arrays, meta)
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
        for f in (self._vec, self._scl, self._txt, self._flt):
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

    def release(self, r0: int, r1: int) -> None:
        """Drop the pages of rows r0..r1 from this process once they are scored, so the resident set stays
        bounded by one block whatever the index size (the data stays in the OS page cache)."""
        f = getattr(self, "file", None)
        mm = f._mm if f is not None else None
        if mm is None or not hasattr(mm, "madvise"):
            return
        import mmap

        t = f.tensors["embeddings"]
        row = t.nbytes // max(1, t.shape[0])
        start = f.data_start + t.begin + r0 * row
        end = f.data_start + t.begin + r1 * row
        page = mmap.PAGESIZE
        a = start - start % page
        b = end - end % page  # keep the partial last page: the next block starts in it
        if b > a:
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    @property
    def has_texts(self) -> bool:
        return self._texts is not None

    def block(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 as float32 (dequantized for int8; ±1 for binary)."""
        codes = self.emb[r0:r1]
        scale = self.scales[r0:r1] if self.scales is not None else None
        return P.from_precision(codes, scale, self.precision, self.dim)

    def text(self, i: int) -> str:
        if self._texts is None:
            return ""
        t, o = self._texts
        return bytes(t[o[i]:o[i + 1]]).decode("utf-8", errors="replace")


def write_stdout_line(line: str) -> None:
    sys.stdout.write(line + "\n")
