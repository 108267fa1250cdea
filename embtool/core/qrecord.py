"""The quantization record: the one reader and writer of `__metadata__["embtool_quantization"]`.

A quantized safetensors model stores each packed tensor as `BASE.qweight` (codes), `BASE.scales` (fp16) and,
when asymmetric, `BASE.qzeros`; the record maps BASE to {"bits", "group_size", "shape": [rows, K], ...} so
that the runtime, dequantize, trim-vocab (which slices quantized token tables) and inspect read the same thing.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from embtool.core.errors import CorruptFile

KEY = "embtool_quantization"


def has_record(metadata: Mapping[str, str]) -> bool:
    return KEY in metadata


def read_record(metadata: Mapping[str, str], where: str = "the model") -> dict[str, dict[str, Any]]:
    """The record ({} when the file has none). A record that is not a JSON object of objects with integer
    `bits`, `group_size` and a two-integer `shape` is a corrupt file."""
    text = metadata.get(KEY)
    if text is None:
        return {}
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFile(f"{where}: the {KEY} metadata is not valid JSON") from e
    if not isinstance(rec, dict):
        raise CorruptFile(f"{where}: the {KEY} metadata is not a JSON object")
    for base, info in rec.items():
        ok = (isinstance(info, dict) and isinstance(info.get("bits"), int) and isinstance(info.get("group_size"), int)
              and isinstance(info.get("shape"), list) and len(info["shape"]) == 2
              and all(isinstance(d, int) and d > 0 for d in info["shape"]) and 1 <= info["bits"] <= 8 and info["group_size"] > 0)
        if not ok:
            raise CorruptFile(f"{where}: the {KEY} entry for {base!r} is malformed (bits, group_size, shape [rows, K])")
    return rec


def record_metadata(record: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The safetensors `__metadata__` entry that stores `record` (sorted keys: the same record, the same bytes)."""
    return {KEY: json.dumps(record, sort_keys=True)}


def with_rows(record: Mapping[str, Mapping[str, Any]], sliced: set[str], rows: int) -> dict[str, dict[str, Any]]:
    """The record after the tables named in `sliced` (their BASE) kept `rows` rows (trim-vocab)."""
    out = {}
    for base, info in record.items():
        info = {**info, "shape": list(info["shape"])}
        if base in sliced:
            info["shape"][0] = int(rows)
        out[base] = info
    return out
