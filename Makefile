# One command for everything CI checks: `make check` (lint, types, tests).
PY ?= .venv/bin/python

.PHONY: install check lint types test test-fast proto dev

install:
	bash deploy/local/install.sh

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest

test-fast:
	$(PY) -m pytest tests/unit

check: lint types test

proto:
	$(PY) -m schemas.codegen

dev:
	.venv/bin/heatmap dev
