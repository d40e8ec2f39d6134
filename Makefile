# balanced_det — set-up, tests and the demo. Everything runs inside $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo clean-venv

## setup: create/update the Python environment (idempotent; ~1 s when up to date)
setup:
	$(PYTHON) tools/setup_env.py --venv $(VENV)

## test: set up, then run the test suite
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: set up, then train and evaluate the tree-crown detector(s) on this machine's CPU
demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
