"""Hugging Face Hub ids as MODEL: `org/name` or `org/name@revision` (a branch, a tag or a 40-hex commit).

A MODEL (or --tokenizer) argument is resolved in this order:

1. a path that exists is a path, always (a note says so when the Hub cache also holds a model of that name;
   `org/name@main` then names the Hub model);
2. the local Hub cache, read as huggingface_hub writes it (`file_download.py`, `_snapshot_download.py`), with no
   network and no import of huggingface_hub:

       <cache>/models--org--name/refs/<branch or tag>         the commit it pointed to (40 hex digits)
       <cache>/models--org--name/snapshots/<commit>/<file>    a link to ../../blobs/<etag> (a plain file where the
                                                              platform has no symlinks)
       <cache>/models--org--name/blobs/<etag>                 the content, or (huggingface_hub >= 2.2, Xet files) a
                                                              link on into the cache-wide store <cache>/blobs/<xx>/<hash>
       <cache>/models--org--name/.no_exist/<commit>/<file>    a file known not to exist at that commit
       <cache>/models--org--name/trees/<commit>.json          the commit's file listing (recent huggingface_hub)

   where <cache> is --cache-dir, else $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
   $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (huggingface_hub's `constants.py`;
   TRANSFORMERS_CACHE is not read by huggingface_hub, so not here either);
3. when the snapshot is missing, or lacks a file embtool reads, and neither HF_HUB_OFFLINE nor TRANSFORMERS_OFFLINE is
   set: huggingface_hub (the `hub` extra) downloads exactly those files into the same cache, never a pickle.

A snapshot is checked before use: every link must end in a regular file inside the repository's blobs (or the
cache's shared store); a link leading elsewhere is refused, a dangling one reported. The snapshot folder is then
opened like any local model folder, with all of its checks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Protocol

from embtool.core.errors import CorruptFile, ModelNotFound, Unsupported, UnsafeModel

log = logging.getLogger("embtool")

COMMIT = re.compile(r"[0-9a-f]{40}")
# huggingface_hub's REPO_ID_REGEX, one part: 1 to 96 of [A-Za-z0-9_.-], starting and ending with [A-Za-z0-9_]
_PART = re.compile(r"\w(?:[\w.-]{0,94}\w)?", re.ASCII)
# what git check-ref-format refuses anywhere in a ref name (controls, space, ~ ^ : ? * [ \, DEL)
_REF_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")

# what embtool reads from a repository besides the weights (the weights are chosen as `model.LAYOUTS` says)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt")
CONFIG_FILES = ("config.json", "model.safetensors.index.json", "modules.json", "config_sentence_transformers.json",
                "sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                "sentence_camembert_config.json", "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                "sentence_xlnet_config.json", "README.md")
MODULE_FILES = ("config.json", "model.safetensors")  # in a sentence-transformers module folder (1_Pooling/, 2_Dense/)
# the names huggingface_hub's `.no_exist` or listing must account for before a cached snapshot counts as complete
CHECKED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
           "config_sentence_transformers.json", "sentence_bert_config.json", "README.md")
NEVER = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.h5", "*.msgpack", "*.ot")  # never downloaded

HUB_EXTRA = "pip install 'embtool[hub]'"

_QUIET: ContextVar[bool] = ContextVar("embtool_hub_quiet", default=False)


class Folders(Protocol):
    """What the model-folder reader (core/model.py's `SNAPSHOTS`) says about a snapshot, so that this module — the
    cache format and the downloads — knows no weight layout (core/model.py imports it, never the reverse)."""

    def problem(self, folder: Path, onnx_file: str | None) -> str | None:
        """Why the folder's weights cannot be opened as they are (None: they can)."""

    def weights(self, folder: Path, names: set[str], onnx_file: str | None, label: str) -> list[str]:
        """The weight files to fetch among a repository's files `names` (its configs are in `folder` already);
        a named error, starting with `label`, when there are none embtool reads."""

    def external_data(self, onnx_path: Path) -> set[str]:
        """The external-data file names an ONNX file refers to, relative to its folder."""


class Unreachable(ModelNotFound):
    """The Hub could not be reached (no network, a proxy, HF_HUB_OFFLINE seen by huggingface_hub): `reason` says so
    in a few words, for a note when the cache can serve anyway."""

    reason = "the Hub cannot be reached"


@dataclass(frozen=True)
class HubId:
    """A parsed Hub id: `repo` is org/name, `revision` what followed '@' (None: the default branch, main)."""

    repo: str
    revision: str | None = None

    @property
    def ref(self) -> str:
        return self.revision or "main"

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubSource:
    """Where a model opened from a Hub id came from (`Model.source`): the id, the revision asked for (a branch,
    tag or commit; "main" when none was given) and the commit it resolved to. `pinned` (id@commit) names exactly
    this model again, wherever it is run."""

    id: str
    revision: str
    commit: str

    @property
    def pinned(self) -> str:
        return f"{self.id}@{self.commit}"

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "revision": self.revision, "commit": self.commit}


# ----------------------------------------------------------------------------------------------
# Ids
# ----------------------------------------------------------------------------------------------

def parse_id(text: str) -> HubId:
    """`org/name` or `org/name@revision` as a HubId; ValueError saying what is wrong otherwise.

    :param text: the MODEL argument. The rules are the Hub's (huggingface_hub `validate_repo_id`): exactly one '/',
        parts of 1-96 letters, digits, '-', '_' and '.', starting and ending with a letter, digit or '_', no '--' nor
        '..', not ending in '.git'. The revision is a 40-hex commit or a git ref name (`git check-ref-format`)."""
    repo, at, rev = text.partition("@")
    parts = repo.split("/")
    if len(parts) != 2:
        raise ValueError("a Hub id is org/name, with exactly one '/'")
    if not all(parts):
        raise ValueError("a Hub id has an organisation and a name on both sides of '/'")
    if ".." in repo or "--" in repo:
        raise ValueError("'..' and '--' are not allowed in a Hub id")
    for p in parts:
        if not _PART.fullmatch(p):
            raise ValueError(f"{p!r}: a Hub id part is 1-96 letters, digits, '-', '_' or '.', starting and ending "
                             "with a letter, digit or '_'")
    if repo.endswith(".git"):
        raise ValueError("a Hub id does not end in '.git'")
    if not at:
        return HubId(repo)
    if COMMIT.fullmatch(rev.lower()):
        return HubId(repo, rev.lower())
    _check_ref(rev)
    return HubId(repo, rev)


def _check_ref(rev: str) -> None:
    """Refuse a revision that is not a git ref name (git check-ref-format's rules)."""
    if not rev:
        raise ValueError("nothing after '@' (give a branch, a tag or a 40-hex commit)")
    if len(rev) > 255 or not rev.isascii() or _REF_BAD.search(rev):
        raise ValueError(f"revision {rev!r} is not a branch, tag or commit (it holds characters git does not allow)")
    comps = rev.split("/")
    if (".." in rev or "@{" in rev or rev == "@" or rev.endswith(".") or any(not c for c in comps)
            or any(c.startswith(".") or c.endswith(".lock") for c in comps)):
        raise ValueError(f"revision {rev!r} is not a branch, tag or commit (not a valid git ref name)")


def is_id(text: str) -> bool:
    """Whether `text` parses as a Hub id (whether or not such a model exists)."""
    try:
        parse_id(text)
    except ValueError:
        return False
    return True


def _looks_like_id(text: str) -> bool:
    return "@" in text or (text.count("/") == 1 and not text.startswith((".", "/", "~")))


# ----------------------------------------------------------------------------------------------
# The cache, as huggingface_hub lays it out
# ----------------------------------------------------------------------------------------------

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hub cache folder: `cache_dir`, else the environment as huggingface_hub reads it (module docstring)."""
    if cache_dir is not None:
        return Path(os.path.expandvars(os.path.expanduser(os.fspath(cache_dir))))
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                                                  "huggingface")
        hub = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1/ON/YES/TRUE, as huggingface_hub reads it."""
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return v is not None and v.upper() in ("1", "ON", "YES", "TRUE")


def repo_folder(cache: Path, repo: str) -> Path:
    """models--org--name (huggingface_hub `repo_folder_name`)."""
    return cache / ("models--" + repo.replace("/", "--"))


def blob_roots(path: Path) -> tuple[Path, ...]:
    """For a path inside a Hub snapshot (…/models--org--name/snapshots/<commit>/…): the folders its links may
    lead into — the repository's blobs and the cache's shared store — resolved; () elsewhere. `model._inside`
    accepts a file that resolves into one of them as inside the model folder."""
    p = Path(os.path.abspath(path))
    for a in (p, *p.parents):
        if a.parent.name == "snapshots" and a.parent.parent.name.startswith("models--"):
            repo = a.parent.parent
            return ((repo / "blobs").resolve(), (repo.parent / "blobs").resolve())
    return ()


@dataclass(frozen=True)
class _Repo:
    hid: HubId
    cache: Path

    @property
    def folder(self) -> Path:
        return repo_folder(self.cache, self.hid.repo)

    def snapshot(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def cached_commit(self) -> str | None:
        """The commit the revision names in the cache: itself for a commit, refs/<ref> for a branch or tag."""
        if self.hid.revision is not None and COMMIT.fullmatch(self.hid.revision):
            return self.hid.revision
        ref = self.folder / "refs" / self.hid.ref
        if not ref.is_file():
            return None
        with open(ref, "rb") as f:
            text = f.read(128).decode("ascii", "replace").strip()
        if not COMMIT.fullmatch(text):
            raise CorruptFile(f"{ref}: not a commit hash ({text[:50]!r}); the Hub cache is damaged — delete this "
                              "file and run again")
        return text

    def known_absent(self, commit: str, name: str) -> bool:
        """huggingface_hub recorded that `name` does not exist at `commit` (.no_exist, or the cached listing)."""
        if (self.folder / ".no_exist" / commit / name).is_file():
            return True
        listing = self.listing(commit)
        return listing is not None and name not in listing

    def listing(self, commit: str) -> set[str] | None:
        """The commit's file names from huggingface_hub's tree cache (trees/<commit>.json), if it wrote one."""
        p = self.folder / "trees" / f"{commit}.json"
        try:
            doc = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return None
        files = doc.get("files") if isinstance(doc, dict) and doc.get("format_version") == 1 else None
        return set(files) if isinstance(files, dict) else None

    def write_ref(self, commit: str) -> None:
        """refs/<branch or tag> = commit, atomically, as huggingface_hub writes it (no newline)."""
        if self.hid.revision is not None and COMMIT.fullmatch(self.hid.revision):
            return
        ref = self.folder / "refs" / self.hid.ref
        try:  # best effort, as huggingface_hub does: a read-only cache still serves what it holds
            ref.parent.mkdir(parents=True, exist_ok=True)
            if ref.is_file() and ref.read_text(encoding="ascii", errors="replace") == commit:
                return
            tmp = ref.with_name(f"{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(commit, encoding="ascii")
            os.replace(tmp, ref)
        except OSError as e:
            log.info(f"could not record {self.hid.ref} = {commit} in {ref.parent} ({e.strerror})")

    def record_absent(self, commit: str, names: list[str]) -> None:
        """.no_exist/<commit>/<name> for files the listing showed absent (huggingface_hub does so on a 404), so
        that the next run finds the snapshot complete without asking the Hub."""
        for name in names:
            p = self.folder / ".no_exist" / commit / name
            try:  # best effort: without it, the next run asks the Hub again
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
            except OSError:
                return


def check_links(snap: Path, repo: Path) -> list[str]:
    """Refuse a snapshot whose links lead outside the repository's blobs (or the cache's shared store), or that
    holds anything but files, folders and links; return the files whose link is dangling (relative paths)."""
    if snap.is_symlink():
        raise UnsafeModel(f"{snap}: the snapshot folder itself is a link; refusing it")
    roots = ((repo / "blobs").resolve(), (repo.parent / "blobs").resolve())
    dangling: list[str] = []
    for dirpath, dirnames, filenames in os.walk(snap):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(snap))
            if p.is_symlink():
                try:
                    target = p.resolve()
                except (OSError, RuntimeError):  # a loop of links
                    raise UnsafeModel(f"{p}: a loop of links in the Hub cache; refusing this snapshot") from None
                if not any(target.is_relative_to(r) for r in roots):
                    raise UnsafeModel(f"{p}: a link in the Hub cache that leads outside it (to {target}); refusing "
                                      "this snapshot (delete it and download the model again)")
                if not target.exists():
                    dangling.append(rel)
                elif not target.is_file():
                    raise UnsafeModel(f"{p}: a link in the Hub cache to something that is not a file; refusing it")
            elif not (p.is_file() or p.is_dir()):
                raise UnsafeModel(f"{p}: not a regular file; refusing this snapshot")
    return dangling


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------

def resolve_model(arg: str | os.PathLike, folders: Folders, *, cache_dir: str | os.PathLike | None = None,
                  onnx_file: str | None = None) -> tuple[Path, HubSource | None]:
    """(the folder or file to open, its HubSource or None) for a MODEL argument.

    :param arg: a path (always wins when it exists) or a Hub id `org/name[@revision]`
    :param folders: what makes a snapshot's weights complete and which files they are (core/model.py `SNAPSHOTS`)
    :param cache_dir: the Hub cache (default: the environment, see `cache_root`)
    :param onnx_file: which ONNX file of the repository to fetch when it has no safetensors (--onnx-file)"""
    text = os.fspath(arg)
    if os.path.lexists(text):
        _note_shadowed(text, cache_dir)
        return Path(text), None
    hid = _parse_or_missing(text)
    repo = _Repo(hid, cache_root(cache_dir))
    commit, snap = _resolve(repo, folders, onnx_file)
    return snap, HubSource(hid.repo, hid.ref, commit)


def resolve_tokenizer(arg: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> str:
    """A --tokenizer argument as a path: itself when it exists, else the snapshot folder (holding tokenizer.json) of
    the Hub id it names, resolved as for a model but fetching only the tokenizer's files."""
    text = os.fspath(arg)
    if os.path.lexists(text):
        _note_shadowed(text, cache_dir)
        return text
    hid = _parse_or_missing(text)
    _, snap = _resolve(_Repo(hid, cache_root(cache_dir)), None, None)
    return str(snap)


def recorded_name(model: Any, given: str | os.PathLike) -> str:
    """What an index records as the model it was embedded with: id@commit for a Hub model (`search` resolves
    exactly that model again), else the absolute path of the folder or file given."""
    source = getattr(model, "source", None)
    return source.pinned if source is not None else str(Path(given).resolve())


def _parse_or_missing(text: str) -> HubId:
    try:
        return parse_id(text)
    except ValueError as e:
        why = f" (nor a Hub id: {e})" if _looks_like_id(text) else ""
        raise ModelNotFound(f"{text}: no such file or folder{why}") from None


def _note_shadowed(text: str, cache_dir) -> None:
    """A local path that is also the name of a cached Hub model: the path wins; say so."""
    try:
        hid = parse_id(text)
    except ValueError:
        return
    if repo_folder(cache_root(cache_dir), hid.repo).is_dir():
        log.info(f"{text} is a local path and also a model in the Hub cache: using the local path "
                 f"(write {hid.repo}@{hid.ref} for the Hub model)")


def _resolve(repo: _Repo, folders: Folders | None, onnx_file: str | None) -> tuple[str, Path]:
    """(commit, snapshot folder): from the cache when it is complete, else downloaded (unless offline). Without
    `folders`, only the tokenizer's files are wanted."""
    hid = repo.hid
    commit = repo.cached_commit()
    missing: list[tuple[str, bool]] | None = None
    dangling: list[str] = []
    if commit is not None and repo.snapshot(commit).is_dir():
        dangling = check_links(repo.snapshot(commit), repo.folder)
        missing = _missing(repo, commit, folders, onnx_file)
        if not missing and not dangling:
            return commit, repo.snapshot(commit)
    if offline():
        where = f"the Hub cache {repo.cache}"
        if commit is None:
            refs = _cached_refs(repo)
            also = f" (cached revisions: {', '.join(refs)})" if refs else ""
            hint = (" (a commit is given in full, 40 hex digits)" if hid.revision and re.fullmatch(r"[0-9a-fA-F]{4,39}", hid.revision)
                    else "")
            raise ModelNotFound(f"{hid}: nothing is cached for it in {where}{also}{hint}, and HF_HUB_OFFLINE is set; "
                                "unset it once to download the model (or fill the cache with hf download)")
        if missing is None:
            raise ModelNotFound(f"{hid}: commit {commit} is recorded in {where} but nothing of it is cached, and "
                                "HF_HUB_OFFLINE is set")
        if dangling:
            raise CorruptFile(f"{hid}: the cached snapshot {repo.snapshot(commit)} has dangling links "
                              f"({', '.join(dangling[:5])}): their content is gone from the cache. Delete the snapshot "
                              "and download the model again (HF_HUB_OFFLINE is set)")
        required = [what for what, hard in missing if hard]
        if required:
            raise ModelNotFound(f"{hid} (commit {commit}): the cached snapshot lacks {'; '.join(required)}, and "
                                "HF_HUB_OFFLINE is set; unset it once to download what is missing")
        return commit, repo.snapshot(commit)
    try:
        commit = _download(repo, folders, onnx_file)
    except Unreachable as e:
        if missing is None or dangling or any(hard for _, hard in missing):
            raise
        log.info(f"{e.reason}: using the cached snapshot of {hid} (commit {commit}) as it is, without checking for "
                 f"{', '.join(what for what, _ in missing)}")
        return commit, repo.snapshot(commit)
    snap = repo.snapshot(commit)
    dangling = check_links(snap, repo.folder)
    if dangling:
        raise CorruptFile(f"{hid}: the snapshot {snap} has dangling links ({', '.join(dangling[:5])}) that a download "
                          "did not repair; delete the snapshot and run again")
    return commit, snap


def _cached_refs(repo: _Repo) -> list[str]:
    refs = repo.folder / "refs"
    if not refs.is_dir():
        return []
    return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())


def _missing(repo: _Repo, commit: str, folders: Folders | None, onnx_file: str | None) -> list[tuple[str, bool]]:
    """What a cached snapshot lacks: (description, required). The weights (a model) or tokenizer.json (a tokenizer,
    folders None) are required; a checked file (CHECKED, a module folder's files) neither there nor known absent is not."""
    snap = repo.snapshot(commit)
    out: list[tuple[str, bool]] = []
    if folders is None:
        if not (snap / "tokenizer.json").is_file():
            out.append(("tokenizer.json", True))
        return out
    problem = folders.problem(snap, onnx_file)
    if problem is not None:
        out.append((f"its weights ({problem})", True))
    names = list(CHECKED) + [f"{d}/{f}" for d in _module_dirs(snap) for f in MODULE_FILES]
    out += [(n, False) for n in names if not (snap / n).is_file() and not repo.known_absent(commit, n)]
    return out


def _module_dirs(snap: Path) -> list[str]:
    """The sentence-transformers module folders modules.json names (relative, never leaving the snapshot)."""
    p = snap / "modules.json"
    try:
        mods = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return []  # the model folder's own reader reports it
    out = []
    for m in mods if isinstance(mods, list) else []:
        d = m.get("path") if isinstance(m, dict) else None
        if isinstance(d, str) and d and _safe_rel(d.strip("/")):
            out.append(d.strip("/"))
    return out


def _safe_rel(name: str) -> bool:
    """A repository file name that stays inside the snapshot: relative, no '..', no backslash, no empty part."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)


def _never(name: str) -> bool:
    return any(fnmatch(PurePosixPath(name).name.lower(), pat) for pat in NEVER)


# ----------------------------------------------------------------------------------------------
# Downloads (huggingface_hub, the `hub` extra)
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_downloads(quiet: bool = True) -> Iterator[None]:
    """`with quiet_downloads():` no progress bars for Hub downloads inside the block (the CLI's --quiet).

    :param quiet: True hides them; False shows them as usual (on stderr, when it is a terminal)"""
    token = _QUIET.set(quiet)
    try:
        yield
    finally:
        _QUIET.reset(token)


def _bar_class():
    """A tqdm for huggingface_hub's per-file bars: on stderr, only on a terminal and without --quiet."""
    from tqdm import tqdm

    show = not _QUIET.get() and sys.stderr.isatty()

    class Bar(tqdm):
        def __init__(self, *a, **k):
            k.pop("name", None)
            k.update(file=sys.stderr, disable=not show, leave=False)
            super().__init__(*a, **k)

    return Bar


@contextlib.contextmanager
def _bars(hf) -> Iterator[dict[str, Any]]:
    """hf_hub_download's progress-bar argument: our tqdm (huggingface_hub >= 1.1 takes `tqdm_class`); before that,
    huggingface_hub's own bars (stderr, terminal only), switched off for the call under --quiet."""
    import inspect

    if "tqdm_class" in inspect.signature(hf.hf_hub_download).parameters:
        yield {"tqdm_class": _bar_class()}
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    turn_off = _QUIET.get() and not are_progress_bars_disabled()
    if turn_off:
        disable_progress_bars()
    try:
        yield {}
    finally:
        if turn_off:
            enable_progress_bars()


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def _download(repo: _Repo, folders: Folders | None, onnx_file: str | None) -> str:
    """Fetch what embtool reads of the repository at the revision into the cache; return the commit."""
    hid = repo.hid
    hf = _huggingface_hub()
    if hf is None:
        raise Unsupported(f"{hid} is not (completely) in the Hub cache {repo.cache}, and downloading it needs "
                          f"huggingface_hub: {HUB_EXTRA} (or download it with another tool, then run again)")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    with _hub_errors(hid, endpoint, repo.cache):
        info = hf.HfApi(endpoint=endpoint).model_info(hid.repo, revision=hid.ref)
        commit = str(info.sha or "")
        if not COMMIT.fullmatch(commit):
            raise ModelNotFound(f"{hid}: the Hub did not say which commit {hid.ref} is ({commit[:50]!r})")
        names = {s.rfilename for s in (info.siblings or []) if isinstance(getattr(s, "rfilename", None), str)}
        repo.write_ref(commit)
        snap = repo.snapshot(commit)
        fetch = _Fetcher(hf, repo, commit, names, endpoint)
        small = TOKENIZER_FILES if folders is None else TOKENIZER_FILES + CONFIG_FILES
        fetch([n for n in small if n in names])
        if folders is None:
            repo.record_absent(commit, [n for n in CHECKED if n in TOKENIZER_FILES and n not in names])
            if "tokenizer.json" not in names:
                raise ModelNotFound(f"{hid}: the repository has no tokenizer.json")
            return commit
        dirs = _module_dirs(snap)
        fetch([n for d in dirs for n in sorted(names) if n.startswith(d + "/")
               and "/" not in n[len(d) + 1:] and (n.endswith(".json") or n.endswith("/model.safetensors"))])
        repo.record_absent(commit, [n for n in (*CHECKED, *(f"{d}/{f}" for d in dirs for f in MODULE_FILES))
                                    if n not in names])
        weights = folders.weights(snap, names, onnx_file, str(hid))
        log.info(f"{hid}: commit {commit}, fetching {', '.join(weights)} into the Hub cache {repo.cache}")
        fetch(weights)
        if weights[0].endswith(".onnx"):
            base = PurePosixPath(weights[0]).parent
            fetch(sorted(str(base / loc) if str(base) != "." else loc for loc in folders.external_data(snap / weights[0])))
    return commit


class _Fetcher:
    """hf_hub_download of repository files at one commit: a file already in the snapshot costs no request."""

    def __init__(self, hf, repo: _Repo, commit: str, names: set[str], endpoint: str | None):
        self.hf, self.repo, self.commit, self.names, self.endpoint = hf, repo, commit, names, endpoint

    def __call__(self, files: list[str]) -> None:
        for name in files:
            if not _safe_rel(name) or name not in self.names:
                raise UnsafeModel(f"{self.repo.hid}: refers to {name!r}, which is not a file of the repository; refusing it")
            if _never(name):
                raise UnsafeModel(f"{self.repo.hid}: {name} is pickle-based (or another framework's weights); never downloaded")
            with _bars(self.hf) as bars:
                self.hf.hf_hub_download(self.repo.hid.repo, name, revision=self.commit, cache_dir=str(self.repo.cache),
                                        endpoint=self.endpoint, **bars)


def _network_errors() -> tuple[type[BaseException], ...]:
    """The transport errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests, by version)."""
    found: list[type[BaseException]] = []
    for mod, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _scrub(text: str) -> str:
    """A message from huggingface_hub as one line, with no token in it."""
    line = " ".join(text.split())
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        tok = os.environ.get(var)
        if tok:
            line = line.replace(tok, "***")
    return line[:300]


@contextlib.contextmanager
def _hub_errors(hid: HubId, endpoint: str | None, cache: Path) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as embtool's named errors, one line each, token-free."""
    from huggingface_hub import errors as E

    where = endpoint or "https://huggingface.co"
    try:
        yield
    except E.GatedRepoError:
        raise ModelNotFound(f"{hid} is gated: accept its conditions on the Hub, then set HF_TOKEN to a read token "
                            "of that account") from None
    except E.RepositoryNotFoundError:
        raise ModelNotFound(f"{hid}: no such model on the Hub ({where}), or it is private or gated (set HF_TOKEN to "
                            "a token that can read it)") from None
    except E.RevisionNotFoundError:
        raise ModelNotFound(f"{hid}: the Hub has no revision {hid.ref!r} of {hid.repo}") from None
    # before EntryNotFoundError: LocalEntryNotFoundError is its subclass in huggingface_hub < 1
    except (E.LocalEntryNotFoundError, E.OfflineModeIsEnabled, *_network_errors()) as e:
        err = Unreachable(f"{hid}: not (completely) in the Hub cache {cache}, and the Hub ({where}) cannot be reached "
                          f"({type(e).__name__}: {_scrub(str(e))}); check the network, or work from the cache with "
                          "HF_HUB_OFFLINE=1")
        err.reason = f"the Hub ({where}) cannot be reached ({type(e).__name__})"
        raise err from None
    except E.EntryNotFoundError as e:
        raise ModelNotFound(f"{hid}: a file of the listing is not on the Hub ({_scrub(str(e))})") from None
    except E.HfHubHTTPError as e:
        raise ModelNotFound(f"{hid}: the Hub ({where}) answered {_scrub(str(e))}") from None
    except OSError as e:
        if e.errno is not None:  # the disk (full, read-only cache, ...): the CLI reports it as such
            raise
        if "Consistency check failed" in str(e):
            raise CorruptFile(f"{hid}: a download did not have the size the Hub announced ({_scrub(str(e))}); it was "
                              "not put in the cache's snapshot, run again") from None
        raise ModelNotFound(f"{hid}: the download failed ({type(e).__name__}: {_scrub(str(e))})") from None
