"""Data shipped with embtool: real text corpora (see corpora/README.md) for the demo, tests, benchmarks and the
built-in fidelity and calibration samples. Read through `embtool.core.corpora`."""
