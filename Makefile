# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-all bench bench-sweep clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Train the default experiment (token induction, 2-layer attention-only) and write its plots.
run: $(STAMP)
	$(BIN)/lab-train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(ARGS)

bench-sweep: $(STAMP)
	$(BIN)/python benchmarks/sweep_bench.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
