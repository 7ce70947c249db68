# The two commands that matter: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit integration cluster-binaries crd clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,worker]'
	touch $@

demo: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: lint typecheck unit integration

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit -q

cluster-binaries: $(BIN)/.installed
	$(BIN)/python -m e2e.cluster build

integration: cluster-binaries
	$(BIN)/pytest tests/integration -q

crd: $(BIN)/.installed
	$(BIN)/paraserve crd > crds/inferencedeployments.paraserve.dev.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
