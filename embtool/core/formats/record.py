"""The model record `embtool.json`: this module alone reads, writes, validates and documents it.

Every folder embtool writes (an output model, or the shard folder of `embed --ray`) holds `embtool.json` at its top:
one JSON object, UTF-8, indented, with these keys in this order:

    tool        "embtool": the mark of a record embtool wrote
    version     the embtool version that wrote the folder
    command     the step that wrote it: trim-vocab, quantize, dequantize, factorize, defactorize, init-subwords,
                export-onnx, shrink ("embed --ray" for a shard folder)
    arguments   the options that change the output, as values: a file as {"file": name, "fingerprint": ...} (so
                `c.txt`, `./c.txt` and `/abs/c.txt` give the same record), a folder as {"folder": name}; never the input
                model (see inputs), the output path, --force, --threads, --quiet or --json (NOT_RECORDED)
    inputs      "model": the input's weight fingerprint (`Model.fingerprint`); "model_source": where the input came
                from, {"id": "org/name", "revision": ..., "commit": ...} for a model named by its Hub id
                (`Model.source`), {"folder": name} for a local path; other inputs by fingerprint ("tokenizer" of
                init-subwords)
    <state>     what the model is now, as the step that made it so recorded it, carried over by every later step
                unless one undoes it: "quantization" {group_size, symmetric, bits[, portable]} (dequantize drops it),
                "factorization" {rank, table} (defactorize drops it), "trim" {vocab_before, vocab_after},
                "init_subwords" {method, vocab_before, vocab_after, counts}, "steps" (shrink's)
    chain       every step that made the model, oldest first, each {command, version, arguments, inputs}; the last one
                is this command. A model processed again carries its input's chain on; `inspect` shows it.
    files       the manifest, written last, when the folder is complete: every other file of the folder (the model
                card README.md included) as {"size": bytes, "sha256": hex digest of the content}

The step itself (tool ... inputs and the state it adds, without chain and files) is also stored in the weights:
safetensors `__metadata__["embtool"]`, ONNX `metadata_props["embtool"]`.

What `--force` may replace (`not_replaceable`): an empty folder, or a folder whose record embtool wrote and whose
manifest lists every file under it with its current size and sha256. A file added, edited (even to the same size),
or replaced by a link, a folder another tool wrote, a home or project folder: never removed. A record written by an
older embtool lists sizes only ({"name": bytes}) and so cannot show an edit of the same size: such a folder is refused,
with a message that says what to do (remove it yourself, or write elsewhere) -- one refusal instead of a lost edit.
Hashing is one streamed read of each file (1 MiB at a time) when the folder is sealed, and again before --force
replaces it (checked when the command starts and once more just before the rename): for all-mpnet-base-v2's 438 MB,
1.5 s a pass on a shared two-core machine under load (page-cached), against minutes of quantization.

Every model-writing job builds its record with `provenance` (the step) and writes it with `write_model_record` (the step plus the
input's record and chain), which also has the model card (core/card.py) written when the folder is complete; the
writer (core/writer.py) calls `seal` last, so the manifest covers the card.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from embtool._version import __version__
from embtool.core import card
from embtool.core.errors import CorruptFile
from embtool.core.model import read_json

FILE = "embtool.json"
TOOL = "embtool"
CHAIN_KEYS = ("command", "version", "arguments", "inputs")
# what does not change the output, or is identified otherwise (the input model by its fingerprint in "inputs")
NOT_RECORDED = ("model", "output", "force", "threads", "quiet", "as_json")
# the record's vocabulary: no other module spells these keys (tests/test_architecture.py)
KEYS = ("tool", "version", "command", "arguments", "inputs", "model_source", "chain", "files")
VOCABULARY_STEPS = ("trim-vocab", "init-subwords")  # steps (and shrink steps) that give a model another vocabulary


# ---------------------------------------------------------------------------------------------- reading
def read(folder: str | Path) -> dict[str, Any]:
    """The record of `folder` ({} when it has none). A record that is not a JSON object is a CorruptFile: a model
    folder whose embtool.json cannot be read is not silently treated as one without history."""
    p = Path(folder) / FILE
    if not p.is_file():
        return {}
    doc = read_json(p)
    if not isinstance(doc, dict):
        raise CorruptFile(f"{p}: not a JSON object, so not a record embtool wrote")
    return doc


def chain(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps that made a model, oldest first, from its record: the recorded chain (which ends with the last
    command), or for a record without one, its single last command; [] for a folder embtool did not write."""
    steps = doc.get("chain")
    if isinstance(steps, list) and all(isinstance(s, dict) for s in steps):
        return steps
    return [{k: doc[k] for k in CHAIN_KEYS if k in doc}] if "command" in doc else []


# ---------------------------------------------------------------------------------------------- building
def provenance(command: str, args: Mapping[str, Any] | Any, model=None, inputs: Mapping[str, str] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of one step: what identifies its inputs, not how they were typed, so the same inputs and flags give
    byte-identical outputs.

    command  the command's name ("quantize")
    args     its request (a dataclass) or a mapping of its options; NOT_RECORDED ones are left out
    model    the input Model: recorded by fingerprint and source (Hub id and commit, or folder name)
    inputs   other inputs by name and fingerprint (init-subwords' target tokenizer)
    extra    the state this step gives the model ({"quantization": {...}}), see the module docstring
    """
    if dataclasses.is_dataclass(args) and not isinstance(args, type):
        args = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    ins: dict[str, Any] = {}
    if model is not None:
        ins = {"model": model.fingerprint(), "model_source": model_source(model)}
    ins.update(inputs or {})
    doc = {"tool": TOOL, "version": __version__, "command": command,
           "arguments": {k: _identity(v) for k, v in sorted(args.items()) if k not in NOT_RECORDED}, "inputs": ins}
    doc.update(extra or {})
    return doc


def model_source(model) -> dict[str, Any]:
    """Where a model came from: its Hub id, revision and commit (`Model.source`, None for a local path), else the
    name of its folder (a name, not a path: outputs do not depend on where the input sits)."""
    src = getattr(model, "source", None)
    if src is not None:
        return {"id": src.id, "revision": getattr(src, "revision", None), "commit": getattr(src, "commit", None)}
    return {"folder": Path(model.root).resolve().name}


def _identity(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_identity(x) for x in v]
    if isinstance(v, (str, Path)) and str(v) not in ("", "-", "auto"):
        p = Path(v)
        try:
            if p.is_file():
                return {"file": p.name, "fingerprint": file_fingerprint(p)}
            if p.is_dir():
                return {"folder": p.resolve().name}
        except OSError:
            pass
        return str(v)
    return v


def file_fingerprint(path: Path) -> str:
    """A cheap identity of an input file's content: sha256 over its size and its first and last MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- writing
def write_model_record(out, model, step: dict[str, Any], summary: dict[str, Any] | None = None, *, carry=None,
          drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the record of an output model being built in `out` (an OutputFolder) and have its model card written
    when the folder is complete. Returns the record.

    out      the OutputFolder the job builds in
    model    the input Model (its README.md front matter gives the card its license and language)
    step     this step's record, from `provenance`
    summary  the job's summary dict; the card reads its measured figures (eval, bytes) when the folder is
             complete, so it may still be filled after this call
    carry    the Model whose record is carried over, when it is not `model` (shrink: its last intermediate model)
    drop     state keys this step undoes ("quantization" for dequantize)
    """
    before = read((carry or model).root)
    doc = _ordered(step, {k: v for k, v in before.items() if k not in (*KEYS, *drop)})
    doc["chain"] = [*chain(before), {k: step[k] for k in CHAIN_KEYS if k in step}]
    _dump(Path(out.path) / FILE, doc)
    base = card.base_card(Path(model.root))
    out.before_publish(lambda folder: card.write(folder, _card_facts(doc, base, summary)))
    return doc


def _ordered(step: dict[str, Any], carried: dict[str, Any]) -> dict[str, Any]:
    """tool, version, command, arguments, inputs first, then the carried state, then the state this step adds."""
    head = {k: step[k] for k in ("tool", "version", "command", "arguments", "inputs") if k in step}
    return {**head, **carried, **{k: v for k, v in step.items() if k not in head}}


def write_folder_record(out, command: str, **fields: Any) -> None:
    """The record of a folder that is not a model (`embed --ray`'s shards: fields `shards`, `texts`)."""
    _dump(Path(out.path) / FILE, {"tool": TOOL, "version": __version__, "command": command, **fields})


def seal(folder: Path) -> None:
    """Complete the record of a finished folder with its manifest (what lets a later --force replace it); a folder
    with no record gets a bare one, so that it too can be replaced."""
    doc = read(folder) or {"tool": TOOL, "version": __version__}
    doc.pop("files", None)
    doc["files"] = manifest(folder)
    _dump(folder / FILE, doc)


def _dump(path: Path, doc: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file of a finished output folder but the record, with its size and sha256."""
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p != folder / FILE}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content, read in `chunk`-byte pieces (memory stays one chunk, whatever the size)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- what --force may replace
def not_replaceable(target: Path) -> str | None:
    """Why --force may not replace `target` as an output folder, or None when it may (the rule: module docstring)."""
    if target.is_symlink():
        return "is a symbolic link"
    if not target.is_dir():
        return "is a file, not a model folder"
    files = {str(p.relative_to(target)): p for p in target.rglob("*") if not p.is_dir() or p.is_symlink()}
    if not files:
        return None
    if not (target / FILE).is_file() or (target / FILE).is_symlink():
        return f"has no {FILE} (not a folder embtool wrote)"
    try:
        doc = read(target)
    except CorruptFile:
        return f"its {FILE} is not one embtool wrote"
    listed = doc.get("files") if doc.get("tool") == TOOL else None
    if not isinstance(listed, dict):
        return f"its {FILE} has no file list (written by another tool or an older embtool)"
    if listed and all(isinstance(v, int) for v in listed.values()):
        return (f"its {FILE} lists file sizes only (an older embtool wrote it), which cannot show whether a file was "
                "edited since; remove the folder yourself if nothing in it is needed")
    for rel, p in sorted(files.items()):  # names, links and sizes first: cheap, and most edits show there
        if rel == FILE:
            continue
        entry = listed.get(rel)
        if entry is None:
            return f"holds {rel}, which embtool did not write"
        if not _entry_ok(entry):
            return f"its {FILE} is not one embtool wrote (its entry for {rel} is malformed)"
        if p.is_symlink() or not p.is_file() or p.stat().st_size != entry["size"]:
            return f"its {rel} changed since embtool wrote it"
    for rel, p in sorted(files.items()):
        if rel != FILE and sha256_file(p) != listed[rel]["sha256"]:
            return f"its {rel} changed since embtool wrote it"
    return None


def _entry_ok(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64)


# ---------------------------------------------------------------------------------------------- the card's facts
def _card_facts(doc: dict[str, Any], base: card.BaseCard, summary: dict[str, Any] | None) -> card.Facts:
    """What the model card says, digested from the record (the card does not read the record's keys itself)."""
    steps = chain(doc)
    first = steps[0].get("inputs", {}).get("model_source") if steps and isinstance(steps[0].get("inputs"), dict) else None
    first = first if isinstance(first, dict) else {}
    q = doc.get("quantization") if isinstance(doc.get("quantization"), dict) else {}
    bits = sorted({int(b) for b in q.get("bits", []) if isinstance(b, int)}) if q else []
    commands = [str(s.get("command")) for s in steps]
    last = [*commands[-1:], *(doc.get("steps") if commands[-1:] == ["shrink"] and isinstance(doc.get("steps"), list) else [])]
    return card.Facts(
        base_id=first.get("id") if isinstance(first.get("id"), str) else None,
        base_commit=first.get("commit") if isinstance(first.get("commit"), str) else None,
        base_folder=first.get("folder") if isinstance(first.get("folder"), str) else None,
        steps=[(str(s.get("command")), s.get("arguments") if isinstance(s.get("arguments"), dict) else {}) for s in steps],
        trimmed="trim" in doc or "trim-vocab" in commands,
        new_vocabulary="init_subwords" in doc,
        quantized_bits=bits,
        factorized=isinstance(doc.get("factorization"), dict),
        vocabulary_changed=any(c in VOCABULARY_STEPS for c in last),
        base=base,
        summary=summary or {},
    )
