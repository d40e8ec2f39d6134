"""COCO evaluation on a tiny synthetic split returns AP from pycocotools; a model that detects
nothing scores 0 AP (as COCO defines it), not NaN."""
import json
import math

import pytest
import torch

from balanced_det.evaluation import COCOEvaluator
from balanced_det.data import DatasetFilesNotFoundError, ensure_dataset
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances


def _predictions_from_gt(d, jitter=0.0, keep=None):
    annos = [a for a in d["annotations"] if not a.get("iscrowd", 0)][:keep]
    inst = Instances((d["height"], d["width"]))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    inst.pred_boxes = Boxes(t + jitter)
    inst.scores = torch.ones(len(annos))
    inst.pred_classes = torch.tensor([a["category_id"] for a in annos], dtype=torch.long)
    return inst


@pytest.mark.parametrize("jitter,expect", [(0.0, 100.0), (200.0, 0.0)])
def test_ap_of_perfect_and_wrong_predictions(tmp_path, jitter, expect):
    ev = COCOEvaluator("synthetic_tiny_val", output_dir=str(tmp_path), distributed=False)
    assert ev._use_fast_impl is False or ev._use_fast_impl is True
    ev.reset()
    for d in DatasetCatalog.get("synthetic_tiny_val"):
        ev.process([{"image_id": d["image_id"]}], [{"instances": _predictions_from_gt(d, jitter)}])
    res = ev.evaluate()
    assert res["bbox"]["AP"] == pytest.approx(expect, abs=1e-6)
    assert (tmp_path / "coco_instances_results.json").exists()


def _evaluate(tmp_path, jitter=0.0, keep=None):
    ev = COCOEvaluator("synthetic_tiny_val", tasks=("bbox",), output_dir=str(tmp_path),
                       distributed=False)
    ev.reset()
    for d in DatasetCatalog.get("synthetic_tiny_val"):
        ev.process([{"image_id": d["image_id"]}],
                   [{"instances": _predictions_from_gt(d, jitter, keep)}])
    return ev.evaluate()["bbox"]


def _same(a, b):
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k]) for k in a)


def test_no_detection_at_all_scores_zero_ap_like_only_false_positives(tmp_path):
    """No detection: 0 AP for the whole set, each class with ground truth and each area range
    with ground truth (NaN where there is none: hand-counted from the split's JSON), the same
    metrics as detections that all miss (only false positives)."""
    empty = _evaluate(tmp_path, keep=0)
    assert _same(empty, _evaluate(tmp_path, jitter=200.0))
    coco_json, _ = ensure_dataset("synthetic_tiny_val")
    with open(coco_json) as f:
        ds = json.load(f)
    anns = [a for a in ds["annotations"] if not a.get("iscrowd", 0)]
    names = {c["id"]: c["name"] for c in ds["categories"]}
    assert set(empty) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} | {
        f"AP-{n}" for n in names.values()}
    for cid, name in names.items():
        has_gt = any(a["category_id"] == cid for a in anns)
        assert (empty[f"AP-{name}"] == 0.0) if has_gt else math.isnan(empty[f"AP-{name}"]), name
    for key, lo, hi in (("APs", 0, 32 ** 2), ("APm", 32 ** 2, 96 ** 2), ("APl", 96 ** 2, 1e10)):
        has_gt = any(lo <= a["area"] <= hi for a in anns)
        assert (empty[key] == 0.0) if has_gt else math.isnan(empty[key]), key
    assert empty["AP"] == empty["AP50"] == empty["AP75"] == 0.0


def test_missing_coco_names_path_and_variable(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/definitely/not/here")
    with pytest.raises(DatasetFilesNotFoundError, match="instances_val2017.json.*DETECTRON2_DATASETS"):
        ensure_dataset("coco_2017_val")
    with pytest.raises(DatasetFilesNotFoundError, match="DETECTRON2_DATASETS"):
        DatasetCatalog.get("coco_2017_val")
    with pytest.raises(KeyError, match="not registered"):
        ensure_dataset("coco_2099_val")
