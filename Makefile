# balanced_det — set-up, tests and the demo. Everything runs inside $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.PHONY: help setup test demo compare compare-quick compare-demo-pair convergence compare-converged compare-new-methods compare-lr lr-sweep-table diagnose-retinanet evidence figures \
	clean-venv

## setup: create/update the Python environment (idempotent; ~1 s when up to date)
setup:
	$(PYTHON) tools/setup_env.py --venv $(VENV)

## test: set up, then run the test suite
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: set up, then train and evaluate FCOS and DW-FCOS on the synthetic shapes on this
## machine's CPU (600 iterations, the converged schedule), and quote the recorded 3-seed
## comparison of the pair (docs/results/runs/synthetic-conv600/, `make compare-converged SUITE=synthetic`)
demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

## compare: set up, then the method comparison of the README's Results (tree and synthetic
## data, 3 seeds, 2 runs at a time, each run evaluated at 10 points of its schedule on the
## trees, 5 on synthetic, where one evaluation of the 200 validation images takes about 40 s
## on 2 cores), then its figures. Tables: mean ± std per method, paired ΔAP to the family baseline with its 95 %
## confidence interval and the reading better / worse / no difference shown.
## Finished runs in output/compare/ are reused, so an interrupted `make compare` goes on.
COMPARE_JOBS ?= 2
compare: setup
	$(PY) tools/compare.py --suite trees --seeds 0 1 2 --max-iter 100 --jobs $(COMPARE_JOBS)
	$(PY) tools/compare.py --suite synthetic --seeds 0 1 2 --max-iter 100 --eval-points 5 \
		--jobs $(COMPARE_JOBS)
	$(MAKE) figures

## compare-quick: a short check of the comparison pipeline (6.7 minutes on 2 cores with the
## environment set up): trees,
## Faster R-CNN vs Libra Faster R-CNN, seeds 0 and 1, 60 iterations, 5 evaluations per run.
## Two seeds give ΔAP without a reading (3 are needed); output/compare/quick/.
compare-quick: setup
	$(PY) tools/compare.py --suite trees --only faster_rcnn libra_faster_rcnn --seeds 0 1 \
		--max-iter 60 --eval-points 5 --jobs 2 --output output/compare/quick

## compare-demo-pair: FCOS vs DW-FCOS on the trees at 300 iterations, where FCOS first flattens
## (3 seeds, 3 evaluations each; 6 runs of about 9 minutes each, 2 at a time), into
## output/compare/trees-demo/. The committed runs (docs/results/runs/trees-demo/) came from
## this command with --records docs/results/runs/trees-demo.
compare-demo-pair: setup
	$(PY) tools/compare.py --suite trees --only fcos dw_fcos --seeds 0 1 2 --max-iter 300 \
		--eval-points 3 --jobs $(COMPARE_JOBS) --output output/compare/trees-demo

## convergence: the schedule length at which each baseline (FCOS, RetinaNet, Faster R-CNN)
## stops improving (the first evaluation that no later one exceeds by 0.5 AP, mean over 3 seeds), per dataset;
## CONVERGENCE_ITER sets the longest schedule tried. Tables: output/compare/<suite>-conv<N>/.
CONVERGENCE_ITER ?= 600
EVAL_POINTS ?= 6
convergence: setup
	$(PY) tools/compare.py --suite trees --only fcos retinanet faster_rcnn --seeds 0 1 2 \
		--max-iter $(CONVERGENCE_ITER) --eval-points $(EVAL_POINTS) --jobs $(COMPARE_JOBS) --convergence \
		--output output/compare/trees-conv$(CONVERGENCE_ITER) \
		--records docs/results/runs/trees-conv$(CONVERGENCE_ITER)
	$(PY) tools/compare.py --suite synthetic --only fcos retinanet faster_rcnn --seeds 0 1 2 \
		--max-iter $(CONVERGENCE_ITER) --eval-points $(EVAL_POINTS) --jobs $(COMPARE_JOBS) --convergence \
		--output output/compare/synthetic-conv$(CONVERGENCE_ITER) \
		--records docs/results/runs/synthetic-conv$(CONVERGENCE_ITER)

## compare-converged: the pairs of the README's "Where the evidence stands" at CONVERGENCE_ITER
## iterations, 3 seeds, 6 evaluations each (FCOS / DW-FCOS / DW-FCOS + refine, RetinaNet / GHM /
## GHM with per-level losses / Sampling-Free, Faster R-CNN / PISA / Libra), on SUITE (trees, or
## synthetic). Runs recorded in docs/results/runs/<SUITE>-conv<N>/ are restored, not retrained;
## the others train (on the trees about 25 minutes each on one core, 2 at a time; synthetic runs
## are about 4x cheaper) and are recorded there, so an interrupted comparison resumes on any machine.
## SEEDS="0 1 2 3 4" adds seeds (where an interval straddles 0), training only the new ones.
SUITE ?= trees
SEEDS ?= 0 1 2
CONVERGED_RUNS = fcos dw_fcos dw_fcos_refine retinanet ghm_retinanet ghm_per_level_retinanet \
	sampling_free_retinanet faster_rcnn pisa_faster_rcnn libra_faster_rcnn
compare-converged: setup
	$(PY) tools/compare.py --suite $(SUITE) --only $(CONVERGED_RUNS) --seeds $(SEEDS) \
		--max-iter $(CONVERGENCE_ITER) --eval-points $(EVAL_POINTS) --jobs $(COMPARE_JOBS) --convergence \
		--output output/compare/$(SUITE)-conv$(CONVERGENCE_ITER) \
		--records docs/results/runs/$(SUITE)-conv$(CONVERGENCE_ITER)

## compare-new-methods: FL*, USW and noisy-anchor RetinaNet and USW Faster R-CNN with their
## baselines (RetinaNet, Faster R-CNN), as compare-converged: CONVERGENCE_ITER iterations,
## 3 seeds, 6 evaluations each, on SUITE, recorded in docs/results/runs/<SUITE>-conv<N>/.
NEW_METHOD_RUNS = retinanet usw_retinanet fl_star_retinanet noisy_anchor_retinanet \
	faster_rcnn usw_faster_rcnn
compare-new-methods:
	$(MAKE) compare-converged CONVERGED_RUNS="$(NEW_METHOD_RUNS)"

## compare-lr: the runs of compare-converged with the SGD learning rate set to LR for every
## method and baseline alike (the recipe sweep: e.g. LR=0.005 and LR=0.02 around the common
## 0.01; same warm-up, steps and clipping), recorded in docs/results/runs/<SUITE>-conv<N>-lr<LR>/.
## On the trees about 30 runs of 25 minutes, 2 at a time, per learning rate; it resumes where it
## stopped.
LR ?= 0.005
compare-lr: setup
	$(PY) tools/compare.py --suite $(SUITE) --only $(CONVERGED_RUNS) --seeds $(SEEDS) \
		--max-iter $(CONVERGENCE_ITER) --eval-points $(EVAL_POINTS) --jobs $(COMPARE_JOBS) --convergence \
		--output output/compare/$(SUITE)-conv$(CONVERGENCE_ITER)-lr$(LR) \
		--records docs/results/runs/$(SUITE)-conv$(CONVERGENCE_ITER)-lr$(LR) optimizer.lr=$(LR)

## lr-sweep-table: the recipe sweep's tables (per learning rate, best of sweep, convergence)
## from the records of compare-converged and of every compare-lr run at CONVERGENCE_ITER on
## SUITE, for CONVERGED_RUNS; trains nothing; tables in output/compare/<SUITE>-conv<N>-lr-sweep.md,
## AP against the learning rate in docs/figures/<SUITE>_lr_sweep_conv<N>.png.
lr-sweep-table: setup
	$(PY) tools/recipe_sweep.py --suite $(SUITE) --only $(CONVERGED_RUNS) --seeds $(SEEDS) \
		--records docs/results/runs/$(SUITE)-conv$(CONVERGENCE_ITER) \
		$(wildcard docs/results/runs/$(SUITE)-conv$(CONVERGENCE_ITER)-lr*) \
		--out output/compare/$(SUITE)-conv$(CONVERGENCE_ITER)-lr-sweep.md \
		--figure docs/figures/$(SUITE)_lr_sweep_conv$(CONVERGENCE_ITER).png

## diagnose-retinanet: why GHM and Sampling-Free RetinaNet differ from RetinaNet on SUITE
## (docs/results/synthetic_diagnosis_retinanet_family.md): the three at CONVERGENCE_ITER
## iterations, 3 seeds, trained without records so that their checkpoints stay (about 16
## minutes each on synthetic, one core), into output/compare/<SUITE>-diag/, then the
## detection diagnosis (3 seeds) and the classification gradients (seed 0) of tools/analysis.py.
DIAG_RUNS = retinanet ghm_retinanet sampling_free_retinanet
diagnose-retinanet: setup
	$(PY) tools/compare.py --suite $(SUITE) --only $(DIAG_RUNS) --seeds 0 1 2 \
		--max-iter $(CONVERGENCE_ITER) --eval-points 6 --jobs $(COMPARE_JOBS) \
		--output output/compare/$(SUITE)-diag
	$(PY) tools/analysis.py diagnose --suite $(SUITE) --compare-dir output/compare/$(SUITE)-diag \
		--runs $(DIAG_RUNS) --seeds 0 1 2
	$(PY) tools/analysis.py gradients --suite $(SUITE) --compare-dir output/compare/$(SUITE)-diag \
		--runs $(DIAG_RUNS) --seeds 0
## evidence: every recorded converged comparison's paired ΔAP [95 % CI] in one table
## (docs/results/evidence.md) and a forest plot (docs/figures/evidence_delta_ap.png), read from
## docs/results/runs/ (trains nothing; about 10 s)
evidence: setup
	$(PY) tools/evidence.py --out docs/results/evidence.md --figure docs/figures/evidence_delta_ap.png

## figures: the analysis figures (docs/figures/*.png) from the runs of `make compare`, and the
## evidence plot
figures: setup evidence
	$(PY) tools/analysis.py all --suite trees
	$(PY) tools/analysis.py all --suite synthetic

clean-venv:
	rm -rf $(VENV)

## help: this list of targets
help:
	@sed -n 's/^## //p' $(firstword $(MAKEFILE_LIST))
