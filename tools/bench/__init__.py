"""`make bench`: every benchmark, embtool and its peers measured in the same run; writes docs/benchmarks.md and the
plots in docs/.

    python -m tools.bench                  # everything (about 100 minutes on 2 cores); `python tools/bench` too
    python -m tools.bench --only quantize  # sections: embed, search, trim, quantize, mixed, factorize, init, mpnet, shrink, ray, fused
    python -m tools.bench --report-only    # rewrite docs/benchmarks.md and the plots from .bench/results.json

Every measurement runs in its own process under /usr/bin/time (wall time and peak RSS). Peers run with a
separate venv (~/.cache/embtool-peers-venv: torch 2.13.0 CPU, sentence-transformers, faiss-cpu, onnx_ir),
created here if missing; they are never embtool dependencies. Results: .bench/results.json.

The package: common.py (timing, alternation, the peers' venv, fidelity), peers.py (the peers' side, run in their
venv), sections/ (one module a section: its measurement, its table, its plot), report.py (the header, the order of
the blocks, the blocks kept for sections not measured, the link to the figures measured by hand), __main__.py
(the command line). The bench reaches embtool through its public API only (tests/test_architecture.py)."""
