"""Shared text input: arguments, files, stdin; one text per line or JSONL; streamed.

Every command that reads texts (embed, search queries, trim-vocab corpora, --eval/--calib files)
goes through `iter_texts`, so errors read the same everywhere: file, line, what is wrong.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from embtool.core.errors import InputError


def numbered_lines(stream: BinaryIO, name: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a byte stream; invalid UTF-8 is an error naming the file and line."""
    for no, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{name}:{no}: invalid UTF-8 ({e.reason} at byte {e.start} of the line)") from None
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        if no == 1 and line.startswith("\ufeff"):
            line = line[1:]
        yield no, line


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _uncompressed(stream: BinaryIO, name: str) -> BinaryIO:
    """The stream itself, or a streamed gzip decoder over it when it starts with gzip's magic bytes
    (whatever the file is called); zstd, which the standard library cannot read, is named."""
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)  # e.g. a BytesIO standing in for stdin
    head = stream.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head.startswith(ZSTD_MAGIC):
        raise InputError(f"{name}: zstd-compressed: decompress it first (zstd -d {name})")
    return stream


def iter_file(path: str, field: str | None = None, skip_empty: bool = False) -> Iterator[str]:
    """Texts of one file ('-' = stdin), gzip-compressed or not. JSONL when `field` is given or the name ends
    in .jsonl (or .jsonl.gz)."""
    jsonl = field is not None or path.endswith((".jsonl", ".jsonl.gz"))
    key = field or "text"
    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
        name = "<stdin>"
        close = False
    else:
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{path}: is a folder, expected a text file")
        try:
            stream = open(p, "rb")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror}") from None
        name = path
        close = True
    try:
        for no, line in numbered_lines(_uncompressed(stream, name), name):
            if jsonl:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{name}:{no}: not valid JSON ({e.msg})") from None
                except RecursionError:
                    raise InputError(f"{name}:{no}: JSON nested too deeply") from None
                if not isinstance(obj, dict) or key not in obj:
                    raise InputError(f"{name}:{no}: no field {key!r} in this JSON line")
                val = obj[key]
                if not isinstance(val, str):
                    raise InputError(f"{name}:{no}: field {key!r} is not a string")
                yield val
            else:
                if skip_empty and not line.strip():
                    continue
                yield line
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(f"{name}: damaged gzip data ({e or 'truncated'})") from None
    finally:
        if close:
            stream.close()


def iter_texts(
    args: Iterable[str] = (), files: Iterable[str] = (), field: str | None = None, skip_empty: bool = False
) -> Iterator[str]:
    """Texts given as arguments first, then from each file in order."""
    yield from args
    for f in files:
        yield from iter_file(f, field, skip_empty)


def read_lines(path: str, limit: int | None = None, skip_empty: bool = True) -> list[str]:
    out = []
    for t in iter_file(path, skip_empty=skip_empty):
        out.append(t)
        if limit is not None and len(out) >= limit:
            break
    return out
