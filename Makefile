# `make demo` and `make test` are the two entry points (README.md). Each first sets up .venv: the pinned
# packages of requirements.txt, then ackd_fast with its C++/CUDA extension, rebuilt when csrc/ changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ackd_fast-installed
BUILD_INPUTS := setup.py pyproject.toml requirements.txt $(shell find csrc -type f)

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: install
	$(BIN)/ackd-fast demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf build ackd_fast/_C*.so *.egg-info
