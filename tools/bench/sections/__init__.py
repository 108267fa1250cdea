"""The bench's sections, one module each, owning its measurement and its part of docs/benchmarks.md:

- NAME: the `--only` name; HEADING: how its block of docs/benchmarks.md starts (a section not in
  .bench/results.json keeps its block from the existing file);
- measure() -> {results key: value}: runs the measurement (RUNS alternating runs where a peer is compared);
- table(R) -> the Markdown lines of its block, [] when R lacks its results;
- plot(R, plt, docs) -> the names of the PNGs it wrote into docs/ (optional);
- WORKERS {name: function}: measurements that must run in a fresh embtool process (optional; started by
  common.worker, run by `python tools/bench --worker NAME ARGS`)."""

from . import embed, factorize, fused, init, mixed, mpnet, quantize, ray, search, shrink, trim

# the order `make bench` measures in (also `--only`'s choices and the report header's "measured:" list)
RUN_ORDER = (embed, search, trim, quantize, mixed, factorize, init, mpnet, shrink, ray, fused)
# the order of the blocks in docs/benchmarks.md
REPORT_ORDER = (embed, search, trim, quantize, mixed, factorize, init, mpnet, shrink, fused, ray)
SECTIONS = {s.NAME: s for s in RUN_ORDER}
WORKERS = {name: f for s in RUN_ORDER for name, f in getattr(s, "WORKERS", {}).items()}
