# `make demo` and `make test` are the two entry points (README.md). Each first sets up .venv: the pinned
# packages of requirements.txt, then ackd_fast with its C++/CUDA extension, rebuilt when csrc/ changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ackd_fast-installed
BUILD_LOG := $(VENV)/build.log
BUILD_INPUTS := setup.py pyproject.toml requirements.txt $(shell find csrc -type f)

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -v --no-build-isolation --no-deps -e . > $(BUILD_LOG) 2>&1 || { tail -n 60 $(BUILD_LOG); exit 1; }
	@sed -nE -e '/ackd_fast: building/{s/^ *//p;q}' $(BUILD_LOG)
	@sed -nE -e 's/^ *(\[[0-9]+\/[0-9]+\]) ([^ ]+) .* -c ([^ ]+) -o .*/  \1 compiled \3 with \2/p' \
	         -e 's/^ *([^ ]*g\+\+) .* -shared .* -o ([^ ]+).*/  linked \2 with \1/p' $(BUILD_LOG)
	@echo "  (full build log: $(BUILD_LOG))"
	touch $@

demo: install
	$(BIN)/ackd-fast demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf build ackd_fast/_C*.so *.egg-info
