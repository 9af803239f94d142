# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both bootstrap uv (from PyPI, with pip) when it is missing and install exactly what uv.lock pins.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")

.PHONY: install test lint demo bench

install:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --all-extras --python $(PYTHON)

lint: install
	$(UV) run --frozen ruff check relay tests functions dags benchmarks
	$(UV) run --frozen mypy

test: lint
	$(UV) run --frozen pytest

demo: install
	$(UV) run --frozen python -m relay.demo

bench: install
	$(UV) run --frozen python -m benchmarks
