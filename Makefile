# `make run` trains the default CartPole agent; `make test` runs the fast test suite and
# `make test-slow` the long runs (learning to a score, Ray, SB3, the env matrix): CI runs both,
# then `make docs`, which builds the documentation site into site/ (strict: a broken link fails).
# Each creates .venv if needed and installs torch from constraints.txt first, so pip
# takes the CPU build instead of resolving a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow lint format install dev docs clean

# `make run` needs only what training CartPole needs; the test targets add the dev extra
# (Atari, MinAtar, Box2D, Ray, SB3, video, lint), once, marked by $(VENV)/.dev.
$(BIN)/dqnkit: pyproject.toml constraints.txt dqnkit/replay/_sumtree.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(BIN)/dqnkit

$(VENV)/.dev: $(BIN)/dqnkit
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(VENV)/.dev

# The docs extra (MkDocs, Material, mkdocstrings), once, marked by $(VENV)/.docs.
$(VENV)/.docs: $(BIN)/dqnkit
	$(BIN)/pip install --quiet -c constraints.txt -e ".[docs]"
	touch $(VENV)/.docs

install: $(BIN)/dqnkit

dev: $(VENV)/.dev

run: install
	$(BIN)/dqnkit train --preset cartpole

test: dev
	$(BIN)/ruff check dqnkit tests examples
	$(BIN)/ruff format --check dqnkit tests examples
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-slow: dev
	$(BIN)/python -m pytest -q -m slow

docs: $(VENV)/.docs
	$(BIN)/mkdocs build --strict --site-dir site

lint: dev
	$(BIN)/ruff check dqnkit tests examples
	$(BIN)/ruff format --check dqnkit tests examples

format: dev
	$(BIN)/ruff format dqnkit tests examples

clean:
	rm -rf $(VENV) runs site
