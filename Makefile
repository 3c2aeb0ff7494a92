# Everything installs into virtual environments from pyproject.toml (and, for the lowest supported Airflow,
# constraints/); nothing is installed by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The unit suite on the lowest Airflow the project claims (pyproject: apache-airflow>=3.2), pinned by the
# constraints file its release needs today.
FLOOR := 3.2
FLOOR_VENV := .venv-airflow-$(FLOOR)
FLOOR_INSTALLED := $(FLOOR_VENV)/.installed
# make e2e runs the deployments on the wheel users install, not on this checkout: a file missing from the
# wheel, or a broken entry point, shows there.
E2E_VENV := .venv-e2e
E2E_INSTALLED := $(E2E_VENV)/.installed

.PHONY: test lint typecheck pytest test-floor wheel chromium demo bench e2e clean

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

$(FLOOR_INSTALLED): pyproject.toml constraints/airflow-$(FLOOR).txt
	@test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c constraints/airflow-$(FLOOR).txt -e '.[bench]'
	@touch $@

# The same unit suite on Airflow $(FLOOR).x (make test runs it on the newest Airflow).
test-floor: $(FLOOR_INSTALLED)
	$(FLOOR_VENV)/bin/python -c "import airflow; assert airflow.__version__.startswith('$(FLOOR).'), airflow.__version__"
	$(FLOOR_VENV)/bin/pytest -p no:cacheprovider

# The wheel users install (pip builds it with hatchling, as for a release).
wheel: $(INSTALLED)
	rm -rf dist
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir dist .

# The e2e environment: the wheel's [e2e] dependencies, installed once per pyproject change.
$(E2E_INSTALLED): pyproject.toml | wheel
	@test -x $(E2E_VENV)/bin/python || $(PYTHON) -m venv $(E2E_VENV)
	$(E2E_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "$$(ls dist/*.whl)[e2e]"
	@touch $@

# The browser test's Chromium is Debian's (a browser download of Playwright's own cannot run offline).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Real deployments: LocalExecutor, and CeleryExecutor with two workers (PostgreSQL, Redis, api-server,
# scheduler, dag-processor, triggerer as separate processes), running the wheel just built from this tree.
e2e: $(E2E_INSTALLED) wheel chromium
	$(E2E_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps dist/*.whl
	$(E2E_VENV)/bin/pytest -m e2e tests/e2e -p no:cacheprovider -s --timeout 900

demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

bench: $(INSTALLED)
	$(BIN)/python benchmarks/run.py --output benchmarks/RESULTS.md --json benchmarks/results.json

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(E2E_VENV) dist demo-output e2e-output .pytest_cache .mypy_cache .ruff_cache
