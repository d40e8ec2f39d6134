"""COCO evaluation that works with or without detectron2's C++ extension."""
from __future__ import annotations

from typing import Optional

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator

from ..compat import coco_evaluator_kwargs
from ..data.datasets import ensure_dataset
from .groups import frequency_group_ap

__all__ = ["COCOEvaluator"]


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

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        groups = getattr(self._metadata, "frequency_groups", None)
        if results and groups is not None:
            for task, res in results.items():
                if task in ("bbox", "segm"):
                    res.update(frequency_group_ap(res, self._metadata.thing_classes, groups))
        return results
