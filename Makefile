# The README's two set-up commands are `make demo` and `make test`; both install what they need first.
# `make test` is exactly what CI (.ci/run) runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Offline by design: W&B writes files locally, Hugging Face never reaches the hub, DeepSpeed's JIT ops are
# cached inside the clone.
export WANDB_MODE := offline
export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions

.PHONY: install browser test test-slow demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# rest-serve's browser test drives Debian's chromium (tests/streaming/test_serve_browser.py); nothing to do when
# it is there. Playwright comes with the dev extra and downloads no browser.
browser:
	@if command -v chromium >/dev/null; then echo "browser: $$(chromium --version 2>/dev/null)"; \
	else DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
	  || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; fi

test: install
	$(PY) -m pytest

# The checks marked slow (minutes each: the SynthTalk learning test, DeepSpeed on 2 SLURM nodes), by hand.
test-slow: install
	$(PY) -m pytest -m slow

demo: install
	$(VENV)/bin/rest-demo

lint: install
	$(VENV)/bin/ruff check rest_lightning data_prep eval tests benchmarks

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
