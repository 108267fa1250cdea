"""The bench's command line (see tools/bench/__init__.py): `python -m tools.bench [--only SECTION] [--report-only]`,
or `python tools/bench ...`; `--worker NAME ARGS` runs one section's measurement that needs a fresh process."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # `python tools/bench`: sys.path[0] is this folder, whose module names must not shadow others
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402

from tools.bench import report  # noqa: E402
from tools.bench.common import WORK, log  # noqa: E402
from tools.bench.sections import SECTIONS, WORKERS  # noqa: E402


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        if sys.argv[2] not in WORKERS:
            raise SystemExit(f"unknown worker {sys.argv[2]}")
        WORKERS[sys.argv[2]](*sys.argv[3:])
        return
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description="Measure embtool and its peers; write docs/benchmarks.md.")
    ap.add_argument("--only", action="append", choices=list(SECTIONS), help="measure this section only (repeatable)")
    ap.add_argument("--report-only", action="store_true", help="rewrite docs/ from .bench/results.json")
    a = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    report.DOCS.mkdir(exist_ok=True)
    res_file = WORK / "results.json"
    results = json.loads(res_file.read_text()) if res_file.exists() else {}
    for name in [] if a.report_only else (a.only or list(SECTIONS)):
        log(f"section {name}")
        results.update(SECTIONS[name].measure())
        results.setdefault("_runs", {})[name] = {"date": datetime.date.today().isoformat(),
                                                 "command": "make bench" if not a.only else f"{report.ONLY} {name}"}
        res_file.write_text(json.dumps(results, indent=1))
    report.plots(results)
    report.write(results, "make bench")
    log("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
