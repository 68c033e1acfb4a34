# Quick start: `make demo` trains on the shared alpaca set, `make test` runs the tests.
# Each target builds its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
SHARED ?= ../shared
export TRANSFERKIT_WEIGHTS_DIR ?= $(abspath $(SHARED)/weights)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/transferkit train $(SHARED)/datasets/alpaca --out runs/alpaca-demo --overwrite

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest
