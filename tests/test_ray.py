"""Ray scale-out (optional extra, installed by `make test`): embed_dataset equals Encoder.embed row for row, a
worker killed mid-run changes nothing, `embed --ray` shards search like one local index; the local Ray listens on
127.0.0.1 only, streams its input, leaves nothing behind, and every Ray failure (SIGINT, SIGTERM, a raylet that dies,
an address that does not answer, a null text) ends with one `Error:` line (or a named exception) and nothing on
stdout but embtool's output.

In-process tests share one local Ray per module (`ray_local`); the failure modes run `embtool` in subprocesses, each
with its own Ray, fed through a pipe that stays open so that the test acts while the job is provably under way."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SENTENCES, corpus_lines, run_cli

ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test` (pip install 'embtool[ray]')")

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    from embtool.ray import FAULT_ENV, session

    marker = tmp_path_factory.mktemp("fault") / "killed"
    # workers inherit the environment of the Ray instance: a worker exits hard once, when it meets text id 150
    os.environ[FAULT_ENV] = f"150:{marker}"
    with session("local", num_cpus=2, quiet=False):
        yield marker
    os.environ.pop(FAULT_ENV, None)


def test_embed_dataset_equals_encoder_and_survives_a_killed_worker(ray_local, tiny_bert):
    import embtool

    texts = SENTENCES + corpus_lines("fr", 300, 2000)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = embtool.embed_dataset(ds, tiny_bert, batch_size=32, concurrency=2, threads=1).take_all()
    assert ray_local.exists(), "the fault hook did not fire: no worker was killed"
    got = {int(r["id"]): np.asarray(r["embedding"]) for r in out}
    assert sorted(got) == list(range(len(texts)))  # every row once, none lost or doubled by the retry
    ref = embtool.Encoder(tiny_bert).embed(texts)
    V = np.stack([got[i] for i in range(len(texts))])
    assert V.dtype == np.float32 and V.shape == ref.shape
    np.testing.assert_allclose(V, ref, rtol=0, atol=2e-6)


def _readme_block(marker: str) -> str:
    """The documented Python example that contains `marker` (the shared reader: tests/helpers.py)."""
    from helpers import doc_block

    return doc_block("python", containing=marker)


def test_readme_ray_and_spark_examples_run(ray_local, tiny_bert):
    scope: dict = {"model": str(tiny_bert)}
    code = _readme_block("embtool.embed_dataset(")  # its embtool.ray.session() uses the fixture's Ray
    exec(compile(code, "README.md", "exec"), scope)
    assert [r["id"] for r in sorted(scope["rows"], key=lambda r: r["id"])] == [0, 1]
    assert np.asarray(scope["rows"][0]["embedding"]).shape == (32,)

    import pandas as pd

    spark = _readme_block("def embed_partition").replace("/models/all-MiniLM-L6-v2", str(tiny_bert))
    exec(compile(spark, "README.md", "exec"), scope)
    frames = [pd.DataFrame({"id": [0, 1], "text": SENTENCES[:2]}), pd.DataFrame({"id": [2], "text": SENTENCES[2:3]})]
    out = pd.concat(list(scope["embed_partition"](iter(frames))))
    import embtool

    np.testing.assert_allclose(np.stack(out["embedding"].to_list()), embtool.Encoder(tiny_bert).embed(SENTENCES[:3]), atol=2e-6, rtol=0)


def test_embed_ray_shards_search_like_one_local_index(ray_local, tiny_bert, tmp_path):
    import json

    from conftest import run_cli

    texts = corpus_lines("en", 230, 3000)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--ray", "--workers", "2", "--shard-rows", "100",
                 "-o", tmp_path / "shards", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["texts"] == 230 and s["shards"] == 3
    shards = sorted(str(p) for p in (tmp_path / "shards").glob("part-*.safetensors"))
    assert len(shards) == 3
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "-o", tmp_path / "one.safetensors", "--quiet"]).exit_code == 0
    q = tmp_path / "q.txt"
    q.write_text("\n".join(t[: len(t) // 2] for t in texts[::23]) + "\n")
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--ray", "--workers", "1", "--shard-rows", "150",
                    "--format", "parquet", "-o", tmp_path / "pq", "--quiet"]).exit_code == 0
    hits = {}
    for name, idx in (("ray", shards), ("local", [tmp_path / "one.safetensors"]), ("folder", [tmp_path / "shards"]),
                      ("ray-search", [tmp_path / "shards", "--ray"]), ("parquet", [tmp_path / "pq"])):
        r = run_cli(["search", *idx, "-q", q, "-k", "10", "--json"])
        assert r.exit_code == 0, r.stderr
        hits[name] = [(h["query_no"], h["id"], h["score"]) for h in map(json.loads, r.stdout.splitlines())]
    assert len(hits["local"]) == 10 * len(texts[::23])
    for name in ("ray", "folder", "ray-search", "parquet"):
        _assert_same_hits(hits[name], hits["local"], name)


def _assert_same_hits(got, want, name, tol=1e-5):
    """The shards were embedded in other batches than the one local file, so a score may differ in its last float32
    bits (padding changes the summation order): rounding both to 5 places can still split 0.991465 into ...46 and
    ...47. Same queries, same ids at each rank, scores within tol; two ids may swap only where their scores tie."""
    assert len(got) == len(want), name
    for (qg, ig, sg), (qw, iw, sw) in zip(got, want):
        assert qg == qw and abs(sg - sw) <= tol, (name, qg, ig, sg, iw, sw)
        if ig != iw:
            tied = {i for q, i, s in want if q == qw and abs(s - sw) <= tol}
            assert ig in tied, (name, qg, ig, iw)


@pytest.fixture(scope="module")
def options_bert(tiny_bert, tmp_path_factory):
    from index_helpers import options_model

    return options_model(tiny_bert, tmp_path_factory.mktemp("options") / "model")


@pytest.mark.parametrize("writer, option", [("ray", o) for o in ("pooling-cls", "pooling-mean", "no-normalize", "prefix",
                                                                   "prompt-name", "max-length", "dim")]
                         + [("ray-parquet", "pooling-cls")])
def test_ray_shards_record_every_encoder_option(ray_local, options_bert, tmp_path, writer, option):
    """`embed --ray` parts record how their texts were embedded (they once recorded only the model), so `search
    FOLDER "a query"` embeds queries as the documents were (the plain, --shard and Parquet writers:
    tests/test_embed_search.py; the Parquet parts share the metadata path, one option shows it)."""
    from index_helpers import ENCODER_OPTIONS, TEXTS, assert_search_embeds_queries_like_the_documents, embed_with

    files = embed_with(writer, options_bert, ENCODER_OPTIONS[option], TEXTS, tmp_path / "shards")
    assert len(files) == 2
    assert_search_embeds_queries_like_the_documents(files, TEXTS)


# ------------------------------------------------------------------------------------------ in-process, shared Ray
def test_embed_dataset_refuses_null_and_non_text_values(ray_local, tiny_bert):
    import embtool

    nulls = [{"id": 0, "text": "a text"}, {"id": 1, "text": None}, {"id": 2, "text": "another"}]  # a null in a text column
    numbers = [{"id": i + 1, "text": i} for i in range(3)]  # a column of numbers
    for rows, what in ((nulls, "a null"), (numbers, "a value of type int")):
        with pytest.raises(ray.exceptions.RayTaskError) as e:  # Ray Data's UserCodeException, carrying embtool's InputError
            embtool.embed_dataset(ray.data.from_items(rows), tiny_bert, batch_size=8).take_all()
        assert f"InputError: the 'text' column holds {what} at the row with id 1, not a text" in str(e.value)


def test_ray_failures_become_one_line(ray_local, tiny_bert, tmp_path, monkeypatch):
    import embtool
    from embtool.errors import ClusterError, InputError
    from embtool.ray import session

    # an embtool error raised in a worker comes back as itself, not as Ray's remote traceback
    wrapped = ray.exceptions.RayTaskError("f", "Traceback ...", InputError("bad input")).as_instanceof_cause()
    with pytest.raises(InputError) as e, session():
        raise wrapped
    assert type(e.value) is InputError and str(e.value) == "bad input"
    with pytest.raises(ClusterError, match=r"^a Ray worker failed: MemoryError: out of it$"), session():
        raise ray.exceptions.RayTaskError("f", "tb", MemoryError("out of it\nmore")).as_instanceof_cause()
    # the raylet dying under `search --ray`: one Error line, no LocalRayletDiedError traceback
    embtool.embed(tiny_bert, tmp_path / "i.safetensors", texts=SENTENCES)
    monkeypatch.setattr(ray, "get", lambda *a, **k: (_ for _ in ()).throw(ray.exceptions.LocalRayletDiedError()))
    r = run_cli(["search", tmp_path / "i.safetensors", "a query", "--ray"])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("Error: Ray failed: LocalRayletDiedError: ") and len(r.stderr.splitlines()) == 1, r.stderr
    # more actors than the cluster has CPUs would wait forever: refused
    monkeypatch.undo()
    (tmp_path / "t.txt").write_text("\n".join(SENTENCES) + "\n")
    # what a worker refuses when it opens the model reads as it does without --ray
    plain = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--prompt-name", "nosuch", "-o", tmp_path / "p.npy"])
    on_ray = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--prompt-name", "nosuch", "--ray", "-o", tmp_path / "s"])
    assert (on_ray.exit_code, on_ray.stdout, on_ray.stderr) == (plain.exit_code, "", plain.stderr) and plain.exit_code == 1
    assert plain.stderr.startswith("Error: ") and len(plain.stderr.splitlines()) == 1
    r = run_cli(["embed", tiny_bert, "-i", tmp_path / "t.txt", "--ray", "--workers", "3", "--threads", "1",
                 "-o", tmp_path / "s"])
    assert r.exit_code == 1 and r.stderr == ("Error: 3 worker(s) of 1 thread(s) need 3 CPUs; the Ray cluster has 2: "
                                             "use fewer --workers or --threads\n")
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".embtool-tmp-*"))


# ------------------------------------------------------------------------------------ subprocesses, one Ray each
@pytest.fixture
def short_tmpdir():
    """A TMPDIR short enough for Ray's Unix socket paths (else embtool falls back to /tmp), checked empty by tests."""
    d = tempfile.mkdtemp(prefix="et-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return os.path.basename(argv[0].decode(errors="replace"))


def _address(hexaddr: str) -> str:
    """An address of /proc/net/tcp (IPv4, little-endian) or tcp6 (four little-endian 32-bit words), as text."""
    import ipaddress

    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _listening(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of `pids`: /proc/net/tcp{,6} lists the
    sockets (inode, state 0A = LISTEN), /proc/PID/fd maps them to processes (psutil is not needed)."""
    listen: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":
                host, port = f[1].split(":")
                listen[f[9]] = (_address(host), int(port, 16))
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listen:
                found.append((pid, _name(pid), *listen[target[8:-1]]))
    return found


def test_socket_reader_knows_loopback_from_the_rest():
    assert _address("0100007F") == "127.0.0.1" and _address("020200C0") == "192.0.2.2"
    assert _address("0000000000000000FFFF00000100007F") == "::ffff:7f00:1"  # ::ffff:127.0.0.1
    assert _address("00000000000000000000000000000000") == "::"
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("::ffff:127.0.0.1")
    assert not any(_loopback(a) for a in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2"))
    with socket.socket() as s:  # this process's own listening socket, found through /proc
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert (os.getpid(), _name(os.getpid()), "0.0.0.0", s.getsockname()[1]) in _listening([os.getpid()])


class _EmbedOnRay:
    """`embtool embed MODEL -i - --ray -o OUT` in its own process group, fed through a pipe that stays open: the first
    shard appears in the output's temporary folder before the input has ended (so the texts are streamed, not read
    whole), and the test acts while the job is under way."""

    LINES = 2500  # more than two blocks of embtool.jobs.embed_ray.BLOCK_TEXTS: the driver waits for the third

    def __init__(self, model, tmp_path: Path, tmpdir: Path, *args, env: dict[str, str] | None = None):
        self.out = tmp_path / "shards"
        self.tmp_path, self.tmpdir = tmp_path, tmpdir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embtool", "embed", str(model), "-i", "-", "--ray", "--shard-rows", "100",
             "-o", str(self.out), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", **(env or {})})
        self.proc.stdin.write("".join(f"line {i} of a text that streams\n" for i in range(self.LINES)).encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + 900  # a bound for a hung test, not a timing assumption
        while not glob.glob(str(tmp_path / ".embtool-tmp-shards.*" / "part-00000.*")):
            if self.proc.poll() is not None:
                pytest.fail(f"embed --ray ended early ({self.proc.returncode}): {self.proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "no shard written"
            time.sleep(0.2)
        self.pids = _descendants(self.proc.pid)

    def end(self, signum: int | None = None, close_input: bool = False) -> tuple[int, str, str]:
        if signum is not None:
            os.killpg(self.proc.pid, signum)  # as Ctrl-C or a service manager would: the whole group
        if close_input:
            self.proc.stdin.close()
        self.proc.stdin = None  # communicate() must not touch it
        out, err = self.proc.communicate(timeout=900)
        return self.proc.returncode, out.decode(), err.decode()

    def assert_nothing_left(self, written: bool) -> None:
        deadline = time.monotonic() + 120
        while [p for p in self.pids if _running(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [(p, _name(p)) for p in self.pids if _running(p)] == [], "Ray processes outlived embtool"
        assert list(self.tmpdir.iterdir()) == []  # Ray's session folder, the spools: all gone
        assert glob.glob(f"/tmp/ray/session_*_{self.proc.pid}") == []  # nothing of this run under Ray's default folder
        assert self.out.exists() == written and not list(self.tmp_path.glob(".embtool-tmp-*"))


def test_local_ray_listens_on_loopback_only_streams_and_leaves_nothing(tiny_bert, tmp_path, short_tmpdir):
    # RAY_ADDRESS names a cluster: `--ray` alone still starts its own local Ray (it was a ValueError traceback)
    run = _EmbedOnRay(tiny_bert, tmp_path, short_tmpdir, "--json", env={"RAY_ADDRESS": "127.0.0.1:1"})
    socks = _listening(run.pids)
    names = {name for _, name, _, _ in socks}
    # the driver, the GCS, the raylet and the worker each hold a server: the test sees them all
    assert {"gcs_server", "raylet"} <= names and run.proc.pid in {p for p, *_ in socks}, socks
    assert any(n.startswith("ray::") for n in names), socks
    exposed = [s for s in socks if not _loopback(s[2])]
    assert exposed == [], f"listening beyond loopback: {exposed}"
    code, out, err = run.end(close_input=True)
    assert (code, err) == (0, ""), err
    summary = json.loads(out)  # stdout: the summary, and nothing else
    assert summary["texts"] == _EmbedOnRay.LINES and summary["shards"] == _EmbedOnRay.LINES // 100
    run.assert_nothing_left(written=True)
    import embtool

    ix = embtool.open_index(run.out / "part-00024.safetensors")
    assert ix.text(0) == "line 2400 of a text that streams" and int(ix.ids[0]) == 2400


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "Terminated"), (signal.SIGINT, 130, "Interrupted")])
def test_sigint_and_sigterm_during_embed_ray(tiny_bert, tmp_path, short_tmpdir, signum, code, said):
    run = _EmbedOnRay(tiny_bert, tmp_path, short_tmpdir)
    got = run.end(signum)
    assert got == (code, "", f"{said}; nothing was written.\n")  # no C++ stack, no "(raylet) Task ... failed" lines
    run.assert_nothing_left(written=False)


def test_raylet_death_is_one_error_line(tiny_bert, tmp_path, short_tmpdir):
    run = _EmbedOnRay(tiny_bert, tmp_path, short_tmpdir)
    raylets = [p for p in run.pids if _name(p) == "raylet"]
    assert len(raylets) == 1, [(p, _name(p)) for p in run.pids]
    os.kill(raylets[0], signal.SIGKILL)
    code, out, err = run.end(close_input=True)
    assert code == 1 and out == "", (code, out, err)
    assert err.startswith("Error: Ray failed: ") and len(err.splitlines()) == 1, err
    run.assert_nothing_left(written=False)


def test_addresses_that_do_not_answer_give_up_with_one_line(tiny_bert, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(SENTENCES) + "\n")
    cases = {  # --ray value, environment: the start of the one Error line
        "refused": ("127.0.0.1:1", {}, "Error: no Ray cluster at 127.0.0.1:1 ("),
        "auto": ("auto", {"RAY_ADDRESS": "127.0.0.1:1"}, "Error: no Ray cluster at auto ("),
        "url": ("ray://127.0.0.1:1", {}, "Error: --ray ray://127.0.0.1:1: give the cluster's GCS address as HOST:PORT"),
        "garbage": ("no-such-address", {}, "Error: --ray no-such-address: "),
    }
    procs = {k: subprocess.Popen([sys.executable, "-m", "embtool", "embed", str(tiny_bert), "-i", str(tmp_path / "t.txt"),
                                  f"--ray={addr}", "-o", str(tmp_path / k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**os.environ, **env})
             for k, (addr, env, _) in cases.items()}
    try:
        for k, p in procs.items():
            out, err = p.communicate(timeout=900)  # Ray alone retries such an address for many minutes
            assert (p.returncode, out) == (1, b""), (k, p.returncode, out, err)
            assert err.decode().startswith(cases[k][2]) and len(err.splitlines()) == 1, (k, err)
            assert not (tmp_path / k).exists()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert not list(tmp_path.glob(".embtool-tmp-*"))


def test_a_cluster_that_never_answers_is_given_up_after_a_bounded_wait(monkeypatch):
    from embtool.errors import ClusterError
    from embtool.ray import cluster

    monkeypatch.setattr(cluster, "JOIN_TIMEOUT_S", 2.0)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ClusterError, match=f"^no Ray cluster answered at {where} within 2 s$"):
            cluster._probe_gcs(where, where)


def test_without_ray_installed_the_extra_is_named(tiny_bert, tmp_path):
    code = ("import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
            "from embtool.cli.main import main; sys.argv = ['embtool', *sys.argv[1:]]; main()")
    r = subprocess.run([sys.executable, "-c", code, "embed", str(tiny_bert), "a text", "--ray", "-o", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "Error: Ray is not installed: pip install 'embtool[ray]'\n")
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['ray'] = None; import embtool.ray"],
                       capture_output=True, text=True, timeout=300)
    assert "embtool.core.errors.InputError: Ray is not installed: pip install 'embtool[ray]'" in r.stderr


def test_a_long_temporary_directory_falls_back_to_tmp(monkeypatch):
    from embtool.ray import cluster

    monkeypatch.setattr(tempfile, "tempdir", "/tmp/" + "x" * 60)
    assert cluster._temp_root() == "/tmp"
    monkeypatch.setattr(tempfile, "tempdir", "/tmp/short")
    assert cluster._temp_root() == "/tmp/short"


def test_a_killed_runs_folder_is_swept_and_a_live_ones_kept(tmp_path):
    from embtool.ray import cluster

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process that ran and is gone: its pid names a driver that no longer runs
    for name, pid in (("embtool-ray-killed", dead.pid), ("embtool-ray-live", os.getpid())):
        (tmp_path / name / f"session_2026-01-01_00-00-00_000000_{pid}" / "logs").mkdir(parents=True)
    (tmp_path / "embtool-ray-starting").mkdir()  # no session yet: not provably abandoned
    (tmp_path / "someone-elses" / f"session_2026-01-01_00-00-00_000000_{dead.pid}").mkdir(parents=True)
    cluster._sweep(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embtool-ray-live", "embtool-ray-starting", "someone-elses"]


@pytest.mark.parametrize("args, message", [
    ([], "--ray needs -o FOLDER"),
    (["-o", "s", "--shard", "0/2"], "--ray splits the work itself"),
    (["-o", "s", "--precision", "int8"], "--ray writes float32 or float16 shards"),
    (["-o", "s", "--format", "npy"], "--ray writes .safetensors or .parquet shards"),
])
def test_embed_ray_usage_errors_come_before_ray_starts(tiny_bert, tmp_path, monkeypatch, args, message):
    from embtool.ray import cluster

    monkeypatch.setattr(cluster, "_start_local", lambda *a: pytest.fail("Ray started for a usage error"))
    monkeypatch.chdir(tmp_path)
    r = run_cli(["embed", tiny_bert, "a text", "--ray", *args])
    assert (r.exit_code, r.stdout) == (2, "") and r.stderr == f"Error: {message}" + r.stderr.split(message, 1)[1]
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("field", ["workers", "shard_rows"])
def test_embed_ray_counts_must_be_whole_numbers(tiny_bert, tmp_path, monkeypatch, field):
    import embtool
    from embtool.errors import BadUsage
    from embtool.ray import cluster

    monkeypatch.setattr(cluster, "_start_local", lambda *a: pytest.fail("Ray started for a usage error"))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(BadUsage, match=f"^{field} must be a whole number >= 1, not "):
            embtool.embed(tiny_bert, tmp_path / "s", texts=["a"], ray="local", **{field: bad})
