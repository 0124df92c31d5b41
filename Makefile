# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest bench clean

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
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict src

# The suite runs on 2 processes; the test that restarts the PostgreSQL server runs alone
# afterwards (it would break the tests running beside it). Exit code 5 means that no
# test was selected (no PostgreSQL configured), which is fine for that second run.
pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 -m "not pgrestart" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m pgrestart $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: lint typecheck pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/steps.py
	$(BIN)/python bench/postgres.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
