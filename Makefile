# `make run` trains the default CartPole agent; `make test` runs the test suite.
# Each creates .venv if needed and installs torch from constraints.txt first, so pip
# takes the CPU build instead of resolving a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install clean

$(BIN)/dqnkit: pyproject.toml constraints.txt dqnkit/replay/_sumtree.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(BIN)/dqnkit

install: $(BIN)/dqnkit

run: install
	$(BIN)/dqnkit train --preset cartpole

test: install
	$(BIN)/ruff check dqnkit tests examples
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check dqnkit tests examples
	$(BIN)/ruff format --check dqnkit tests examples

clean:
	rm -rf $(VENV) runs
