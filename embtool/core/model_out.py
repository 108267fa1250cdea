"""Writing an output model folder: weights (safetensors or ONNX), configs kept consistent; its record and card are
core/formats/record.py's and core/card.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from embtool.core.formats import record
from embtool.core.model import PICKLE_PATTERNS, Model, read_json
from embtool.core.safetensors_io import write_safetensors
from embtool.core.writer import OutputFolder

ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id",
           "mask_token_id", "decoder_start_token_id")


def weight_file_names(model: Model) -> list[str]:
    out = [str(p.relative_to(model.root)) for p in model.weight_files() if p.is_relative_to(model.root)]
    if model.layout.weights.endswith(".index.json"):
        out.append(model.layout.weights)
    return out


def other_weight_files(model: Model) -> list[str]:
    """Weights in the input folder that are not the model's own (other ONNX variants such as
    onnx/model_quantized.onnx, or the safetensors of an ONNX model): an output must not carry
    them, they would be stale."""
    from embtool.core.model import _onnx_files

    own = set(weight_file_names(model))
    others = [f for f in _onnx_files(model.root) if f not in own]
    if model.format == "onnx":
        others += [p.name for p in sorted(model.root.glob("model*.safetensors*")) if p.name not in own]
    # other frameworks' weights (a snapshot of the Hub cache often holds them beside model.safetensors)
    others += sorted({p.name for pat in (*PICKLE_PATTERNS, "flax_model*.msgpack", "rust_model.ot") for p in model.root.glob(pat)})
    others += [d.name for d in (model.root / "openvino", model.root / "coreml") if d.is_dir()]
    return others


def copy_unchanged(model: Model, out: OutputFolder, changed: Iterable[str] = ()) -> None:
    """Copy every file of the input except its weights, its record and the files in `changed`; a
    tokenizer.json given with --tokenizer is copied in, so that the output runs on its own. (Its README.md is
    copied too, and replaced by the output's own card when the folder is complete.)"""
    import logging
    import shutil

    changed = list(changed)
    others = other_weight_files(model)
    if others:
        logging.getLogger("embtool").info(f"not copied to the output (other weights, they would be stale): {', '.join(others)}")
    out.copy_from(model.root, exclude=[*weight_file_names(model), record.FILE, *changed, *others])
    tok = model.tokenizer.path if model.tokenizer is not None else None
    if tok is not None and tok.parent.resolve() != model.root.resolve() and "tokenizer.json" not in changed:
        shutil.copyfile(tok, out.path / "tokenizer.json")
        for side in ("tokenizer_config.json", "special_tokens_map.json"):
            if (tok.parent / side).is_file() and not (out.path / side).exists() and side not in changed:
                shutil.copyfile(tok.parent / side, out.path / side)


def write_weights(model: Model, out: OutputFolder, tensors: dict[str, np.ndarray], metadata: dict[str, str],
                  keep_input_metadata: bool = True) -> Path:
    """All tensors into one model.safetensors (streamed; untouched tensors stay memory-mapped views).
    The input's __metadata__ (e.g. the quantization record) is carried over unless replaced."""
    inherited = dict(model.weights.metadata) if (keep_input_metadata and model.weights is not None) else {}
    meta = {"format": "pt", **inherited, **metadata}
    path = out.path / "model.safetensors"
    write_safetensors(path, tensors, meta)
    return path


def write_derived_model(model: Model, output: str, force: bool, tensors: dict[str, np.ndarray], prov: dict[str, Any],
                        drop: str, keep_input_metadata: bool = True, check=None,
                        summary: dict[str, Any] | None = None) -> int:
    """A safetensors model folder from the input's files and `tensors`, with the `drop` state (e.g.
    "quantization", "factorization") removed from config.json and the record. Returns the weights' bytes (also
    put in `summary["bytes_after"]`, for the card). `check(out)` runs on the finished folder before it is
    published (it may discard it: a failed fidelity gate)."""
    cfg = {k: v for k, v in model.config.items() if k not in (f"{drop}_config", f"embtool_{drop}")}
    with OutputFolder(output, force, inputs=[model.root]) as out:
        copy_unchanged(model, out, changed=["config.json"])
        write_weights(model, out, tensors, {"embtool": metadata_json(prov)}, keep_input_metadata)
        write_configs(model, out, cfg if model.config else None)
        record.write_model_record(out, model, prov, summary, drop=(drop,))
        size = (out.path / "model.safetensors").stat().st_size
        if summary is not None:
            summary["bytes_after"] = size
        if check is not None:
            check(out)
        return size


def updated_config(model: Model, vocab_size: int | None = None, remap: dict[int, int] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = dict(model.config)
    if vocab_size is not None and cfg:
        cfg["vocab_size"] = int(vocab_size)
    if remap is not None:
        for k in ID_KEYS:
            v = cfg.get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                cfg[k] = remap.get(v, v if v < 0 else None)
                if cfg[k] is None:
                    del cfg[k]
    if extra:
        cfg.update(extra)
    return cfg


def write_configs(model: Model, out: OutputFolder, cfg: dict[str, Any] | None, remap: dict[int, int] | None = None) -> None:
    if cfg is not None and (cfg or (model.root / "config.json").is_file()):
        out.write_json("config.json", cfg)
    tc = model.root / "tokenizer_config.json"
    if remap is not None and tc.is_file():
        d = read_json(tc)
        if isinstance(d, dict) and isinstance(d.get("added_tokens_decoder"), dict):
            d["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in d["added_tokens_decoder"].items()
                                         if k.lstrip("-").isdigit() and int(k) in remap}
        out.write_json("tokenizer_config.json", d)


def slice_onnx_initializers(onnx_model, names_axes: dict[str, int], keep: np.ndarray) -> None:
    """Slice initializers in place along their vocabulary axis (order of `keep` preserved)."""
    from onnx import numpy_helper

    replace_onnx_initializers(onnx_model, {t.name: np.take(numpy_helper.to_array(t), keep, axis=names_axes[t.name])
                                           for t in onnx_model.graph.initializer if t.name in names_axes})


def metadata_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def replace_onnx_initializers(onnx_model, arrays: dict[str, np.ndarray]) -> None:
    """Replace initializers by name (shape may change, e.g. a new vocabulary size)."""
    from onnx import numpy_helper

    for i, t in enumerate(onnx_model.graph.initializer):
        if t.name in arrays:
            onnx_model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[t.name]), t.name))
