"""Checks of dataset dicts before training or evaluation starts.

Every problem either raises :class:`DatasetError` naming the dataset, the image and the bad
value and what was expected, or is repaired as documented here, with one warning that counts
the cases and names the first few:

=====================================  ==========================================================
problem                                 what happens
=====================================  ==========================================================
image file missing                      ``DatasetError`` (lists up to 5 paths and the count)
image unreadable / not an image         ``DatasetError`` from ``balanced_det.data.DatasetMapper``
                                        when it is loaded (or skipped, ``on_bad_image="skip"``)
box with width or height <= 0           dropped (``strict=True``: ``DatasetError``)
box (partly) outside the image          clipped to the image; dropped if nothing is left
                                        (``strict=True``: ``DatasetError``)
image with only crowd boxes /           training: removed, as detectron2 does (logged);
no boxes                                evaluation: kept
category id not in ``categories``       ``KeyError`` from detectron2's ``load_coco_json``,
                                        naming the id
annotation JSON missing / malformed     ``DatasetFilesNotFoundError`` / ``DatasetError`` naming
                                        the file and the JSON error position
empty dataset                           ``DatasetError``
=====================================  ==========================================================
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List

import numpy as np

from detectron2.structures import BoxMode

__all__ = ["DatasetError", "validate_dataset_dicts"]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message says where and why."""


def _fmt(examples: List[str], total: int) -> str:
    more = f" (and {total - len(examples)} more)" if total > len(examples) else ""
    return "; ".join(examples) + more


def validate_dataset_dicts(dicts: List[Dict], names, strict: bool = False,
                           check_files: bool = True) -> List[Dict]:
    """Check (and repair, as documented in this module) detectron2 dataset dicts in place."""
    where = "+".join([names] if isinstance(names, str) else list(names))
    if not dicts:
        raise DatasetError(f"dataset {where} has no images")
    if check_files:
        missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
        if missing:
            raise DatasetError(
                f"dataset {where}: {len(missing)} of {len(dicts)} image files do not exist: "
                f"{_fmt(missing[:5], len(missing))}. Expected image files under the dataset's "
                "image_root.")
    degenerate, clipped, dropped_outside = [], [], []
    for d in dicts:
        annos = d.get("annotations")
        if not annos:
            continue
        h, w = d.get("height"), d.get("width")
        keep = []
        for a in annos:
            if "bbox" not in a:
                keep.append(a)
                continue
            box = np.asarray(BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS),
                             dtype=np.float64)
            label = f"{os.path.basename(d['file_name'])} bbox={list(np.round(a['bbox'], 2))}"
            if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
                degenerate.append(label)
                continue
            if h is not None and w is not None and (
                    box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h):
                inside = box.clip([0, 0, 0, 0], [w, h, w, h])
                if inside[2] <= inside[0] or inside[3] <= inside[1]:
                    dropped_outside.append(label)
                    continue
                clipped.append(label)
                a = dict(a, bbox=inside.tolist(), bbox_mode=BoxMode.XYXY_ABS)
            keep.append(a)
        d["annotations"] = keep
    if strict and (degenerate or clipped or dropped_outside):
        raise DatasetError(
            f"dataset {where}: boxes with width/height <= 0: {_fmt(degenerate[:5], len(degenerate))}; "
            f"boxes outside the image: {_fmt((clipped + dropped_outside)[:5], len(clipped) + len(dropped_outside))}. "
            "Expected boxes with positive size inside the image (strict=True).")
    if degenerate:
        logger.warning("dataset %s: dropped %d boxes with width or height <= 0: %s", where,
                       len(degenerate), _fmt(degenerate[:5], len(degenerate)))
    if dropped_outside:
        logger.warning("dataset %s: dropped %d boxes entirely outside their image: %s", where,
                       len(dropped_outside), _fmt(dropped_outside[:5], len(dropped_outside)))
    if clipped:
        logger.warning("dataset %s: clipped %d boxes to their image: %s", where, len(clipped),
                       _fmt(clipped[:5], len(clipped)))
    return dicts
