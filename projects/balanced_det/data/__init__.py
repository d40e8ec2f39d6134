"""Datasets (tree crowns, synthetic shapes, COCO checks) and data-loading helpers."""
from .cache import cache_dir
from .mapper import DatasetMapper
from .datasets import (
    DatasetError,
    DatasetFilesNotFoundError,
    ensure_dataset,
    get_detection_dataset_dicts,
    register_coco_style,
    register_lvis_style,
    register_synthetic,
)
from .synthetic import SyntheticSpec, generate_synthetic
from .trees import convert_trees

from .datasets import register_all as _register_all

_register_all()

__all__ = [k for k in globals() if not k.startswith("_")]
