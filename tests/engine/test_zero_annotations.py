"""An image with zero annotations trains (finite losses, gradients reach the head) and infers."""
import math

import pytest
import torch

from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import all_config_files, rel
from helpers import TINY_CLASSES, set_num_classes
from balanced_det.config import load_config

MODELS = [p for p in all_config_files() if rel(p) in (
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.py",
    "COCO-Detection/retinanet_R_50_FPN_1x.py",
    "COCO-Detection/fcos_R_50_FPN_1x.py",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
    "Trees/fcos_effnet_lite0_FPN.py",
)]


def empty_input(h=96, w=128, with_masks=False):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.zeros(0, 4))
    inst.gt_classes = torch.zeros(0, dtype=torch.long)
    if with_masks:
        from detectron2.structures import PolygonMasks

        inst.gt_masks = PolygonMasks([])
    return {"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8).float(),
            "instances": inst, "height": h, "width": w}


@pytest.mark.parametrize("path", MODELS, ids=rel)
def test_zero_gt_trains_and_infers(path):
    cfg = load_config(path)
    set_num_classes(cfg, TINY_CLASSES)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    masks = "mask_rcnn" in path
    with EventStorage(0):
        losses = model([empty_input(with_masks=masks), empty_input(with_masks=masks)])
    total = sum(losses.values())
    assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([empty_input()])
    assert "instances" in out[0]
