# Two commands: `make run` serves, `make test` checks. Both install what they need first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
TOOLS := .tools
# Use a Poetry 2 already on PATH; otherwise install one into .tools/ (no sudo, no system pip).
POETRY ?= $(shell poetry --version 2>/dev/null | grep -q 'version 2' && command -v poetry || echo $(TOOLS)/poetry/bin/poetry)
VENV := .venv
BIN := $(VENV)/bin
MODEL := resources/resnet50.onnx
INT8_MODEL := resources/resnet50.int8.onnx
# The Dockerfile passes "--only main --compile": the image needs no test tools.
POETRY_INSTALL_FLAGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: help install run test lint typecheck pytest quantize bench clean

help:
	@echo "make run       install, build the models, serve on http://$(HOST):$(PORT)"
	@echo "make test      install, build the models, then ruff, mypy and pytest"
	@echo "make install   install dependencies (Poetry, .venv) and build both models"
	@echo "make quantize  build the int8 model ($(INT8_MODEL)) alone"
	@echo "make bench     benchmark the service against raw ONNX Runtime and a naive server"
	@echo "make lint | typecheck | pytest   one part of make test; make clean removes .venv and caches"

install: $(VENV)/.installed $(MODEL) $(INT8_MODEL)

$(TOOLS)/poetry/bin/poetry:
	@$(PYTHON) -m venv $(TOOLS)/poetry || { echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(TOOLS)/poetry/bin/pip install --quiet --disable-pip-version-check 'poetry>=2,<3'

$(VENV)/.installed: pyproject.toml poetry.lock | $(POETRY)
	$(POETRY) install --no-interaction $(POETRY_INSTALL_FLAGS)
	@touch $@

$(MODEL): | $(VENV)/.installed
	$(BIN)/cross-pictures fetch-model --output $@

# int8 is what the service serves by default (PRECISION); it is quantized from the fp32 model.
$(INT8_MODEL): $(MODEL)
	$(BIN)/cross-pictures quantize --output $@

quantize: $(INT8_MODEL)

run: install
	$(BIN)/cross-pictures serve

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

# The real-model tests must run here, not skip: make builds the model first.
pytest: install
	CROSS_PICTURES_REQUIRE_MODEL=1 $(BIN)/pytest

test: install lint typecheck pytest

bench: install
	bench/run.sh

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
