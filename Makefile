# `make demo` and `make test` are the two entry points (README.md). Each first sets up .venv: the pinned
# packages of requirements.txt, then ackd_fast with its C++/CUDA extension, rebuilt when csrc/ changes.
# On a machine without a GPU, `make demo` builds the extension's CPU kernels only (about 1.3 minutes instead of 2.5);
# its own stamp records that, so a later `make test` still builds the CUDA kernels.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ackd_fast-installed
STAMP_CPU := $(VENV)/.ackd_fast-installed-cpu-only
BUILD_LOG := $(VENV)/build.log
BUILD_INPUTS := setup.py pyproject.toml requirements.txt $(shell find csrc -type f)
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# The demo reuses a full build when there is one (or a GPU wants one), else takes the CPU-only build.
DEMO_STAMP := $(if $(HAVE_GPU)$(wildcard $(STAMP)),$(STAMP),$(STAMP_CPU))

.PHONY: install install-cpu demo test lint clean

install: $(STAMP)

# What the demo and the CPU benchmark suite (benchmarks/cpu_suite.sh) need: the full build when there is one, else
# the CPU-only build.
install-cpu: $(DEMO_STAMP)

# $(1): extra environment for setup.py
define build_extension
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(1) $(BIN)/pip install -v --no-build-isolation --no-deps -e . > $(BUILD_LOG) 2>&1 || { tail -n 60 $(BUILD_LOG); exit 1; }
	@sed -nE -e '/ackd_fast: building/{s/^ *//p;q}' $(BUILD_LOG)
	@sed -nE -e 's/^ *(\[[0-9]+\/[0-9]+\]) ([^ ]+) .* -c ([^ ]+) -o .*/  \1 compiled \3 with \2/p' \
	         -e 's/^ *([^ ]*g\+\+) .* -shared .* -o ([^ ]+).*/  linked \2 with \1/p' $(BUILD_LOG)
	@echo "  (full build log: $(BUILD_LOG))"
endef

$(STAMP): $(BUILD_INPUTS)
	$(call build_extension,)
	rm -f $(STAMP_CPU)
	touch $@

$(STAMP_CPU): $(BUILD_INPUTS)
	$(call build_extension,ACKD_FAST_CPU_ONLY=1)
	rm -f $(STAMP)
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/ackd-fast demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf build ackd_fast/_C*.so *.egg-info
