"""Dataset registration: ``trees_*``, ``synthetic_*``, and checks for detectron2's builtin COCO.

Registered in detectron2's ``DatasetCatalog``/``MetadataCatalog`` when ``balanced_det`` is
imported. Conversion/generation happens on first use (``DatasetCatalog.get`` or
:func:`ensure_dataset`), into the cache folder (``$BALANCED_DET_CACHE``), never into the repo.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Callable, Dict, List, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import get_detection_dataset_dicts as _d2_get_detection_dataset_dicts
from detectron2.data.datasets import load_coco_json

from .synthetic import SHAPES, SyntheticSpec, generate_synthetic
from .trees import convert_trees
from .validation import DatasetError, validate_dataset_dicts

__all__ = [
    "DatasetError",
    "DatasetFilesNotFoundError",
    "ensure_dataset",
    "get_detection_dataset_dicts",
    "register_coco_style",
    "register_synthetic",
    "DEFAULT_SYNTHETIC",
]

logger = logging.getLogger(__name__)

_MATERIALIZERS: Dict[str, Callable[[], Tuple[str, str]]] = {}
DEFAULT_SYNTHETIC = SyntheticSpec()


class DatasetFilesNotFoundError(FileNotFoundError):
    """A registered dataset whose annotation file or image folder is not where it should be."""


def register_coco_style(
    name: str,
    materialize: Callable[[], Tuple[str, str]],
    thing_classes: List[str],
    extra_annotation_keys: Sequence[str] = (),
) -> None:
    """Register a COCO-format dataset whose files are produced by ``materialize()``.

    ``materialize`` returns ``(json_file, image_root)`` and must be idempotent and safe to call
    from several processes (the built-in ones use a lock and an atomic rename).
    """
    if name in DatasetCatalog.list():
        raise ValueError(f"dataset {name!r} is already registered")
    _MATERIALIZERS[name] = materialize

    def load():
        json_file, image_root = ensure_dataset(name)
        return _load_json_checked(name, json_file, lambda: load_coco_json(
            json_file, image_root, name, extra_annotation_keys=list(extra_annotation_keys) or None))

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=list(thing_classes), evaluator_type="coco")


def _coco_hint(name: str) -> str:
    root = os.environ.get("DETECTRON2_DATASETS")
    where = f"DETECTRON2_DATASETS={root!r}" if root else "DETECTRON2_DATASETS is not set (default './datasets')"
    return (
        f"{where}. Set DETECTRON2_DATASETS to the folder that contains coco/ "
        "(coco/annotations/instances_{train,val}2017.json, coco/train2017/, coco/val2017/) "
        "before starting; see README, 'Data'."
        if name.startswith("coco")
        else f"{where}. See detectron2's datasets/README.md for the expected layout."
    )


def ensure_dataset(name: str) -> Tuple[str, str]:
    """Make the dataset's files exist (converting/generating if needed) and return
    ``(json_file, image_root)``; raise :class:`DatasetFilesNotFoundError` naming the missing
    path and how to provide it.
    """
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset {name!r} is not registered. Registered: {', '.join(sorted(DatasetCatalog.list()))}"
        )
    meta = MetadataCatalog.get(name)
    if name in _MATERIALIZERS:
        json_file, image_root = _MATERIALIZERS[name]()
        if not hasattr(meta, "json_file"):
            meta.set(json_file=str(json_file), image_root=str(image_root))
        return str(json_file), str(image_root)
    json_file = getattr(meta, "json_file", None)
    image_root = getattr(meta, "image_root", None)
    if json_file is None:
        return "", ""
    missing = [p for p in (json_file, image_root) if p and not os.path.exists(p)]
    if missing:
        raise DatasetFilesNotFoundError(
            f"Dataset {name!r}: {' and '.join(missing)} not found. {_coco_hint(name)}"
        )
    return json_file, image_root


def _load_json_checked(name: str, json_file: str, load: Callable):
    """Run a COCO-JSON loader; a malformed file fails naming the file and the position."""
    try:
        return load()
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"dataset {name!r}: {json_file} is not valid JSON ({e.msg} at line {e.lineno}, "
            f"column {e.colno}). Expected a COCO-format annotation file.") from e


def get_detection_dataset_dicts(names: Union[str, Sequence[str]], filter_empty: bool = True,
                                strict: bool = False, check_files: bool = True, **kwargs):
    """detectron2's ``get_detection_dataset_dicts`` with checks:

    1. :func:`ensure_dataset` on each name (a missing dataset fails with the path looked for
       and how to provide it, not deep inside a loader);
    2. :func:`~balanced_det.data.validation.validate_dataset_dicts`: missing image files are
       an error; degenerate boxes are dropped and boxes outside the image clipped, with a
       warning (``strict=True``: an error instead);
    3. then, if ``filter_empty``, images without a usable (non-crowd) box are removed, as
       detectron2 does, so images emptied by step 2 are removed too.
    """
    if isinstance(names, str):
        names = [names]
    for n in names:
        ensure_dataset(n)
    try:
        dicts = _d2_get_detection_dataset_dicts(list(names), filter_empty=False, **kwargs)
    except AssertionError as e:  # detectron2: "Dataset '<name>' is empty!"
        raise DatasetError(f"{e} Expected at least one image.") from e
    dicts = validate_dataset_dicts(dicts, names, strict=strict, check_files=check_files)
    if filter_empty:
        before = len(dicts)
        dicts = [d for d in dicts
                 if any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", []))]
        if len(dicts) < before:
            logger.info("Removed %d images with no usable annotations. %d images left.",
                        before - len(dicts), len(dicts))
    if len(dicts) == 0:
        raise DatasetError(
            f"datasets {list(names)} hold no images after filtering (filter_empty={filter_empty}); "
            "expected at least one image with a non-crowd box")
    return dicts


def _trees_split(split: str) -> Tuple[str, str]:
    folder = convert_trees()
    return str(folder / f"trees_{split}.json"), str(folder / "images")


def _synthetic_split(spec: SyntheticSpec, split: str) -> Tuple[str, str]:
    folder = generate_synthetic(spec, split)
    return str(folder / "annotations.json"), str(folder / "images")


def register_synthetic(name: str, spec: SyntheticSpec, split: str) -> None:
    """Register a synthetic dataset made by ``spec`` (any size; tests register tiny ones)."""
    register_coco_style(
        name, functools.partial(_synthetic_split, spec, split), list(SHAPES[: spec.num_classes])
    )


def _check_builtin_coco_files(name: str, load: Callable):
    @functools.wraps(load)
    def checked():
        json_file, _ = ensure_dataset(name)
        return _load_json_checked(name, json_file, load)

    return checked


def register_all() -> None:
    if "trees_train" in DatasetCatalog.list():
        return
    for split in ("train", "val"):
        register_coco_style(f"trees_{split}", functools.partial(_trees_split, split), ["Tree"],
                            extra_annotation_keys=("source_label",))
        register_synthetic(f"synthetic_{split}", DEFAULT_SYNTHETIC, split)
    # detectron2's builtin COCO-format datasets (registered at import of detectron2.data from
    # $DETECTRON2_DATASETS): fail with the path looked for and how to provide it.
    for name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if name not in _MATERIALIZERS and hasattr(meta, "json_file"):
            DatasetCatalog[name] = _check_builtin_coco_files(name, DatasetCatalog[name])
