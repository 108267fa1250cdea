"""What every bench section shares: paths, one timed process, alternation and medians, the peers' venv, the
training/held-out split and the fidelity of an output model. Sections import from here, never from each other
(except MPNet's quantization table, which is all-MiniLM's table format: tools/bench/sections/quantize.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import realmodels  # noqa: E402  (the real-model fetcher is test infrastructure: tests/realmodels.py; sections take it from here)
from embtool import api  # noqa: E402  (the public API only)

BENCH = ROOT / "tools" / "bench"  # `python tools/bench` runs its __main__.py: how a worker process is started
PEERS_SCRIPT = BENCH / "peers.py"  # run with the peers' venv, never with embtool's
WORK = ROOT / ".bench"
PEERS = Path(os.environ.get("EMBTOOL_PEERS_VENV", Path.home() / ".cache" / "embtool-peers-venv"))
PY = sys.executable
THREADS = "2"
RUNS = int(os.environ.get("EMBTOOL_BENCH_RUNS", "3"))
# onnxruntime (+ onnx_ir, which its quantizers import) runs onnxruntime's own quantizers as a peer.
PEER_PACKAGES = ["sentence-transformers", "transformers", "faiss-cpu", "onnx", "onnxruntime", "onnx_ir"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list, env: dict | None = None) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS MB) of one process."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *map(str, cmd)], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-2000:]}")
    rss = int(r.stderr.strip().splitlines()[-1]) / 1024
    return r.stdout, wall, rss


def embtool(*args) -> tuple[dict, float, float]:
    """(the --json summary, wall, peak RSS) of one `embtool` process."""
    out, wall, rss = timed([PY, "-m", "embtool", *args])
    lines = out.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), wall, rss


def worker(name: str, *args) -> list:
    """The command of a measurement that must run in a fresh embtool process (a section's WORKERS[name]), for `timed`."""
    return [PY, BENCH, "--worker", name, *args]


def peers_python() -> str:
    """The peers' venv, created (or completed, when an earlier creation was interrupted) on first use; a stamp
    file names what was installed, so a change of PEER_PACKAGES installs the difference."""
    py = PEERS / "bin" / "python"
    stamp = PEERS / ".embtool-peers"
    want = "torch==2.13.0 " + " ".join(PEER_PACKAGES)
    if not py.exists() or not stamp.exists() or stamp.read_text() != want:
        log(f"preparing the peers venv {PEERS}: {want}")
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        stamp.write_text(want)
    return str(py)


def peer_cmd(*args) -> list:
    """The command of one peer measurement (tools/bench/peers.py in the peers' venv), for `timed`."""
    return [peers_python(), PEERS_SCRIPT, *args]


def peer(*args) -> tuple[dict, float, float]:
    """(the peer's JSON line, wall, peak RSS) of one peer measurement, offline."""
    out, wall, rss = timed(peer_cmd(*args), env={"HF_HUB_OFFLINE": "1"})
    return json.loads(out.strip().splitlines()[-1]), wall, rss


def alternate(**measures) -> dict[str, list[dict]]:
    """Run each measurement RUNS times, interleaved (A B C A B C ...), so that the drift of a shared machine
    hits every contender alike. Each measure returns (stdout JSON, wall, RSS) as `timed` does; the result is,
    per measure, the list of its JSON objects with `wall_s` and `rss_mb` added."""
    out: dict[str, list[dict]] = {k: [] for k in measures}
    for _ in range(RUNS):
        for k, f in measures.items():
            stdout, wall, rss = f()
            lines = stdout.strip().splitlines()
            out[k].append({**(json.loads(lines[-1]) if lines else {}), "wall_s": wall, "rss_mb": rss})
    return out


def median_of(runs: list[dict]) -> dict:
    """Per numeric key, the median over runs (other keys from the first run)."""
    m = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            m[k] = float(np.median([r[k] for r in runs]))
    return m


def split(lang: str) -> tuple[list[str], list[str]]:
    """(training split, held-out split) of a shipped corpus."""
    return api.sample_corpus(lang, "train"), api.sample_corpus(lang, "heldout")


def write_lines(name: str, lines: list[str]) -> Path:
    """`lines` as .bench/NAME, one a line."""
    p = WORK / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def fidelity(ref_model: Path, model: Path, held: Path, prefix: str = "") -> dict:
    """`model` against `ref_model` on the held-out lines (at most 1,000): cosines and recall@10."""
    f = api.compare_models(ref_model, model, held, prefix=prefix, threads=int(THREADS))
    return {**f, "recall@10": f["recall_at_10"]}


def model_bytes(folder: Path) -> int:
    """The bytes of a model folder's weights and graph (`model.*`)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model."))
