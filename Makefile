# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup setup-ray setup-peers run test test-all bench bench-sweep bench-peers experiments clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Ray, the second sweep engine (hydra/launcher=ray), in an environment of its own: hydra-ray-launcher
# needs cloudpickle<3 and boto3, older than the lab's own pins; tests/test_ray.py runs the lab from it.
RAY_VENV := .venv-ray
setup-ray: $(RAY_VENV)/.installed

$(RAY_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAY_VENV)/bin/python -m pip install --quiet -e ".[ray]"
	touch $@

# The peers the lab is checked against (TransformerLens on CPU torch), in an environment of their own:
# tests/test_export.py loads a lab-export into HookedTransformer there; `make bench-peers` times
# TransformerLens's training there (benchmarks/peer_transformer_lens.py). torch's CPU build comes from
# PyTorch's CPU index (or a local wheel pip finds).
# torch first and alone, so that only it is looked up on that index; then the rest from the usual one.
# transformer_lens 3.9.0: the last release with HookedTransformer (4.0 replaced it by TransformerBridge).
PEERS_VENV := .venv-peers
PEERS_TORCH := torch==2.13.0+cpu
PEERS := $(PEERS_TORCH) transformer_lens==3.9.0 safetensors==0.8.0 numpy==2.4.6
setup-peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet --retries 2 --no-deps \
	    --extra-index-url https://download.pytorch.org/whl/cpu $(PEERS_TORCH)
	$(PEERS_VENV)/bin/python -m pip install --quiet $(PEERS)
	touch $@

# Train the default experiment (token induction, 2-layer attention-only) and write its plots.
run: $(STAMP)
	$(BIN)/lab-train $(ARGS)

# One pytest worker per core (at most 4: each holds its own JAX); a file's tests stay on one worker,
# so module fixtures are built once.
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --durations=25

# lint-imports: the layers of lab/ (ARCHITECTURE.md), in a second, before the tests
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(PYTEST)

test-all: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(PYTEST) -m ""

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(ARGS)

bench-sweep: $(STAMP)
	$(BIN)/python benchmarks/sweep_bench.py $(ARGS)

# The lab against TransformerLens (in .venv-peers, see setup-peers), whole processes in alternating rounds.
bench-peers: $(STAMP) $(PEERS_VENV)/.installed
	$(BIN)/python benchmarks/peers.py --peer-python $(PEERS_VENV)/bin/python $(ARGS)

# Reproduce the seed papers' findings (experiments/README.md): every script in experiments/ (found there,
# in the order of their ORDER constants; `python -m experiments --list`) writes experiments/out/<name>/
# (figures, runs, verdict.json); then the README's table is regenerated from the verdicts.
# ARGS=--full for the papers' scale, ARGS=--smoke to check the scripts in seconds.
experiments: $(STAMP)
	$(BIN)/python -m experiments $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
