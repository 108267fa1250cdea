"""safetensors reading and writing, done by hand so that every header is validated.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the data.
The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
to the data section) plus an optional "__metadata__" str->str map.

Reading never trusts the header: the header length, every offset and every shape is checked
against the real file size before anything is mapped, so a lying header costs no allocation.
Tensors are returned as read-only views on one memory map of the file.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from embtool.core.errors import CorruptFile

MAX_HEADER_BYTES = 100 * 1024 * 1024

# dtype name -> (numpy dtype, item size). BF16 has no numpy dtype: it is widened to float32.
DTYPES: dict[str, tuple[np.dtype | None, int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (None, 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U64": (np.dtype("<u8"), 8),
    "U32": (np.dtype("<u4"), 4),
    "U16": (np.dtype("<u2"), 2),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}
_NP_TO_NAME = {v[0]: k for k, v in DTYPES.items() if v[0] is not None}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """A validated, memory-mapped safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CorruptFile(f"{self.path}: not a safetensors file (only {size} bytes)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    raise CorruptFile(
                        f"{self.path}: header claims {n} bytes but the file has only {size - 8} after "
                        "the length field (truncated or not safetensors)"
                    )
                if n > MAX_HEADER_BYTES:
                    raise CorruptFile(f"{self.path}: header of {n} bytes is implausibly large")
                raw = f.read(n)
        except OSError as e:
            raise CorruptFile(f"{self.path}: cannot read: {e.strerror}") from e
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFile(f"{self.path}: header is not valid JSON ({e})") from e
        except RecursionError:
            raise CorruptFile(f"{self.path}: header JSON is nested too deeply; not safetensors") from None
        if not isinstance(header, dict):
            raise CorruptFile(f"{self.path}: header is not a JSON object")
        self.data_start = 8 + n
        data_size = size - self.data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise CorruptFile(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            self.tensors[name] = _check_entry(self.path, name, entry, data_size)
        spans = sorted((t.begin, t.end, t.name) for t in self.tensors.values() if t.end > t.begin)
        for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise CorruptFile(f"{self.path}: tensors {n0!r} and {n1!r} overlap in the file")
        self._mm: mmap.mmap | None = None

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> np.ndarray:
        """A read-only array (a view on the memory map; BF16 is widened to a float32 copy)."""
        t = self.tensors[name]
        npdt, _ = DTYPES[t.dtype]
        if t.numel == 0:
            return np.zeros(t.shape, dtype=npdt or np.float32)
        buf = memoryview(self._map())[self.data_start + t.begin : self.data_start + t.end]
        if npdt is None:  # BF16
            u16 = np.frombuffer(buf, dtype="<u2").reshape(t.shape)
            return (u16.astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(buf, dtype=npdt).reshape(t.shape)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # views still alive: the map is freed when they are
                pass
            self._mm = None


def _check_entry(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CorruptFile(f"{where}: entry is not an object")
    dtype = entry.get("dtype")
    if dtype not in DTYPES:
        raise CorruptFile(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise CorruptFile(f"{where}: shape must be a list of non-negative integers")
    offs = entry.get("data_offsets")
    if (
        not isinstance(offs, list)
        or len(offs) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
    ):
        raise CorruptFile(f"{where}: data_offsets must be two integers")
    begin, end = offs
    if not 0 <= begin <= end:
        raise CorruptFile(f"{where}: invalid data_offsets {offs}")
    if end > data_size:
        raise CorruptFile(
            f"{where}: data ends at byte {end} but the file has only {data_size} data bytes "
            "(truncated?)"
        )
    numel = 1
    for s in shape:
        numel *= s
    if numel * DTYPES[dtype][1] != end - begin:
        raise CorruptFile(f"{where}: shape {shape} ({dtype}) does not match its {end - begin} bytes")
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def dtype_name(a: np.ndarray) -> str:
    try:
        return _NP_TO_NAME[a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype]
    except KeyError:
        raise CorruptFile(f"cannot store dtype {a.dtype} in safetensors") from None


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write tensors (sorted by name: deterministic) streaming, without concatenating them.

    Returns the number of bytes written.
    """
    items = sorted(tensors.items() if isinstance(tensors, Mapping) else tensors, key=lambda kv: kv[0])
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    off = 0
    for name, a in items:
        nb = int(a.size) * a.dtype.itemsize
        header[name] = {"dtype": dtype_name(a), "shape": list(a.shape), "data_offsets": [off, off + nb]}
        off += nb
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    total = 8 + len(raw) + off
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _name, a in items:
            a = np.ascontiguousarray(a)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            if a.size:
                f.write(memoryview(a.reshape(-1)).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    return total
