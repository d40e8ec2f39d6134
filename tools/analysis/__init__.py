"""Analysis figures (PNG) of the comparison runs of ``tools/compare.py``.

    python tools/analysis.py all --suite trees                 # every figure of a suite
    python tools/analysis.py samplers --suite synthetic        # IoU vs loss per ROI sampler
    python tools/analysis.py dw --suite trees --image-id 3     # DW weight maps of one image
    python tools/analysis.py sampling_free --suite trees       # confidence shifting + thresholds
    python tools/analysis.py curves --suite synthetic          # training curves of all runs
    python tools/analysis.py diagnose --suite trees --runs fcos dw_fcos   # method vs baseline
    python tools/analysis.py gradients --suite trees --runs retinanet ghm_retinanet

(``python -m tools.analysis ...`` from the repository root is the same.) The figures read the
runs that ``python tools/compare.py --suite <suite>`` writes to
``output/compare/<suite>/<name>/seed<k>/`` (``--compare-dir`` for another folder; ``--seed``
picks the run of the single-model figures, default 0) and go to ``--out``
(default ``docs/figures/``) as ``<suite>_<figure>.png``; the paths are printed. Each figure
has a title, labelled axes and a caption line saying what it shows and from which run and
checkpoint. A figure whose run is missing fails (``all``: is skipped) with the command that
trains it.

==================  ==========================================================================
``samplers``        PISA paper figures 4/6: IoU with the GT (x) vs cross entropy (y) of the
                    ROIs each sampler (random / OHEM / Libra / PISA) picks from one real
                    training batch of a trained Faster R-CNN (default: the ``faster_rcnn`` run):
                    same images, proposals and network weights for every sampler, marker area
                    proportional to the sample's weight (ISR-P / ISR-N for PISA, 1 otherwise).
                    Each sampler is the run's ROI head with the ``sampler`` and
                    ``positive_weighting`` of the suite's method config, recorded with the
                    head's ``sample_recorder`` hook.
``dw``              DW paper figure 5: over the points of P3 and P4 of one validation image
                    (default: the one with most boxes) and a trained DW-FCOS (default:
                    ``dw_fcos``): positive weight (max over GTs), negative weight of the GT
                    class, joint score (max over classes), IoU of the predicted box with the
                    best GT; computed with ``balanced_det.ops.dw`` on the model's predictions.
``sampling_free``   Score distribution of every (anchor, class) candidate before thresholding,
                    on the validation split, of RetinaNet (focal) vs Sampling-Free RetinaNet,
                    with the global 0.05 and the class-adaptive thresholds; AP of the
                    Sampling-Free model with either threshold and the detections each keeps
                    (figure + Markdown table).
``curves``          total loss vs iteration (mean over seeds, min-max band) of every run, one
                    panel per detector family; AP vs iteration when runs evaluated more than
                    once, final AP (mean ± std) in the legend.
``annotations``     the GT boxes of the validation image with most boxes, drawn over it.
``diagnose``        a method against its baseline (``--runs``, baseline first; ``--seeds``):
                    detections per image, recall at IoU 0.5 / 0.75, duplicates per matched
                    GT, scores of true and unmatched detections, score-IoU correlation,
                    FCOS-family positives per GT and level (DW: bag size, weight mass,
                    effective positives), loss and gradient-norm ends of training (table +
                    figure, ``<suite>_diagnosis_<methods>.{md,png}``).
``gradients``       RetinaNet family (``--runs``, ``--seeds``): the valid (anchor, class)
                    elements of the training split by GHM's gradient norm ``g = |p - y|``,
                    positives and negatives apart, and the share of each model's own
                    classification-loss gradient that each range of ``g`` receives; the share
                    of hard negatives on anchors that overlap no labelled box (table + figure,
                    ``<suite>_gradients_<runs>.{md,png}``).
``all``             all of the above, skipping (with the reason) figures whose runs are missing.
==================  ==========================================================================

Modules: :mod:`.runs` (finished runs, configs, checkpoints, captions), one module per figure
(:mod:`.samplers`, :mod:`.dw`, :mod:`.sampling_free`, :mod:`.curves`, :mod:`.diagnose`,
:mod:`.gradients`, :mod:`.annotations`: its data, its plot and
its ``run(args)``), the command line in ``__main__``.
"""
import matplotlib

matplotlib.use("Agg")

import balanced_det  # noqa: E402,F401  (compat shims and registrations before detectron2)
