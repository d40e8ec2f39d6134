from .coco import COCOEvaluator

__all__ = ["COCOEvaluator"]
