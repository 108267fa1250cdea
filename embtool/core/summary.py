"""Command summaries in the one JSON vocabulary (docs/schema/): what `--json` prints and what the Python API
returns (`embtool.api.Result.summary`)."""

from __future__ import annotations

from typing import Any

# The one vocabulary of --json keys (docs/schema/, README "JSON output"): the jobs' own names on the left.
JSON_KEYS = {
    "params_before": "embedding_parameters_before", "params_after": "embedding_parameters_after",
    "embedding_params_before": "embedding_parameters_before", "embedding_params_after": "embedding_parameters_after",
    "recall@10": "recall_at_10", "table": "per_tensor",
}
MODEL_WRITERS = ("trim-vocab", "quantize", "dequantize", "factorize", "defactorize", "init-subwords", "export-onnx", "shrink")
SIGNIFICANT_DIGITS = 6


def summary_json(command: str, summary: dict) -> dict:
    """A job's summary as its --json object: `schema` first, keys in the shared vocabulary (JSON_KEYS),
    floats to 6 significant digits (what float32 measurements carry), and for model-writing commands
    `written` (false for dry runs, sensitivity-only runs and failed gates)."""
    out: dict[str, Any] = {"schema": f"embtool.{command}/1"}
    out.update(_plain(summary))
    if "path" in out and "model" not in out:  # inspect: the model it describes
        out = {("model" if k == "path" else k): v for k, v in out.items()}
    if command in MODEL_WRITERS and "written" not in out:
        out["written"] = "bytes_after" in out and not out.get("dry_run", False)
    return out


def _plain(o: Any) -> Any:
    import numpy as np
    from pathlib import Path

    if isinstance(o, dict):
        return {JSON_KEYS.get(k, k) if isinstance(k, str) else str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        x = float(o)
        return float(f"{x:.{SIGNIFICANT_DIGITS}g}") if np.isfinite(x) else None
    if isinstance(o, Path):
        return str(o)
    return o
