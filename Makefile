# Roundhouse: the commands the README gives. Each component has its own Python environment under
# .venvs/ (the families need different torch / onnxruntime / numpy), so nothing shares one
# dependency set.

PYTHON ?= python3
VENVS  := .venvs
GW_PY  := $(VENVS)/gateway/bin/python
CAP_PY := $(VENVS)/caption-svc/bin/python
# The caption environment's torch. Locally any CUDA 12/13 build runs on CPU too; the Dockerfile pins its own.
CAPTION_TORCH ?= torch==2.14.1 torchvision==0.29.1
TINY    := build/tiny-models
CATALOG ?= $(TINY)/catalog.yaml
PIP     := -m pip install --quiet --disable-pip-version-check

.PHONY: help venvs tiny-models dev test test-fast bench clean

help:
	@echo "make dev          start gateway (127.0.0.1:8080) + caption service on CPU, caption a sample photo"
	@echo "make test         install every environment and run all test tiers (unit, app, proc, model)"
	@echo "make tiny-models  build tiny local models and $(TINY)/catalog.yaml (no downloads)"
	@echo "make bench        run the benchmarks in bench/"
	@echo "make clean        remove environments and build outputs"

$(VENVS)/gateway/.installed: modelhost/pyproject.toml gateway/pyproject.toml
	$(PYTHON) -m venv $(VENVS)/gateway
	$(GW_PY) $(PIP) -e modelhost -e 'gateway[test]'
	touch $@

$(VENVS)/caption-svc/.installed: modelhost/pyproject.toml caption-svc/pyproject.toml
	$(PYTHON) -m venv $(VENVS)/caption-svc
	$(CAP_PY) $(PIP) $(CAPTION_TORCH)
	$(CAP_PY) $(PIP) -e modelhost -e caption-svc pytest pytest-asyncio httpx
	touch $@

venvs: $(VENVS)/gateway/.installed $(VENVS)/caption-svc/.installed

$(TINY)/catalog.yaml: tools/make_tiny_models.py $(VENVS)/caption-svc/.installed
	$(CAP_PY) tools/make_tiny_models.py $(TINY)

tiny-models: $(TINY)/catalog.yaml

dev: venvs tiny-models
	CATALOG=$(CATALOG) GW_PY=$(GW_PY) CAP_PY=$(CAP_PY) scripts/dev.sh

test: venvs tiny-models
	GW_PY=$(GW_PY) CAP_PY=$(CAP_PY) scripts/run_tests.sh

bench: venvs tiny-models
	$(GW_PY) bench/gateway_overhead.py
	$(GW_PY) bench/batching.py

clean:
	rm -rf $(VENVS) build
