"""COCO evaluation that works with or without detectron2's C++ extension, and scores a model
that detects nothing as COCO defines it (0 AP) rather than NaN."""
from __future__ import annotations

import gzip
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator

from ..compat import coco_evaluator_kwargs
from ..data.cache import atomic_write_bytes
from ..data.datasets import ensure_dataset
from .groups import frequency_group_ap

__all__ = ["COCOEvaluator", "DETECTIONS_FILE", "write_detections", "read_detections",
           "NO_DETECTIONS_WARNING", "coco_eval_without_detections"]

#: logged when an evaluation receives no detection at all
NO_DETECTIONS_WARNING = ("No detections from the model: evaluated as an empty detection set "
                         "(0 AP wherever the evaluation set has ground truth, as COCO defines it)")

#: the box detections of a run's last evaluation, next to its eval_results.json
DETECTIONS_FILE = "val_detections.json.gz"


def write_detections(path: str, coco_results: List[dict]) -> None:
    """Box detections in COCO results format (``image_id``, ``category_id`` (dataset id),
    ``bbox`` XYWH, ``score``) as gzipped JSON rows ``[image_id, category_id, x, y, w, h,
    score]`` (boxes to 0.01 px, scores to 1e-5), written atomically."""
    rows = [[r["image_id"], r["category_id"], *[round(float(v), 2) for v in r["bbox"]],
             round(float(r["score"]), 5)] for r in coco_results if "bbox" in r]
    data = json.dumps({"columns": ["image_id", "category_id", "x", "y", "w", "h", "score"],
                       "rows": rows}, separators=(",", ":")).encode("utf-8")
    atomic_write_bytes(path, gzip.compress(data, mtime=0))


def read_detections(path: str) -> Dict[object, List[dict]]:
    """``{image_id: [{"category_id", "bbox" (XYWH), "score"}, ...]}`` from
    :func:`write_detections`'s file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved detections at {path} (written by the evaluation "
                                f"of a run, {DETECTIONS_FILE})")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    out: Dict[object, List[dict]] = {}
    for image_id, cat, x, y, w, h, score in data["rows"]:
        out.setdefault(image_id, []).append(
            {"category_id": cat, "bbox": [x, y, w, h], "score": score})
    return out


def coco_eval_without_detections(coco_gt, iou_type: str, img_ids: Optional[Sequence] = None,
                                 kpt_oks_sigmas: Optional[Sequence[float]] = None):
    """pycocotools' ``COCOeval`` (evaluated, accumulated, summarised) of an empty detection set
    on ``coco_gt``: precision 0 for every class and area range with ground truth, -1 where
    there is none, so AP = 0 (NaN without ground truth). detectron2 returns NaN for every metric
    instead, because ``COCO.loadRes`` cannot load an empty result list."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset.get("categories", [])),
                       "annotations": []}
    coco_dt.createIndex()
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    if iou_type == "keypoints" and kpt_oks_sigmas:
        coco_eval.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class COCOEvaluator(_D2COCOEvaluator):
    """detectron2's ``COCOEvaluator`` that (1) materialises the dataset's COCO JSON first
    (converted/generated datasets) or fails naming the missing file, and (2) uses pycocotools'
    ``COCOeval`` when detectron2's C++ extension is not built (``use_fast_impl=None``: auto),
    (3) adds ``APr``, ``APc``, ``APf`` (:func:`~balanced_det.evaluation.groups.frequency_group_ap`)
    when the dataset's metadata tags its classes (``frequency_groups``, e.g. ``synthetic_lt_*``),
    (4) scores an evaluation without any detection as 0 AP (:func:`coco_eval_without_detections`)
    where detectron2 reports NaN. Same arguments otherwise."""

    def __init__(self, dataset_name: str, tasks=None, distributed: bool = True,
                 output_dir: Optional[str] = None, *, use_fast_impl: Optional[bool] = None,
                 **kwargs):
        ensure_dataset(dataset_name)
        if use_fast_impl is None:
            use_fast_impl = coco_evaluator_kwargs()["use_fast_impl"]
        super().__init__(dataset_name, tasks, distributed, output_dir,
                         use_fast_impl=use_fast_impl, **kwargs)

    def _eval_predictions(self, predictions, img_ids=None):
        self._eval_img_ids = img_ids  # read by _derive_coco_results, which super() calls
        super()._eval_predictions(predictions, img_ids)
        # the COCO results rows (category ids mapped back to the dataset's by super())
        self.coco_results = [r for p in predictions for r in p.get("instances", [])]

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None:  # detectron2's "no predictions": not one detection
            logging.getLogger(__name__).warning(NO_DETECTIONS_WARNING)
            coco_eval = coco_eval_without_detections(
                self._coco_api, iou_type, self._eval_img_ids, self._kpt_oks_sigmas)
        return super()._derive_coco_results(coco_eval, iou_type, class_names)

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        groups = getattr(self._metadata, "frequency_groups", None)
        if results and groups is not None:
            for task, res in results.items():
                if task in ("bbox", "segm"):
                    res.update(frequency_group_ap(res, self._metadata.thing_classes, groups))
        return results
