# Everything installs into ./.venv from pyproject.toml; nothing is installed by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
E2E_INSTALLED := $(VENV)/.installed-e2e

.PHONY: test lint typecheck pytest demo bench e2e clean

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	@touch $@

test: lint typecheck pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

pytest: $(INSTALLED)
	$(BIN)/pytest

$(E2E_INSTALLED): pyproject.toml $(INSTALLED)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench,e2e]'
	@touch $@

# A real deployment: PostgreSQL, api-server, scheduler, dag-processor and triggerer as separate processes.
e2e: $(E2E_INSTALLED)
	$(BIN)/pytest -m e2e tests/e2e -p no:cacheprovider -s

demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

bench: $(INSTALLED)
	$(BIN)/python benchmarks/run.py --output benchmarks/RESULTS.md --json benchmarks/results.json

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
