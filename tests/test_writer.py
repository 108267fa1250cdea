"""Atomic outputs (core/writer.py): temporary names, and the sweep of what killed runs left behind -- which removes
only names embtool made, of processes that are gone, and never a user's file that looks like one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embtool.core import writer
from embtool.core.writer import TMP_PREFIX, OutputFile, OutputFolder

# a file name part: no separator, no NUL, short enough to stay under 255 bytes with the rest of a name
_PART = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=0, max_size=30)
_HEX = st.text("0123456789abcdef", min_size=0, max_size=20)


def _hex(n: int) -> st.SearchStrategy[str]:
    """n hex digits (the field's own length), or any other run of hex digits."""
    return st.one_of(st.text("0123456789abcdef", min_size=n, max_size=n), _HEX)
_NUM = st.integers(0, 2**22).map(str)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # free until the kernel hands it out again: the sweep's check is "is it running now"


def _lookalikes() -> st.SearchStrategy[str]:
    """Names people (or other tools) could give a file, shaped like embtool's temporary names: the old format
    (`.embtool-tmp-diary.99999.txt`), and the new one with every field present but a mac embtool did not make."""
    old = st.builds(lambda a, pid, b: f"{TMP_PREFIX}{a}.{pid}.{b}", _PART, _NUM, _PART)
    new = st.builds(lambda a, kind, pid, start, host, nonce, mac:
                    f"{TMP_PREFIX}{a}.{kind}.{pid}.{start}.{host}.{nonce}.{mac}",
                    _PART, st.sampled_from(["new", "old", "tmp"]), _NUM, _NUM,
                    st.one_of(st.just(writer._host()), _hex(8)), _hex(8), _hex(16))
    return st.one_of(old, new, st.builds(lambda a: TMP_PREFIX + a, _PART))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_lookalikes(), min_size=1, max_size=6, unique=True), as_dir=st.booleans())
def test_the_sweep_never_removes_a_users_file_that_looks_temporary(names, as_dir):
    names = [n for n in names if len(n.encode("utf-8")) < 250 and n not in (".", "..")]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for i, n in enumerate(names):
            if as_dir and i % 2:
                (d / n).mkdir()
                (d / n / "mine.txt").write_text("keep")
            else:
                (d / n).write_text("keep")
        with OutputFile(d / "out.npy") as tmp:  # what `embed -o out.npy` does, without --force
            tmp.write_bytes(b"\x93NUMPY")
        with OutputFolder(d / "model"):
            pass
        left = sorted(p.name for p in d.iterdir())
        assert left == sorted([*names, "out.npy", "model"])
        assert all((d / n / "mine.txt" if (d / n).is_dir() else d / n).read_text() == "keep" for n in names)


def test_the_reported_name_is_kept(tmp_path):
    """The case that was lost: `.embtool-tmp-diary.99999.txt` beside an `embed -o` target, pid 99999 not running."""
    diary = tmp_path / f"{TMP_PREFIX}diary.{_dead_pid()}.txt"
    diary.write_text("dear diary")
    with OutputFile(tmp_path / "e.npy") as tmp:
        tmp.write_bytes(b"\x93NUMPY")
    assert diary.read_text() == "dear diary"


def _made_by(pid: int, start: int, host: str | None = None, name: str = "out") -> str:
    """A temporary name as embtool makes it, for a given process."""
    stem = f"{TMP_PREFIX}{name}.new.{pid}.{start}.{host or writer._host()}.0123abcd"
    return f"{stem}.{writer._mac(stem)}"


def test_a_name_embtool_made_is_swept_only_when_its_process_is_gone(tmp_path):
    me, start = os.getpid(), writer._start_time(os.getpid())
    if start is None:
        pytest.skip("this platform has no /proc/<pid>/stat: the sweep keeps what a running pid names")
    dead = _made_by(_dead_pid(), 12345)
    reused = _made_by(me, start + 1)  # this pid, another start time: the pid was reused, the maker is gone
    alive = _made_by(me, start)  # this very process: in use
    elsewhere = _made_by(_dead_pid(), 12345, host="00000000")  # another machine or pid namespace: nothing provable
    forged = _made_by(_dead_pid(), 12345)[:-1] + "0"  # a wrong mac
    link_target = tmp_path / "target"
    link_target.mkdir()
    (link_target / "data").write_text("keep")
    for n in (dead, reused, alive, elsewhere, forged):
        (tmp_path / n).mkdir()
        (tmp_path / n / "x").write_text("x")
    link = _made_by(_dead_pid(), 7, name="link")
    (tmp_path / link).symlink_to(link_target)
    writer._clean_stale(tmp_path)
    left = {p.name for p in tmp_path.iterdir()}
    assert dead not in left and reused not in left
    assert {alive, elsewhere, forged, link, "target"} <= left
    assert (link_target / "data").read_text() == "keep"


def test_temporary_names_carry_a_valid_mac_and_parse_back(tmp_path):
    long_target = tmp_path / ("é" * 200)
    for kind in ("new", "old"):
        p = writer._tmp_name(long_target, kind)
        assert len(p.name.encode()) <= 255 and p.name.startswith(TMP_PREFIX)
        m = writer._TMP.fullmatch(p.name)
        assert m is not None and m["kind"] == kind and int(m["pid"]) == os.getpid()
        assert not writer._left_by_dead_run(p.name)  # this process is alive


_HOLD = """
import sys, time
from embtool.core.writer import OutputFolder
out = OutputFolder(sys.argv[1]).__enter__()
(out.path / "weights").write_bytes(b"x" * 1000)
print(out.path, flush=True)
time.sleep(600)
"""


def test_a_killed_runs_leftovers_are_swept_and_a_running_ones_are_not(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / f"m{i}")], stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        held = [Path(p.stdout.readline().strip()) for p in procs]
        assert all(h.is_dir() and h.name.startswith(TMP_PREFIX) for h in held)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        with OutputFolder(tmp_path / "next") as out:
            (out.path / "f").write_text("y")
        assert not held[0].exists()  # the killed run's folder: gone
        assert held[1].is_dir() and (held[1] / "weights").stat().st_size == 1000  # the running one's: untouched
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()
