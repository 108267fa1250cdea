"""embed --ray with 1 and 2 workers against one embtool process, same texts, alternating; the per-worker peak RSS
read from /proc while Ray runs; the table."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..common import PY, RUNS, THREADS, WORK, alternate, log, median_of, realmodels, split, timed, write_lines

NAME = "ray"
HEADING = "## embed on Ray"


def _ray_peak_rss(stop, peaks: dict) -> None:
    """Poll /proc for Ray's embedding actors (`ray::MapWorker...`, or `ray::_EmbedActor...` once embtool's Ray module
    runs its own actors) and keep each one's peak RSS (VmHWM, MB)."""
    while not stop.is_set():
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
                if not cmd.startswith(b"ray::") or not (b"MapWorker" in cmd or cmd.startswith(b"ray::_EmbedActor")):
                    continue
                hwm = [ln for ln in (d / "status").read_text().splitlines() if ln.startswith("VmHWM:")]
            except OSError:
                continue
            if hwm:
                peaks[d.name] = max(peaks.get(d.name, 0.0), int(hwm[0].split()[1]) / 1024)
        stop.wait(0.2)


def measure() -> dict:
    minilm = realmodels.minilm()
    train, _ = split("en")
    texts = write_lines("ray-en-2000.txt", train[:2000])
    peaks: dict[str, list[float]] = {"ray1": [], "ray2": []}

    def ray_run(workers: int):
        seen: dict = {}
        stop = threading.Event()
        t = threading.Thread(target=_ray_peak_rss, args=(stop, seen), daemon=True)
        t.start()
        try:
            r = timed([PY, "-m", "embtool", "embed", minilm, "-i", texts, "--ray", "--workers", workers, "--threads",
                       str(int(THREADS) // workers), "-o", WORK / f"ray-{workers}", "--force", "--json", "--quiet"])
        finally:
            stop.set()
            t.join()
        peaks[f"ray{workers}"].append(sorted(seen.values()))
        return r

    runs = alternate(
        single=lambda: timed([PY, "-m", "embtool", "embed", minilm, "-i", texts, "--threads", THREADS,
                              "-o", WORK / "ray-single.npy", "--force", "--json", "--quiet"]),
        ray1=lambda: ray_run(1), ray2=lambda: ray_run(2))
    rows = []
    for k, label in (("single", "one process (`embtool embed`)"), ("ray1", "`embed --ray --workers 1`"),
                     ("ray2", "`embed --ray --workers 2`")):
        m = median_of(runs[k])
        workers = [max(w) for w in zip(*peaks[k])] if peaks.get(k) and all(peaks[k]) else []
        rows.append({"setting": label, "wall_s": m["wall_s"], "texts_per_s": 2000 / m["wall_s"], "driver_rss_mb": m["rss_mb"],
                     "worker_rss_mb": [float(np.median([run[i] for run in peaks[k] if len(run) > i])) for i in range(len(workers))]
                     if workers else []})
        log(f"ray {label}: {rows[-1]['texts_per_s']:.1f} texts/s (whole process), workers {rows[-1]['worker_rss_mb']}")
    return {"ray": {"rows": rows, "texts": 2000, "runs": RUNS}}


def table(R: dict) -> list[str]:
    if "ray" not in R:
        return []
    r = R["ray"]
    L = ["## embed on Ray (this 2-core machine)", "",
         f"{r['texts']:,} English paragraphs with all-MiniLM-L6-v2, whole processes (Ray start-up included), {r['runs']} runs each "
         "alternating, medians. `--ray` starts a local Ray; each worker is one actor holding one model with 2/workers "
         "onnxruntime threads. On two cores Ray cannot be faster than one process: the point is the recipe and that the "
         "output is the same (tests/test_ray.py); the figures say what Ray costs.", "",
         "| setting | wall | texts/s | driver peak RSS | peak RSS per worker |", "|---|---|---|---|---|"]
    for x in r["rows"]:
        w = ", ".join(f"{v:.0f} MB" for v in x["worker_rss_mb"]) or "-"
        L.append(f"| {x['setting']} | {x['wall_s']:.1f} s | {x['texts_per_s']:.1f} | {x['driver_rss_mb']:.0f} MB | {w} |")
    return L + [""]
