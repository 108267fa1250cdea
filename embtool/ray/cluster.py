"""One Ray session for embtool: a local Ray that only this machine can reach, or a cluster joined within a bounded
wait; Ray's failures as one `ClusterError` line; Ray's own chatter kept off stdout.

What a local Ray started here exposes, and why each setting (read from Ray 2.60's source; a test reads every
listening socket of the process tree while `embed --ray` runs):
- Ray's gRPC servers (GCS, raylet node and object managers, the core worker of every worker and of the driver) and
  its runtime-env agent listen on every interface unless the node's address is exactly 127.0.0.1, and `ray.init`
  replaces `_node_ip_address="127.0.0.1"` by the machine's network address on Linux unless Ray "clusters" are
  disabled (`ray_constants.ENABLE_RAY_CLUSTER`, read when the address is resolved). It is disabled for the
  duration of `ray.init`, and the node's address is checked afterwards: a Ray that would listen elsewhere is
  stopped and refused.
- no dashboard: Ray's API server runs minimal (no HTTP server) and its agents open no port; usage stats are off for
  `ray.init` clusters (Ray's own rule).
- Ray keeps its Unix sockets, logs and spilled objects in a session folder: here a private folder (mode 0700) in
  the temporary directory, removed when the session ends (and by the next local session when its process was
  killed with SIGKILL); nothing is written under /tmp/ray. Ray's token authentication stays as Ray sets it (on by
  default: Ray keeps its token in ~/.ray/auth_token, shared by every local Ray of the user; `RAY_AUTH_MODE=disabled`
  turns it off).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Iterator

import ray

from embtool.core.errors import ClusterError, EmbtoolError

LOOPBACK = "127.0.0.1"
FOLDER_PREFIX = "embtool-ray-"  # a local Ray's private folder in the temporary directory
JOIN_TIMEOUT_S = 60.0  # the longest `--ray ADDRESS` waits for a cluster to answer before giving up
_SOCKET_ROOM = 64  # what Ray appends to its temporary folder for a Unix socket path: session_<date>_<pid>/sockets/...
_SUN_PATH_MAX = 107  # Linux's limit on a Unix socket path


@contextlib.contextmanager
def session(address: str | None = "local", num_cpus: int | None = None, quiet: bool = True) -> Iterator[None]:
    """Ray for the duration of the `with` block.

    address: "local" (or None) starts a Ray on this machine that listens on 127.0.0.1 only, in a private temporary
        folder; the Ray and the folder are gone when the block ends (also on an error, SIGINT or SIGTERM).
        "auto" (the cluster `ray start` made on this machine, or RAY_ADDRESS) or HOST:PORT joins a cluster: what that
        cluster exposes is its own; the driver disconnects when the block ends. RAY_ADDRESS never redirects "local".
    num_cpus: CPUs of a local Ray (default: all cores).
    quiet: hold what Ray prints on file descriptors 1 and 2 while the session runs (its C++ logs, "(raylet) ..."
        error lines, the usage-stats notice) so stdout carries only embtool's output; shown on stderr afterwards
        when EMBTOOL_DEBUG is set.
    If Ray is already initialized in this process (by the caller), it is used as it is and left running.
    Ray's failures inside the block (a raylet or worker that died, an object lost) are raised as ClusterError.
    """
    if ray.is_initialized():
        with _ray_failures():
            yield
        return
    with _held_output(quiet):
        folder = None
        try:
            if address in (None, "local"):
                folder = _start_local(num_cpus)
            else:
                _join(str(address))
            with _ray_failures():
                yield
        finally:
            _stop(folder)


def _start_local(num_cpus: int | None) -> str:
    """Start a local Ray bound to 127.0.0.1 in a new private folder; returns the folder."""
    from ray._private import ray_constants

    root = _temp_root()
    _sweep(root)
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=root)
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # or ray.init resolves 127.0.0.1 to the machine's network address
    try:
        _init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, _node_ip_address=LOOPBACK, _temp_dir=folder,
              include_dashboard=False)
    except BaseException:
        _stop(folder)
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters
    node = ray.util.get_node_ip_address()
    if node != LOOPBACK:
        _stop(folder)
        raise ClusterError(f"the local Ray would listen on {node}, not only on {LOOPBACK}; refusing to run it "
                           f"(Ray {ray.__version__} resolves addresses in a way embtool does not know)")
    return folder


def _sweep(root: str) -> None:
    """Remove the folders that local Rays of killed embtool processes (SIGKILL) left in `root`: an `embtool-ray-*`
    folder whose every Ray session names (session_<date>_<pid>) a driver process that no longer runs."""
    for folder in glob.glob(os.path.join(glob.escape(root), FOLDER_PREFIX + "*")):
        drivers = []
        for session_dir in glob.glob(os.path.join(glob.escape(folder), "session_2*")):
            with contextlib.suppress(ValueError):
                drivers.append(int(session_dir.rsplit("_", 1)[1]))
        if drivers and not any(_running(pid) for pid in drivers):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temp_root() -> str:
    """The temporary directory, unless Ray's Unix socket paths would not fit under it (then /tmp)."""
    root = tempfile.gettempdir()
    if len(root) + len(f"/{FOLDER_PREFIX}XXXXXXXX/") + _SOCKET_ROOM > _SUN_PATH_MAX and os.path.isdir("/tmp"):
        return "/tmp"
    return root


def _join(address: str) -> None:
    """Join the cluster at `address` ("auto" or HOST:PORT), or raise ClusterError within JOIN_TIMEOUT_S."""
    from ray._common.network_utils import parse_address
    from ray._private.services import canonicalize_bootstrap_address_or_die

    if "://" in address:
        raise ClusterError(f"--ray {address}: give the cluster's GCS address as HOST:PORT (or 'auto'), not a URL")
    try:
        target = canonicalize_bootstrap_address_or_die(address)
        host, port = parse_address(target) or (None, None)
        port = int(port)
    except (ConnectionError, ValueError, TypeError) as e:
        raise ClusterError(f"--ray {address}: {_first_line(e)}") from None
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        socket.create_connection((host, port), timeout=JOIN_TIMEOUT_S / 2).close()
    except OSError as e:
        raise ClusterError(f"no Ray cluster at {address} ({host}:{port}: {e.strerror or e})") from None
    _probe_gcs(target, address, deadline)
    _init(address=target)


def _probe_gcs(target: str, address: str, deadline: float | None = None) -> None:
    """Ask the GCS at `target` for its cluster id, in a thread waited for until `deadline` (time.monotonic(); default:
    JOIN_TIMEOUT_S from now): `ray.init` retries an address that does not answer for many minutes, silently."""
    from ray._raylet import GcsClient

    failed: list[BaseException] = []

    def probe() -> None:
        try:
            GcsClient(address=target)
        except (ray.exceptions.RayError, ConnectionError, RuntimeError, OSError, ValueError) as e:
            failed.append(e)

    t = threading.Thread(target=probe, name="embtool-ray-probe", daemon=True)
    t.start()
    t.join(max(0.0, (deadline or time.monotonic() + JOIN_TIMEOUT_S) - time.monotonic()))
    if t.is_alive():
        raise ClusterError(f"no Ray cluster answered at {address} within {JOIN_TIMEOUT_S:.0f} s")
    if failed:
        raise ClusterError(f"no Ray cluster answered at {address} ({_first_line(failed[0])})")


def _init(**kwargs) -> None:
    """`ray.init` without its side effects on this process: Ray installs a SIGTERM handler that exits with status 15
    (embtool's handler is put back; a SIGTERM during the start is delivered to it) and logs at INFO."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(log_to_driver=False, logging_level=logging.ERROR, **kwargs)
    except SystemExit as e:
        if before is None or e.code != signal.SIGTERM:
            raise
        signal.signal(signal.SIGTERM, before)
        signal.raise_signal(signal.SIGTERM)  # to embtool's handler (or the default action)
        raise
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot start Ray: {_first_line(e)}") from None
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _stop(folder: str | None) -> None:
    """Disconnect (and stop a local Ray: `ray.shutdown` waits for its processes), then remove its folder."""
    try:
        with contextlib.suppress(ray.exceptions.RayError, ConnectionError, OSError):
            ray.shutdown()
    finally:  # even when a signal interrupts the shutdown
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _ray_failures() -> Iterator[None]:
    """Ray's exceptions as embtool's: an embtool error (or a TypeError / ValueError of a wrong option) raised in a
    worker is raised again as it is (Ray wraps it in a RayTaskError whose text is a remote traceback); any other
    failure becomes one ClusterError line."""
    try:
        yield
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, (EmbtoolError, TypeError, ValueError)):
            raise cause.with_traceback(None) from None
        raise ClusterError(f"a Ray worker failed: {type(cause).__name__}: {_first_line(cause)}") from None
    except ray.exceptions.RayError as e:
        raise ClusterError(f"Ray failed: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def _held_output(enabled: bool) -> Iterator[None]:
    """Point file descriptors 1 and 2 at one temporary file for the block (Ray's C++ code and its driver threads write
    there), so that stdout carries only embtool's output and a failure ends with one `Error:` line; the held text is
    written on stderr afterwards when EMBTOOL_DEBUG is set."""
    if not enabled:
        yield
        return
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:
        yield
        return
    _flush()
    with tempfile.TemporaryFile(prefix="embtool-ray-output-") as held:
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            _flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if os.environ.get("EMBTOOL_DEBUG") and held.tell():
                held.seek(0)
                os.write(2, held.read())


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
