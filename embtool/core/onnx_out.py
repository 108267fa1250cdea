"""Writing ONNX model folders (export, and ONNX outputs of the shrinking commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from embtool.core.writer import OutputFolder

EXTERNAL_THRESHOLD = 1_500_000_000  # protobuf's 2 GB limit: larger graphs keep weights in model.onnx_data


def save_onnx(m: onnx.ModelProto, out: OutputFolder, provenance: dict[str, Any], rel: str = "model.onnx") -> Path:
    del m.metadata_props[:]
    for k, v in (("embtool", json.dumps(provenance, sort_keys=True)),):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    path = out.path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if m.ByteSize() > EXTERNAL_THRESHOLD:
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(rel).name + "_data", size_threshold=1024)
    else:
        onnx.save_model(m, str(path))
    return path
