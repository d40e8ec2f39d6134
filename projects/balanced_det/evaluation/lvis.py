"""LVIS evaluation (AP, AP_r, AP_c, AP_f) with the ``lvis`` package."""
from __future__ import annotations

from typing import Optional

from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator

from ..data.datasets import ensure_dataset

__all__ = ["LVISEvaluator"]


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's ``LVISEvaluator`` that first checks the dataset's files (a missing LVIS
    fails naming the path and how to provide it) and keeps up to 300 detections per image
    (LVIS's limit; detectron2's default). Results: ``AP, AP50, AP75, APs, APm, APl, APr, APc,
    APf`` per task."""

    def __init__(self, dataset_name: str, tasks=None, distributed: bool = True,
                 output_dir: Optional[str] = None, *, max_dets_per_image: int = 300):
        ensure_dataset(dataset_name)
        super().__init__(dataset_name, tasks, distributed, output_dir,
                         max_dets_per_image=max_dets_per_image)
