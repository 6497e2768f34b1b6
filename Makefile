# compressor: every target builds its own virtualenv; nothing on the machine is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
PYTEST_WORKERS ?= 2

.PHONY: setup setup-test demo test zoo data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime install: the CLI prunes without torch.
$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

# Test install: torch 2.13.0 (CPU build, local wheel) for the training side and model exports.
$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[train,dev]"
	touch $@ $(VENV)/.stamp-base

setup: $(VENV)/.stamp-base
setup-test: $(VENV)/.stamp-test

demo: setup
	$(BIN)/python tools/demo.py

test: setup-test
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache out
