# One command for everything CI checks: `make check` (test tools, lint, types, tests).
PY ?= .venv/bin/python

.PHONY: install test-tools check lint types test test-fast proto dev

# What `heatmap dev` needs (venv with the runtime package, Kafka jars).
install:
	bash deploy/local/install.sh

# install + what only the tests need (dev extra, S3 server, validators, Chromium); cached.
test-tools:
	bash deploy/local/install-test-tools.sh

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest

test-fast:
	$(PY) -m pytest tests/unit

# The tools first, in order even under `make -j`: lint and the tests need them.
check: test-tools
	$(MAKE) --no-print-directory lint types test

proto:
	$(PY) -m schemas.codegen

dev:
	.venv/bin/heatmap dev
