# Quick start: `make demo` (whole pipeline on the sample clips) and `make test` (test suite).
PY ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	PATH="$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(BIN):$$PATH" $(BIN)/mirkit probe --show

test: install
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest

clean:
	rm -rf data/samples data/*.zarr data/embeddings models results .dvc/cache dvc.lock
