from .coco import COCOEvaluator
from .lvis import LVISEvaluator

__all__ = ["COCOEvaluator", "LVISEvaluator"]
