# billing — two commands set everything up on a fresh machine:
#   make run    install into .venv if needed, then serve (embedded store, fake processor)
#   make test   install if needed, then lint, type-check, contract checks and all tests

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install run test lint typecheck unit bench clean fmt

include mk/clients.mk
include mk/proto.mk

# Re-install whenever a dependency list changes. The embedded extra (GPL-2.0 SecantusDB)
# is installed for local runs and tests only; it is never imported by billing_service.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e clients/python -e '.[dev,embedded,bench,otel]'
	@touch $@

install: $(VENV)/.installed $(BUF)

run: install
	$(PY) -m billing_service run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# tests/clients runs each generated client against a real server; the variable makes a
# missing client toolchain fail there instead of skipping.
test: install lint typecheck proto-check clients-install
	BILLING_CLIENT_TOOLCHAINS=required $(VENV)/bin/pytest -q -p no:cacheprovider

# Extra arguments, e.g. BENCH_ARGS="--only applied,history --baseline-root /tmp/base" (docs/PERFORMANCE.md).
BENCH_ARGS ?=

bench: install
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools var .mypy_cache .ruff_cache .pytest_cache $(TS_DIR)/node_modules $(TS_DIR)/dist
