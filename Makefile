# balanced_det — set-up, tests and the demo. Everything runs inside $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo compare figures clean-venv

## setup: create/update the Python environment (idempotent; ~1 s when up to date)
setup:
	$(PYTHON) tools/setup_env.py --venv $(VENV)

## test: set up, then run the test suite
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: set up, then train and evaluate the tree-crown detector(s) on this machine's CPU
demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

## compare: set up, then the method comparison of the README's Results (tree and synthetic
## data, 3 seeds, 2 runs at a time; about 2.5 hours on a 2-core CPU: trees 89 min, synthetic
## box methods 40 min + Mask R-CNN variants), then its figures.
## Finished runs in output/compare/ are reused, so an interrupted `make compare` goes on.
COMPARE_JOBS ?= 2
compare: setup
	$(PY) tools/compare.py --suite trees --seeds 0 1 2 --max-iter 100 --jobs $(COMPARE_JOBS)
	$(PY) tools/compare.py --suite synthetic --seeds 0 1 2 --max-iter 100 --jobs $(COMPARE_JOBS)
	$(MAKE) figures

## figures: the analysis figures (docs/figures/*.png) from the runs of `make compare`
figures: setup
	$(PY) tools/analysis.py all --suite trees
	$(PY) tools/analysis.py all --suite synthetic

clean-venv:
	rm -rf $(VENV)
