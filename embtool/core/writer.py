"""Atomic outputs: a folder (or file) is built beside its target and renamed into place.

A failed or interrupted command leaves the target untouched: either absent or the previous
complete output (which is only replaced with --force). Temporary names start with
`.embtool-tmp-` so that stale ones from a SIGKILL are recognisable and cleaned on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from embtool import __version__
from embtool.core.errors import BadUsage, InputError, OutputExists

TMP_PREFIX = ".embtool-tmp-"


PROVENANCE = "embtool.json"


def check_output(target: Path, force: bool, inputs: Iterable[Path] = (),
                 replaceable: Callable[[Path], str | None] | None = None) -> None:
    """Refuse a target that is (inside) an input, the current folder or one of its parents, and an existing
    target that --force may not replace. `replaceable(target)` says why an existing target is not one embtool
    wrote (None: it is); the default is `folder_not_replaceable`, the rule for model folders."""
    if str(target) == "-":
        raise BadUsage("-o -: a model is written as a folder and cannot go to stdout (only embed writes to stdout); "
                       "name a folder")
    target = Path(target)
    t = target.resolve()
    cwd = Path.cwd().resolve()
    if t == cwd or t in cwd.parents:
        raise InputError(f"output {target} is the current folder or one of its parents; name a new folder")
    for src in inputs:
        s = Path(src).resolve()
        if t == s or s in t.parents or (s.is_file() and t == s.parent) or t in s.parents:
            raise InputError(f"output {target} would overwrite or sit inside the input {src}; choose another path")
    if target.exists() or target.is_symlink():
        why = (replaceable or folder_not_replaceable)(target)
        if why is not None:
            raise OutputExists(f"{target} already exists and {why}; --force only replaces what embtool wrote, "
                               "choose another path")
        if not force:
            raise OutputExists(f"{target} already exists (use --force to replace it)")
    if not target.parent.exists():
        raise InputError(f"{target.parent}: the output's parent folder does not exist")


def folder_not_replaceable(target: Path) -> str | None:
    """Why --force may not replace `target` as a model folder, or None when it may.

    The rule: an empty folder, or a folder whose embtool.json (written by embtool at its top) lists every
    file under it with its current size. So a folder holding anything embtool did not write (a file added
    or edited later, another tool's output, a home or project folder) is never removed."""
    if target.is_symlink():
        return "is a symbolic link"
    if not target.is_dir():
        return "is a file, not a model folder"
    files = {str(p.relative_to(target)): p for p in target.rglob("*") if not p.is_dir() or p.is_symlink()}
    if not files:
        return None
    prov = target / PROVENANCE
    if not prov.is_file():
        return f"has no {PROVENANCE} (not a folder embtool wrote)"
    try:
        doc = json.loads(prov.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        return f"its {PROVENANCE} is not one embtool wrote"
    listed = doc.get("files") if isinstance(doc, dict) and doc.get("tool") == "embtool" else None
    if not isinstance(listed, dict):
        return f"its {PROVENANCE} has no file list (written by another tool or an older embtool)"
    for rel, p in sorted(files.items()):
        if rel == PROVENANCE:
            continue
        if rel not in listed:
            return f"holds {rel}, which embtool did not write"
        if p.is_symlink() or p.stat().st_size != listed[rel]:
            return f"its {rel} changed since embtool wrote it"
    return None


def file_manifest(folder: Path) -> dict[str, int]:
    """Every file embtool wrote in an output folder, with its size: what --force checks before replacing."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p != folder / PROVENANCE}


def _clean_stale(parent: Path) -> None:
    """Remove embtool temporary outputs in `parent` left by processes that no longer run (SIGKILL)."""
    for p in parent.glob(f"{TMP_PREFIX}*"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_name(target: Path) -> Path:
    return target.parent / f"{TMP_PREFIX}{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def _publish(tmp: Path, target: Path, force: bool, replaceable: Callable[[Path], str | None] | None = None) -> None:
    """Rename tmp onto target. Without force, never replaces an existing target (even in a race); with force,
    only a target embtool wrote (checked again here: it may have changed while the command ran)."""
    if target.exists() or target.is_symlink():
        if not force:
            raise OutputExists(f"{target} appeared while this command ran (another process?); not replacing it")
        why = (replaceable or folder_not_replaceable)(target)
        if why is not None:
            raise OutputExists(f"{target} {why}; --force only replaces what embtool wrote, choose another path")
        old = target.parent / f"{TMP_PREFIX}{target.name}.{os.getpid()}.old{uuid.uuid4().hex[:6]}"
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        return
    if tmp.is_dir():
        try:
            os.rename(tmp, target)  # fails on a non-empty existing dir: the other writer won
        except OSError as e:
            raise OutputExists(f"{target}: another process wrote it first ({e.strerror}); not replacing it") from e
    else:
        try:
            os.link(tmp, target)  # atomic and never overwrites
        except FileExistsError:
            raise OutputExists(f"{target} appeared while this command ran (another process?); not replacing it") from None
        except OSError:
            if target.exists():
                raise OutputExists(f"{target} already exists") from None
            os.rename(tmp, target)
            return
        os.unlink(tmp)
    _fsync_dir(target.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# what does not change the output, or is identified otherwise (the input model by its fingerprint in "inputs")
NOT_RECORDED = ("model", "output", "force", "threads", "quiet", "as_json")


def provenance(command: str, args: dict[str, Any], inputs: dict[str, str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of an output: what identifies its inputs, not how they were typed. The model
    is its fingerprint (in `inputs`); a file argument is its name and fingerprint (so `c.txt`, `./c.txt`
    and `/abs/c.txt` give the same record); --threads and the output path are left out. So the same
    inputs and flags give byte-identical outputs."""
    doc = {
        "tool": "embtool",
        "version": __version__,
        "command": command,
        "arguments": {k: _identity(v) for k, v in sorted(args.items()) if k not in NOT_RECORDED},
        "inputs": inputs,
    }
    if extra:
        doc.update(extra)
    return doc


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
    """A cheap identity of a file's content: sha256 over its size and its first and last MiB."""
    import hashlib

    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


CHAIN_KEYS = ("command", "version", "arguments", "inputs")


def provenance_chain(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps that made a model, oldest first, from its embtool.json: the recorded `chain` (which ends
    with the last command), or for a record without one, its single last command."""
    chain = doc.get("chain")
    if isinstance(chain, list) and all(isinstance(s, dict) for s in chain):
        return chain
    return [{k: doc[k] for k in CHAIN_KEYS if k in doc}] if "command" in doc else []


class OutputFolder:
    """`with OutputFolder(target, force) as out:` build files in `out.path`; renamed on success."""

    def __init__(self, target: str | os.PathLike, force: bool = False, inputs: Iterable[Path] = ()):
        self.target = Path(target)
        self.force = force
        check_output(self.target, force, inputs)
        _clean_stale(self.target.parent)
        self.path = _tmp_name(self.target)
        self.written = False
        self._discard = False

    def __enter__(self) -> "OutputFolder":
        self.path.mkdir()
        return self

    def discard(self) -> None:
        """Do not publish: the folder is removed on exit (a failed fidelity gate)."""
        self._discard = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._discard:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self._write_manifest()
            for p in self.path.rglob("*"):
                if p.is_file():
                    with open(p, "rb") as f:
                        os.fsync(f.fileno())
            _publish(self.path, self.target, self.force)
            self.written = True
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _write_manifest(self) -> None:
        """Complete embtool.json: the chain of commands that made this model (the input's chain, which the
        job's record carries over from the input's embtool.json, plus this command) and the list of files
        with their sizes (what lets a later --force replace this folder)."""
        prov = self.path / PROVENANCE
        doc = json.loads(prov.read_text(encoding="utf-8")) if prov.is_file() else {"tool": "embtool", "version": __version__}
        if "command" in doc:
            before = doc.get("chain") if isinstance(doc.get("chain"), list) else []
            doc["chain"] = [*before, {k: doc[k] for k in CHAIN_KEYS if k in doc}]
        doc.pop("files", None)
        doc["files"] = file_manifest(self.path)
        self.write_json(PROVENANCE, doc)

    def copy_from(self, src_root: Path, exclude: Iterable[str] = ()) -> None:
        """Copy every file of the input folder except `exclude` (relative paths) and pickles."""
        excl = {str(Path(e)) for e in exclude}
        for p in sorted(src_root.rglob("*")):
            rel = p.relative_to(src_root)
            if str(rel) in excl or any(part.startswith(TMP_PREFIX) or part.startswith(".") for part in rel.parts):
                continue
            if any(str(rel).startswith(e.rstrip("/") + "/") for e in excl):
                continue
            dest = self.path / rel
            if p.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif p.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest)

    def write_text(self, rel: str, text: str) -> Path:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        return p

    def write_json(self, rel: str, doc: Any) -> Path:
        return self.write_text(rel, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


class OutputFile:
    """`with OutputFile(target, force) as tmp:` write to `tmp`; linked into place on success.

    `replaceable(path)` says why an existing file is not one of the kind this command writes (None: it is,
    so --force may replace it); without it, only an empty file is replaced."""

    def __init__(self, target: str | os.PathLike, force: bool = False, inputs: Iterable[Path] = (),
                 replaceable: Callable[[Path], str | None] | None = None):
        self.target = Path(target)
        self.force = force
        if self.target.is_dir() and not self.target.is_symlink():
            raise InputError(f"{self.target} is a folder; give a file name")
        self.replaceable = lambda p: _file_not_replaceable(p, replaceable)
        check_output(self.target, force, inputs, self.replaceable)
        _clean_stale(self.target.parent)
        self.path = _tmp_name(self.target)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.path.unlink(missing_ok=True)
            return
        try:
            if self.path.exists():
                with open(self.path, "rb") as f:
                    os.fsync(f.fileno())
            _publish(self.path, self.target, self.force, self.replaceable)
        finally:
            self.path.unlink(missing_ok=True)


def _file_not_replaceable(path: Path, kind: Callable[[Path], str | None] | None) -> str | None:
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_file():
        return "is not a regular file"
    if path.stat().st_size == 0:
        return None
    return kind(path) if kind is not None else "is not empty"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def eprint(*a: Any) -> None:
    print(*a, file=sys.stderr)
