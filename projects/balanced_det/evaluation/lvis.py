"""LVIS evaluation (AP, AP_r, AP_c, AP_f) with the ``lvis`` package; a model that detects
nothing scores 0 AP, as LVIS defines it, rather than NaN."""
from __future__ import annotations

import copy
import logging
from typing import Dict, Optional

from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator

from ..data.datasets import ensure_dataset
from .coco import NO_DETECTIONS_WARNING

__all__ = ["LVISEvaluator", "lvis_results_without_detections"]

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def lvis_results_without_detections(lvis_gt, iou_type: str) -> Dict[str, float]:
    """The LVIS metrics (x 100, as detectron2 reports them) of ``LVISEval`` run on an empty
    detection set: 0 wherever ``lvis_gt`` has ground truth. detectron2 returns NaN for every
    metric instead, because ``LVISResults`` cannot be built from an empty result list."""
    from lvis import LVISEval, LVISResults

    lvis_dt = LVISResults.__new__(LVISResults)  # its __init__ indexes results[0]
    lvis_dt.logger = logging.getLogger(__name__)
    lvis_dt.dataset = copy.deepcopy(lvis_gt.dataset)
    lvis_dt.dataset["annotations"] = []
    lvis_dt._create_index()
    lvis_eval = LVISEval(lvis_gt, lvis_dt, iou_type)
    lvis_eval.run()
    lvis_eval.print_results()
    results = lvis_eval.get_results()
    return {m: float(results[m] * 100) for m in LVIS_METRICS}


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's ``LVISEvaluator`` that first checks the dataset's files (a missing LVIS
    fails naming the path and how to provide it) and keeps up to 300 detections per image
    (LVIS's limit; detectron2's default). Results: ``AP, AP50, AP75, APs, APm, APl, APr, APc,
    APf`` per task; an evaluation without any detection is scored as 0 AP
    (:func:`lvis_results_without_detections`) where detectron2 reports NaN."""

    def __init__(self, dataset_name: str, tasks=None, distributed: bool = True,
                 output_dir: Optional[str] = None, *, max_dets_per_image: int = 300):
        ensure_dataset(dataset_name)
        super().__init__(dataset_name, tasks, distributed, output_dir,
                         max_dets_per_image=max_dets_per_image)

    def _eval_predictions(self, predictions):
        super()._eval_predictions(predictions)  # writes the (empty) results file
        if self._do_evaluation and not any(len(p.get("instances", ())) for p in predictions):
            logging.getLogger(__name__).warning(NO_DETECTIONS_WARNING)
            for task in list(self._results):
                self._results[task] = lvis_results_without_detections(self._lvis_api, task)
