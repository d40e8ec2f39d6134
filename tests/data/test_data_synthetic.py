"""Synthetic dataset generator: deterministic, multi-class, long-tailed, with empty images."""
import json

import numpy as np
import pytest

from balanced_det.data import SyntheticSpec, generate_synthetic
from balanced_det.data.synthetic import SHAPES, shape_polygon
from detectron2.data import DatasetCatalog, MetadataCatalog

SYNTH = SyntheticSpec(num_images=40, image_size=128, num_classes=6, max_objects=12, min_size=8,
                     max_size=32, empty_fraction=0.15, seed=3)


def test_deterministic_bytes(tmp_path, monkeypatch):
    a = generate_synthetic(SYNTH, "train")
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path))
    b = generate_synthetic(SYNTH, "train")
    assert a != b
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    for name in ("train_00000.png", "train_00017.png"):
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()


def test_content_is_multiclass_long_tailed_with_empty_images():
    ds = json.loads((generate_synthetic(SYNTH, "train") / "annotations.json").read_text())
    assert [c["name"] for c in ds["categories"]] == list(SHAPES)
    per_image = np.bincount([a["image_id"] for a in ds["annotations"]], minlength=41)[1:]
    assert (per_image == 0).sum() >= 1, "some images have no objects"
    assert per_image.max() >= 6, "many objects per image"
    freq = np.bincount([a["category_id"] for a in ds["annotations"]], minlength=7)[1:]
    assert freq[0] > 2 * freq[-1], "class frequencies follow ~1/(k+1)"
    for a in ds["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        assert len(a["segmentation"][0]) >= 6 and a["area"] > 0


def test_train_and_val_differ_and_split_checked():
    tr = json.loads((generate_synthetic(SYNTH, "train") / "annotations.json").read_text())
    va = json.loads((generate_synthetic(SYNTH, "val") / "annotations.json").read_text())
    assert tr["annotations"][0]["bbox"] != va["annotations"][0]["bbox"]
    with pytest.raises(ValueError, match="split"):
        generate_synthetic(SYNTH, "test")


def test_bad_spec_values_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticSpec(num_classes=9)
    with pytest.raises(ValueError, match="min_size"):
        SyntheticSpec(min_size=50, max_size=40)


def test_polygon_extent():
    poly = shape_polygon("square", 50, 50, 20, 0.0)
    assert np.allclose(poly.min(0), [42.5, 42.5]) and np.allclose(poly.max(0), [57.5, 57.5])


def test_registered_default_and_tiny():
    assert len(DatasetCatalog.get("synthetic_tiny_train")) == 6
    assert MetadataCatalog.get("synthetic_train").thing_classes == list(SHAPES)
    assert MetadataCatalog.get("synthetic_tiny_val").evaluator_type == "coco"
