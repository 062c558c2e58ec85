# One-command set-up: every target creates .venv and installs what it needs.
# `make demo` installs lbproxy with its runtime dependencies only; `make test` adds the test
# tools, `make lint` the linters. Installs are plain (not editable) and redone when a source
# file changes, so the `lbproxy` command the end-to-end tests run is the code of this tree.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
SOURCES := pyproject.toml $(shell find l7proxy tls balancing config -name '*.py' 2>/dev/null)
RUNTIME := $(VENV)/.runtime
TESTING := $(VENV)/.testing
LINTING := $(VENV)/.linting

.PHONY: demo test lint bench venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(RUNTIME): $(PY) $(SOURCES)
	$(PIP) .
	touch $@

$(TESTING): $(PY) $(SOURCES)
	$(PIP) '.[test]'
	touch $@ $(RUNTIME)

$(LINTING): $(PY) $(SOURCES)
	$(PIP) '.[test,dev]'
	touch $@ $(TESTING) $(RUNTIME)

venv: $(TESTING)

demo: $(RUNTIME)
	$(VENV)/bin/lbproxy demo

test: $(TESTING)
	$(PY) -m pytest -q

lint: $(LINTING)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(TESTING)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
