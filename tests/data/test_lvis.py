"""LVIS: a tiny LVIS-format split (the tiny synthetic images, categories tagged f / c / r)
evaluated with the lvis package (AP, APr, APc, APf), the LVIS EQL config trained on it for 2
iterations and evaluated, a missing LVIS named with the path and the variable, and AP by
frequency group of the long-tailed synthetic data."""
import json
import math
import os

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from balanced_det.data import DatasetFilesNotFoundError, ensure_dataset, register_lvis_style
from balanced_det.data.datasets import LONG_TAIL_SYNTHETIC
from balanced_det.evaluation import LVISEvaluator
from balanced_det.evaluation.groups import frequency_group_ap

from conftest import all_config_files, rel
from helpers import tiny_cfg

TAGS = ["f", "c", "r"]


def _to_lvis(coco_json, image_dir, out_json):
    """The COCO-format tiny synthetic split in LVIS format: ``coco_url`` (the images' folder as
    the split folder), negative / not-exhaustive ids, frequency tags and counts."""
    with open(coco_json) as f:
        ds = json.load(f)
    folder = os.path.basename(image_dir.rstrip("/"))
    for img in ds["images"]:
        img["coco_url"] = f"http://example.org/{folder}/{img['file_name']}"
        img["neg_category_ids"] = []
        img["not_exhaustive_category_ids"] = []
    for cat, tag in zip(ds["categories"], TAGS):
        anns = [a for a in ds["annotations"] if a["category_id"] == cat["id"]]
        cat.update(frequency=tag, instance_count=len(anns),
                   image_count=len({a["image_id"] for a in anns}), synonyms=[cat["name"]])
    with open(out_json, "w") as f:
        json.dump(ds, f)


@pytest.fixture(scope="module")
def tiny_lvis(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis")
    names = {}
    for split in ("train", "val"):
        coco_json, image_dir = ensure_dataset(f"synthetic_tiny_{split}")
        out = str(root / f"lvis_tiny_{split}.json")
        _to_lvis(coco_json, image_dir, out)
        name = f"lvis_tiny_{split}"
        if name not in DatasetCatalog.list():
            register_lvis_style(name, out, os.path.dirname(image_dir.rstrip("/")) + "/")
        names[split] = name
    return names


def _predictions_from_gt(d):
    inst = Instances((d["height"], d["width"]))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(boxes))
    inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]],
                                     dtype=torch.long)
    return inst


def test_tiny_lvis_split_loads_with_its_own_classes(tiny_lvis):
    dicts = DatasetCatalog.get(tiny_lvis["val"])
    assert dicts and all(os.path.exists(d["file_name"]) for d in dicts)
    meta = MetadataCatalog.get(tiny_lvis["val"])
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert meta.evaluator_type == "lvis"
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2}


def test_lvis_evaluation_reports_ap_by_frequency_group(tiny_lvis, tmp_path):
    name = tiny_lvis["val"]
    ev = LVISEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path))
    ev.reset()
    for d in DatasetCatalog.get(name):
        ev.process([{"image_id": d["image_id"]}], [{"instances": _predictions_from_gt(d)}])
    res = ev.evaluate()["bbox"]
    for key in ("AP", "APr", "APc", "APf"):
        assert res[key] == pytest.approx(100.0, abs=1e-6), (key, res)


def test_lvis_evaluation_without_any_detection_scores_zero(tiny_lvis, tmp_path):
    """No detection at all: LVISEval of the empty set, 0 AP overall and in each frequency group
    (every group has ground truth here), where detectron2 reports NaN."""
    name = tiny_lvis["val"]
    ev = LVISEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path))
    ev.reset()
    for d in DatasetCatalog.get(name):
        ev.process([{"image_id": d["image_id"]}], [{"instances": _predictions_from_gt(d)[:0]}])
    res = ev.evaluate()["bbox"]
    for key in ("AP", "AP50", "AP75", "APs", "APr", "APc", "APf"):
        assert res[key] == 0.0, (key, res)
    assert (tmp_path / "lvis_instances_results.json").exists()


def test_lvis_eql_config_trains_and_evaluates_on_the_tiny_split(tiny_lvis, tmp_path, monkeypatch):
    from balanced_det.engine import do_train

    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache"))
    path = [p for p in all_config_files()
            if rel(p) == "LVISv1-InstanceSegmentation/eql_mask_rcnn_R_50_FPN_1x.py"][0]
    cfg = tiny_cfg(path, tmp_path, batch=1, size=64)
    cfg.dataloader.train.dataset.names = tiny_lvis["train"]
    cfg.dataloader.test.dataset.names = tiny_lvis["val"]
    results = do_train(cfg)
    assert "bbox" in results
    # randomly initialised R50 after 2 iterations: often no usable detection (then no segm
    # task, and 0 AP), so only the evaluation path, the keys and the range are checked
    for task in results:
        for key in ("AP", "APr", "APc", "APf"):
            assert 0.0 <= results[task][key] <= 100.0, (task, key, results[task])
    freqs = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"][
        "roi_heads.box_predictor.class_frequencies"]
    assert torch.all((freqs > 0) & (freqs <= 1))


def test_missing_lvis_names_path_and_variable():
    with pytest.raises(DatasetFilesNotFoundError,
                       match=r"lvis_v1_val.json.*DETECTRON2_DATASETS.*lvis/.*coco/"):
        ensure_dataset("lvis_v1_val")
    with pytest.raises(DatasetFilesNotFoundError, match="lvis_v1_train.json"):
        DatasetCatalog.get("lvis_v1_train")
    with pytest.raises(DatasetFilesNotFoundError, match="DETECTRON2_DATASETS"):
        LVISEvaluator("lvis_v1_val")


def test_frequency_group_ap_is_the_mean_over_each_group():
    res = {"AP-a": 10.0, "AP-b": 30.0, "AP-c": 50.0, "AP-d": float("nan"), "AP-e": 70.0}
    got = frequency_group_ap(res, ["a", "b", "c", "d", "e"], ["f", "f", "c", "r", "c"])
    assert got["APf"] == 20.0 and got["APc"] == 60.0 and math.isnan(got["APr"])
    with pytest.raises(ValueError, match="2 tags for 5 classes"):
        frequency_group_ap(res, ["a", "b", "c", "d", "e"], ["f", "r"])


def test_long_tail_synthetic_data_is_tagged_and_its_tail_is_rare():
    assert LONG_TAIL_SYNTHETIC.frequency_groups() == ["f", "f", "c", "c", "r", "r"]
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"synthetic_lt_{split}")
        assert meta.frequency_groups == ["f", "f", "c", "c", "r", "r"]
    # the images generated for the spec: rare classes in a few percent of the images
    from balanced_det.data.synthetic import _render_image

    spec = LONG_TAIL_SYNTHETIC
    seen = [{a["category_id"] - 1 for a in _render_image(spec, 1, i)[1]} for i in range(60)]
    annotated = [s for s in seen if s]
    frac = [sum(j in s for s in annotated) / len(annotated) for j in range(6)]
    assert frac[0] > 0.9 and max(frac[4], frac[5]) < 0.12



def test_repeat_factor_sampling_option_builds_detectron2s_sampler(tiny_lvis, root_dir):
    import importlib

    from detectron2.config import instantiate
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    from balanced_det.config import load_config

    path = os.path.join(root_dir, "configs", "LVISv1-InstanceSegmentation",
                        "mask_rcnn_R_50_FPN_1x.py")
    cfg = load_config(path)
    cfg.dataloader.train.dataset.names = tiny_lvis["train"]
    lvis_data = importlib.import_module("configs.common.data.lvis")
    lvis_data.repeat_factor_sampling(cfg.dataloader, repeat_thresh=0.9)
    sampler = instantiate(cfg.dataloader.train.sampler)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    factors = sampler._frac_part + sampler._int_part
    from balanced_det.data import get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts(tiny_lvis["train"])  # as the loader sees them
    assert len(factors) == len(dicts) and (factors >= 1).all() and (factors > 1).any()
