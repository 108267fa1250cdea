"""Atomic outputs: a folder (or file) is built beside its target and renamed into place.

A failed or interrupted command leaves the target untouched: either absent or the previous
complete output (which is only replaced with --force, and only when embtool wrote it: for a folder,
core/formats/record.py's `not_replaceable`, checked by content).

Temporary names. The folder or file being built, and an output being replaced, sit beside the target as

    .embtool-tmp-<target name>.<new|old>.<pid>.<start>.<host>.<nonce>.<mac>

pid and start: the process that made it and its start time (clock ticks since boot, /proc/<pid>/stat; 0 where the
platform does not say); host: 8 hex digits of the kernel's boot id and the pid namespace, so that pids are only
compared on the machine and in the namespace that gave them out; nonce: random; mac: 16 hex digits of an HMAC of
everything before it. A killed run's leftovers are removed by the next output written to the same folder, and only
a name that (a) parses, (b) carries a valid mac, (c) comes from this host, and (d) names a process that is gone (its
pid is free, or now belongs to a process with another start time). A user's file that merely looks like one
(`.embtool-tmp-diary.99999.txt`) fails (a)-(b) and is never touched; a live run's folder fails (d). The mac's key is
not a secret (it is in this source): it separates embtool's names from names people choose, which is what the sweep
needs -- someone who forges one can only have embtool remove an entry they could remove themselves. Names older
embtool versions used (no mac) are not swept: nothing proves who made them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from embtool.core.errors import BadUsage, InputError, OutputExists
from embtool.core.formats import record

TMP_PREFIX = ".embtool-tmp-"


def check_output(target: Path, force: bool, inputs: Iterable[Path] = (),
                 replaceable: Callable[[Path], str | None] | None = None) -> None:
    """Refuse a target that is (inside) an input, the current folder or one of its parents, and an existing
    target that --force may not replace. `replaceable(target)` says why an existing target is not one embtool
    wrote (None: it is); the default is `record.not_replaceable`, the rule for output folders."""
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
        why = (replaceable or record.not_replaceable)(target)
        if why is not None:
            raise OutputExists(f"{target} already exists and {why}; --force only replaces what embtool wrote, "
                               "choose another path")
        if not force:
            raise OutputExists(f"{target} already exists (use --force to replace it)")
    if not target.parent.exists():
        raise InputError(f"{target.parent}: the output's parent folder does not exist")


def _clean_stale(parent: Path) -> None:
    """Remove the temporary outputs in `parent` that embtool processes now gone left behind (SIGKILL, power loss)."""
    try:
        entries = list(parent.glob(f"{TMP_PREFIX}*"))
    except OSError:
        return
    for p in entries:
        if p.is_symlink() or not _left_by_dead_run(p.name):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


_TMP = re.compile(r"\.embtool-tmp-(?P<name>.*)\.(?P<kind>new|old)\.(?P<pid>[1-9][0-9]{0,9})\.(?P<start>[0-9]{1,20})"
                  r"\.(?P<host>[0-9a-f]{8})\.(?P<nonce>[0-9a-f]{8})\.(?P<mac>[0-9a-f]{16})", re.S)
_MAC_KEY = b"embtool temporary output, v1"


def _mac(stem: str) -> str:
    return hmac.new(_MAC_KEY, stem.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]


def _left_by_dead_run(name: str) -> bool:
    """Whether `name` is a temporary name embtool made (see the module docstring) whose process is gone."""
    m = _TMP.fullmatch(name)
    if m is None or not hmac.compare_digest(m["mac"], _mac(name[: m.start("mac") - 1])) or m["host"] != _host():
        return False
    pid, start = int(m["pid"]), int(m["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists (another user's)
        pass
    except OSError:
        return False
    now = _start_time(pid)
    if now is None:  # gone between the two looks (a short-lived process that had reused the pid)?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
    return start != 0 and now is not None and now != start  # the pid was given to another process since


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 1 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@lru_cache(maxsize=1)
def _host() -> str:
    """8 hex digits naming this kernel boot and pid namespace: where a pid in a temporary name means something."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
        except OSError:
            parts.append("")
    if not any(parts):
        import platform

        parts.append(platform.node())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _tmp_name(target: Path, kind: str = "new") -> Path:
    """A temporary name beside `target`: `kind` "new" (the output being built) or "old" (an output being replaced)."""
    short = target.name.encode("utf-8", "surrogateescape")[:100].decode("utf-8", "ignore")
    pid = os.getpid()
    stem = f"{TMP_PREFIX}{short}.{kind}.{pid}.{_start_time(pid) or 0}.{_host()}.{secrets.token_hex(4)}"
    return target.parent / f"{stem}.{_mac(stem)}"


def _publish(tmp: Path, target: Path, force: bool, replaceable: Callable[[Path], str | None] | None = None) -> None:
    """Rename tmp onto target. Without force, never replaces an existing target (even in a race); with force,
    only a target embtool wrote (checked again here: it may have changed while the command ran)."""
    if target.exists() or target.is_symlink():
        if not force:
            raise OutputExists(f"{target} appeared while this command ran (another process?); not replacing it")
        why = (replaceable or record.not_replaceable)(target)
        if why is not None:
            raise OutputExists(f"{target} {why}; --force only replaces what embtool wrote, choose another path")
        old = _tmp_name(target, "old")
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
        self._before_publish: list[Callable[[Path], None]] = []

    def __enter__(self) -> "OutputFolder":
        self.path.mkdir()
        return self

    def discard(self) -> None:
        """Do not publish: the folder is removed on exit (a failed fidelity gate)."""
        self._discard = True

    def before_publish(self, fn: Callable[[Path], None]) -> None:
        """Have `fn(folder)` run on the complete folder before its manifest is made and it is renamed into place
        (the model card: it describes the finished folder and the manifest must cover it)."""
        self._before_publish.append(fn)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._discard:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            for fn in self._before_publish:
                fn(self.path)
            record.seal(self.path)
            for p in self.path.rglob("*"):
                if p.is_file():
                    with open(p, "rb") as f:
                        os.fsync(f.fileno())
            _publish(self.path, self.target, self.force)
            self.written = True
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

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
