# kiln: `make demo` runs an example end to end; `make test` runs lint, type checks and the tests.
# Both set up .venv from scratch when it is missing or pyproject.toml changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck pytest clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python examples/gpt_block.py
	$(BIN)/kiln run examples/ir/mlp.kir --inputs examples/ir/mlp_inputs.npz -p canonicalize,cse,dce

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy needs the package under its own name: the repository root is `kiln` only when installed.
# Every module of the package is named, so that none escapes the check.
MODULES := $(shell find ir frontends passes backends runtime -name '*.py' | sed -e 's|/__init__\.py$$||' -e 's|\.py$$||' -e 's|/|.|g' -e 's|^|-m kiln.|')
typecheck: setup
	mkdir -p .build/typecheck && ln -sfn "$(CURDIR)" .build/typecheck/kiln
	MYPYPATH=.build/typecheck $(BIN)/mypy -p kiln -m kiln.cli -m kiln.ops $(MODULES)

pytest: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .build .mypy_cache .ruff_cache .pytest_cache .hypothesis
