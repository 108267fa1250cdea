# embtool: the two commands of the quick start are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench docs fuzz clean models

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/python tools/realmodels.py

test: $(STAMP) models
	$(BIN)/python -m pytest -q -p no:cacheprovider

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
