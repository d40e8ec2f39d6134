"""COCO evaluation that works with or without detectron2's C++ extension."""
from __future__ import annotations

import gzip
import json
import os
from typing import Dict, List, Optional

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator

from ..compat import coco_evaluator_kwargs
from ..data.cache import atomic_write_bytes
from ..data.datasets import ensure_dataset
from .groups import frequency_group_ap

__all__ = ["COCOEvaluator", "DETECTIONS_FILE", "write_detections", "read_detections"]

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


class COCOEvaluator(_D2COCOEvaluator):
    """detectron2's ``COCOEvaluator`` that (1) materialises the dataset's COCO JSON first
    (converted/generated datasets) or fails naming the missing file, and (2) uses pycocotools'
    ``COCOeval`` when detectron2's C++ extension is not built (``use_fast_impl=None``: auto),
    (3) adds ``APr``, ``APc``, ``APf`` (:func:`~balanced_det.evaluation.groups.frequency_group_ap`)
    when the dataset's metadata tags its classes (``frequency_groups``, e.g. ``synthetic_lt_*``).
    Same arguments otherwise."""

    def __init__(self, dataset_name: str, tasks=None, distributed: bool = True,
                 output_dir: Optional[str] = None, *, use_fast_impl: Optional[bool] = None,
                 **kwargs):
        ensure_dataset(dataset_name)
        if use_fast_impl is None:
            use_fast_impl = coco_evaluator_kwargs()["use_fast_impl"]
        super().__init__(dataset_name, tasks, distributed, output_dir,
                         use_fast_impl=use_fast_impl, **kwargs)

    def _eval_predictions(self, predictions, img_ids=None):
        super()._eval_predictions(predictions, img_ids)
        # the COCO results rows (category ids mapped back to the dataset's by super())
        self.coco_results = [r for p in predictions for r in p.get("instances", [])]

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        groups = getattr(self._metadata, "frequency_groups", None)
        if results and groups is not None:
            for task, res in results.items():
                if task in ("bbox", "segm"):
                    res.update(frequency_group_ap(res, self._metadata.thing_classes, groups))
        return results
