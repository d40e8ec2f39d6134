"""Every two-stage method config trains 2 iterations on synthetic data through train_net's
loop (do_train: statistics, training, checkpoint, evaluation); empty images train."""
import math

import pytest
import torch

from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from balanced_det.engine import do_train
from balanced_det.engine.train_loop import build_model

from conftest import all_config_files, rel
from helpers import tiny_cfg

setup_logger(name="balanced_det")
METHODS = ("ohem_", "libra_", "pisa_", "sampling_free_", "usw_", "eql_")
# method configs, and the LVIS baseline (the other baselines: tests/engine/test_train_smoke.py)
TWO_STAGE = [p for p in all_config_files()
             if "rcnn" in rel(p) and (rel(p).split("/")[-1].startswith(METHODS)
                                      or rel(p).startswith("LVISv1-"))]


def test_every_method_has_its_configs():
    names = {rel(p) for p in TWO_STAGE}
    for m in ("ohem", "libra", "pisa", "sampling_free", "usw"):
        assert f"COCO-Detection/{m}_faster_rcnn_R_50_FPN_1x.py" in names
        assert f"Trees/{m}_faster_rcnn_effnet_lite0_FPN.py" in names
        assert f"Synthetic/{m}_faster_rcnn_effnet_lite0_FPN.py" in names
    for m in ("pisa", "sampling_free"):
        assert f"COCO-InstanceSegmentation/{m}_mask_rcnn_R_50_FPN_1x.py" in names
        assert f"Synthetic/{m}_mask_rcnn_effnet_lite0_FPN.py" in names
    assert "COCO-Detection/pisa_libra_faster_rcnn_R_50_FPN_1x.py" in names
    assert {"LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
            "LVISv1-InstanceSegmentation/eql_mask_rcnn_R_50_FPN_1x.py",
            "Synthetic/eql_faster_rcnn_effnet_lite0_FPN.py"} <= names


CPU = [p for p in TWO_STAGE if rel(p).startswith("Synthetic/")]
COCO = [p for p in TWO_STAGE if rel(p).startswith(("COCO-", "LVISv1-"))]
TREES = [p for p in TWO_STAGE if rel(p).startswith("Trees/")]


@pytest.mark.parametrize("path", TREES, ids=rel)
def test_tree_method_config_is_the_synthetic_job_under_tiny_cfg(path, tmp_path):
    """Trees/ and Synthetic/ method configs differ only in their data (and class count), which
    tiny_cfg replaces: the 2-iteration job of a tree config is exactly the one of its synthetic
    twin trained below (model, optimizer, schedule, loaders, train options)."""
    twin = path.replace("/Trees/", "/Synthetic/")
    a, b = tiny_cfg(path, tmp_path), tiny_cfg(twin, tmp_path)
    for key in ("model", "optimizer", "lr_multiplier", "dataloader", "train"):
        assert a[key] == b[key], key


@pytest.mark.slow
@pytest.mark.parametrize("path", CPU, ids=rel)
def test_cpu_method_config_trains_and_evaluates(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(path, tmp_path)
    results = do_train(cfg)
    assert results is not None and "bbox" in results
    ap = results["bbox"]["AP"]
    assert math.isnan(ap) or 0.0 <= ap <= 100.0  # 2 iterations: NaN if nothing matches
    if "mask_rcnn" in path:
        assert "segm" in results
    assert (tmp_path / "model_final.pth").exists()
    if rel(path).split("/")[-1].startswith(("sampling_free_", "eql_")):
        assert list((tmp_path / "cache" / "stats").glob("*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("path", COCO, ids=rel)
def test_coco_method_config_trains_and_infers(path, tmp_path, monkeypatch):
    """Randomly initialised R50 on 64 px synthetic images: the training step and inference of
    the COCO configs (do_train's evaluation and checkpoints are covered by the CPU configs)."""
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(path, tmp_path, batch=1, size=64)
    torch.manual_seed(0)
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    data = iter(instantiate(cfg.dataloader.train))
    model.train()
    with EventStorage(0) as storage:
        for it in range(2):
            batch = next(data)
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            storage.step()
    expected = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    if "pisa" in path:
        expected.add("loss_carl")
    if rel(path).split("/")[-1].startswith("usw_"):
        expected |= {"loss_usw_cls", "loss_usw_reg"}
        if "mask_rcnn" in path:
            expected.add("loss_usw_mask")
    if "mask_rcnn" in path:
        expected.add("loss_mask")
    assert set(losses) == expected
    model.eval()
    with torch.no_grad():
        out = model(batch[:1])
    assert "instances" in out[0]
    if "mask_rcnn" in path and len(out[0]["instances"]):
        assert out[0]["instances"].has("pred_masks")


def _empty(h=96, w=128, masks=False):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.zeros(0, 4))
    inst.gt_classes = torch.zeros(0, dtype=torch.long)
    if masks:
        inst.gt_masks = PolygonMasks([])
    return {"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8).float(),
            "instances": inst, "height": h, "width": w}


# The samplers' zero-GT paths are unit-tested per head (test_two_stage_losses.py); here the
# whole model, with the extra box-head forward (OHEM), ISR weights + masks (PISA) and the
# statistics step + masks (Sampling-Free).
LITE0 = [p for p in TWO_STAGE if rel(p) in (
    "Synthetic/ohem_faster_rcnn_effnet_lite0_FPN.py",
    "Synthetic/pisa_mask_rcnn_effnet_lite0_FPN.py",
    "Synthetic/sampling_free_mask_rcnn_effnet_lite0_FPN.py",
    "Synthetic/usw_mask_rcnn_effnet_lite0_FPN.py",
    "Synthetic/eql_faster_rcnn_effnet_lite0_FPN.py")]


@pytest.mark.parametrize("path", LITE0, ids=rel)
def test_zero_gt_batch_trains_and_infers(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(path, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)  # statistics too (Sampling-Free)
    model.train()
    masks = "mask_rcnn" in path
    with EventStorage(0):
        losses = model([_empty(masks=masks), _empty(masks=masks)])
    assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([_empty()])
    assert "instances" in out[0]
