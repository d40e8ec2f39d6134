"""COCO evaluation on a tiny synthetic split returns AP from pycocotools."""
import pytest
import torch

from balanced_det.evaluation import COCOEvaluator
from balanced_det.data import DatasetFilesNotFoundError, ensure_dataset
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances


def _predictions_from_gt(d, jitter=0.0):
    annos = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
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


def test_missing_coco_names_path_and_variable(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/definitely/not/here")
    with pytest.raises(DatasetFilesNotFoundError, match="instances_val2017.json.*DETECTRON2_DATASETS"):
        ensure_dataset("coco_2017_val")
    with pytest.raises(DatasetFilesNotFoundError, match="DETECTRON2_DATASETS"):
        DatasetCatalog.get("coco_2017_val")
    with pytest.raises(KeyError, match="not registered"):
        ensure_dataset("coco_2099_val")
