# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest docs bench bench-smoke bench-micro clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/stepstone demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench examples docs/generate.py
	$(BIN)/ruff format --check src tests bench examples docs/generate.py

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict src

# The test that restarts the PostgreSQL server runs alone first (it would break tests
# running beside it; exit code 5 means none was selected, fine without PostgreSQL), then
# the whole suite on 2 processes.
pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m pgrestart || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -n 2 -m "not pgrestart and not model_long" $(PYTEST_ARGS)

test: lint typecheck pytest

# The generated blocks of docs/architecture.md (store operations, tables, modules and their
# layers, record types), rebuilt from the code; tests/unit/test_architecture_doc.py fails
# when they are stale.
docs: $(VENV)/.installed-dev
	$(BIN)/python docs/generate.py

# Side by side with the peers (issue 6): their own virtual environment, bench/.venv-peers,
# so that none of them ever becomes a dependency of stepstone. `make bench` is the full run
# (about 20 minutes), `make bench-smoke` the same matrix at tiny sizes; BENCH_ARGS passes
# options on, e.g. BENCH_ARGS="--systems stepstone,floors --scenarios throughput".
PEERS := bench/.venv-peers
BENCH_ARGS ?=

$(PEERS)/.installed: pyproject.toml bench/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -e . -r bench/requirements-peers.txt
	touch $@

bench: $(PEERS)/.installed
	$(PEERS)/bin/python bench/compare.py $(BENCH_ARGS)

bench-smoke: $(PEERS)/.installed
	$(PEERS)/bin/python bench/compare.py --quick $(BENCH_ARGS)

# stepstone alone: the standalone scripts described in bench/README.md.
bench-micro: $(VENV)/.installed-dev
	$(BIN)/python bench/steps.py
	$(BIN)/python bench/postgres.py
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/flow.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
