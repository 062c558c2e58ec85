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

.PHONY: demo test lint bench venv tools clean

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

# The optional tools some end-to-end tests use (Debian, as root); the tests skip without them.
TOOLS := curl openssl socat haproxy nginx wrk keepalived iproute2 chromium systemd
tools:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		timeout 600 apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq $(TOOLS) >/dev/null; \
	else \
		echo "make tools: needs root and apt-get; the tests that need $(TOOLS) will skip"; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
