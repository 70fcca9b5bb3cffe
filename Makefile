# dwcp-selector: the two commands people need first are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= models/selector

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

# Re-installs (and recompiles the C module) whenever the packaging or the C source changes; `make setup`
# on an up-to-date tree does nothing.
$(STAMP): pyproject.toml setup.py src/dwcp_selector/_sample.c src/dwcp_selector/_dense.c \
		src/dwcp_selector/_anchors.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,experiment,postgres,serving,train]'
	touch $(STAMP)

demo: setup
	$(BIN)/dwcp-selector demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest

test-slow: setup
	$(BIN)/pytest -m slow

bench: setup
	$(BIN)/python bench/strategies.py
	$(BIN)/python bench/amst.py
	$(BIN)/python bench/measure_memory.py
	$(BIN)/python bench/telemetry.py
	$(BIN)/python bench/inference.py --model $(MODEL)
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
