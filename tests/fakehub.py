"""Hugging Face Hub stand-ins for the tests: a Hub cache laid out as huggingface_hub writes it, and a small Hub
served on 127.0.0.1 answering the requests huggingface_hub makes (no machine here reaches the real Hub).

The cache (huggingface_hub `file_download.py`):
    <cache>/models--org--name/refs/<ref>                 the commit (40 hex digits, no newline)
    <cache>/models--org--name/blobs/<etag>               contents: sha256 for LFS files, git blob sha1 for the others
    <cache>/models--org--name/snapshots/<commit>/<file>  relative links to ../../blobs/<etag>

The Hub (huggingface_hub `hf_api.py` `model_info`, `file_download.py` `get_hf_file_metadata` / `http_get`):
    GET  /api/models/<org>/<name>/revision/<rev>   {"id", "sha", "siblings": [{"rfilename"}], ...}
    HEAD /<org>/<name>/resolve/<rev>/<file>        small files: 200 with ETag (git sha1), Content-Length, X-Repo-Commit;
                                                   LFS files (*.safetensors, *.onnx*): 302 to the CDN (another
                                                   origin, so not followed) with X-Linked-Etag (sha256),
                                                   X-Linked-Size, X-Repo-Commit
    GET  the same, or the CDN url                  the bytes; Range requests get 206
Errors as the Hub sends them: 401 + X-Error-Code GatedRepo (a gated repository without the token), 404 +
X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS = (".safetensors", ".onnx", ".onnx_data", ".bin")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag(name: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if name.endswith(LFS) else git_blob_sha1(data)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file of a model folder by its relative POSIX path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def commit_of(tag: str) -> str:
    return hashlib.sha1(tag.encode()).hexdigest()


def cache_repo(cache: Path, repo: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> Path:
    """Write one snapshot of `repo` into a Hub cache as huggingface_hub does; returns the snapshot folder."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / commit
    for rel, data in files.items():
        blob = folder / "blobs" / etag(rel, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    snap.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return snap


@dataclass
class Repo:
    """A repository of the fake Hub: commits by revision, and what it does wrong on purpose."""

    files: dict[str, bytes]
    commit: str
    refs: dict[str, str] = field(default_factory=dict)  # other revision -> commit (same files)
    gated: bool = False
    cut_once: set[str] = field(default_factory=set)  # files whose first download stops half-way
    fail: set[str] = field(default_factory=set)  # files whose download answers 500
    announce: dict[str, int] = field(default_factory=dict)  # file -> the size the Hub announces (a lie)


class FakeHub:
    """A Hub on 127.0.0.1 (and a CDN on a second port) in a daemon thread; stops by itself after `timeout` s."""

    def __init__(self, token: str = "hf_test_secret_token_value", timeout: float = 300.0):
        self.repos: dict[str, Repo] = {}
        self.token = token
        self.log: list[tuple[str, str, dict[str, str]]] = []  # (method, path, {range, authorization} headers)
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that hung up (a cut download): not news
                pass

        self.api = Server(("127.0.0.1", 0), Handler)
        self.cdn = Server(("127.0.0.1", 0), Handler)
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                        for s in (self.api, self.cdn)]
        for t in self.threads:
            t.start()
        self._timer = threading.Timer(timeout, self.stop)
        self._timer.daemon = True
        self._timer.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def stop(self) -> None:
        self._timer.cancel()
        for s in (self.api, self.cdn):
            s.shutdown()
            s.server_close()

    def requests(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [p for m, p, _ in self.log if method is None or m == method]

    # ---------------------------------------------------------------------------------------------
    def _send(self, h, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False,
              length: int | None = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _error(self, h, code: int, error_code: str, msg: str, head: bool, commit: str | None = None) -> None:
        headers = {"X-Error-Code": error_code, "X-Error-Message": msg, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(h, code, json.dumps({"error": msg}).encode(), headers, head)

    def _handle(self, h, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.log.append(("HEAD" if head else "GET", path, {k.lower(): v for k, v in h.headers.items()
                                                               if k.lower() in ("range", "authorization")}))
        if h.server is self.cdn:
            return self._cdn(h, path, head)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
            return self._info(h, "/".join(parts[2:4]), "/".join(parts[5:]), head)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        self._error(h, 404, "RepoNotFound", "not found", head)

    def _lookup(self, h, repo_id: str, rev: str, head: bool) -> tuple[Repo, str] | None:
        """(repository, commit) of a request, or None once the Hub's error is sent."""
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 401, "RepoNotFound", "Repository not found", head)
            return None
        commit = repo.commit if rev in ("main", repo.commit) else repo.refs.get(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return None
        return repo, commit

    def _info(self, h, repo_id: str, rev: str, head: bool) -> None:
        found = self._lookup(h, repo_id, rev, head)
        if found is None:
            return
        repo, commit = found
        doc = {"id": repo_id, "sha": commit, "private": False, "gated": "auto" if repo.gated else False,
               "siblings": [{"rfilename": n} for n in sorted(repo.files)]}
        self._send(h, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, head)

    def _resolve(self, h, repo_id: str, rev: str, name: str, head: bool) -> None:
        found = self._lookup(h, repo_id, rev, head)
        if found is None:
            return
        repo, commit = found
        if repo.gated and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted.", head)
        if name not in repo.files:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist", head, commit)
        data = repo.files[name]
        size = repo.announce.get(name, len(data))
        if name.endswith(LFS):
            sha = hashlib.sha256(data).hexdigest()
            return self._send(h, 302, b"", {"Location": f"{self.cdn_url}/cdn/{repo_id}/{sha}/{name}",
                                            "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size),
                                            "X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"'}, head)
        self._send(h, 200, data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": commit}, head)

    def _cdn(self, h, path: str, head: bool) -> None:
        _, org, name_, sha, *rest = path.strip("/").split("/")
        repo = self.repos[f"{org}/{name_}"]
        name = "/".join(rest)
        data = repo.files[name]
        if name in repo.fail:
            return self._send(h, 500, b"internal error", {}, head)
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
        body = data[start:]
        headers = {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
        code = 200
        if start:
            code = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if name in repo.cut_once and not start:
            repo.cut_once.discard(name)
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, code, body, headers, head)
