"""Every dense detector / plug-in: images without GTs (finite losses with a gradient path) and
bf16 autocast on the CPU (finite float32 losses and gradients), training and inference."""
import math

import pytest
import torch

from detectron2.utils.events import EventStorage

from balanced_det.modeling.necks.balanced_fpn import BalancedFPN

from helpers_dense import TWO_IMAGES, TinyBackbone, batch, tiny_dw_fcos, tiny_fcos, tiny_retinanet


def _libra():
    model = tiny_retinanet(box_reg_loss_type="balanced_l1")
    model.backbone = BalancedFPN(TinyBackbone(), refine_level=1)
    return model


BUILDERS = {
    "fcos": lambda: tiny_fcos(),
    "sampling_free_fcos": lambda: tiny_fcos(cls_loss_type="bce", guided_loss=True,
                                            class_adaptive_thresholds=True),
    "dw_fcos": lambda: tiny_dw_fcos(),
    "dw_fcos_refine": lambda: tiny_dw_fcos(box_refine=True),
    "retinanet": lambda: tiny_retinanet(),
    "pisa_retinanet": lambda: tiny_retinanet(isr_p=True, carl=True),
    "ghm_retinanet": lambda: tiny_retinanet(cls_loss_type="ghm", box_reg_loss_type="ghm"),
    "libra_retinanet": _libra,
    "sampling_free_retinanet": lambda: tiny_retinanet(cls_loss_type="bce", guided_loss=True,
                                                      class_adaptive_thresholds=True),
    "giou_retinanet": lambda: tiny_retinanet(box_reg_loss_type="giou"),
}
EMPTY = [([], []), ([], [])]


def _train_step(model, inputs):
    model.train()
    model.zero_grad()
    with EventStorage(0):
        losses = model(inputs)
    for k, v in losses.items():
        assert v.dtype == torch.float32, k
        assert math.isfinite(float(v.detach())), (k, losses)
        assert v.requires_grad, f"{k} has no gradient path"
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return losses


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_zero_gt_images(name):
    torch.manual_seed(0)
    model = BUILDERS[name]()
    losses = _train_step(model, batch(EMPTY))
    for k, v in losses.items():  # no positives: every positive / box term is exactly 0
        if any(s in k for s in ("box", "loc", "ctr", "carl", "pos")):
            assert float(v.detach()) == 0.0, (k, float(v))
    # a batch mixing an empty image and a normal one
    _train_step(model, batch([EMPTY[0], TWO_IMAGES[0]]))
    model.eval()
    with torch.no_grad():
        out = model(batch(EMPTY[:1]))
    assert "instances" in out[0]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bf16_autocast_on_cpu(name):
    torch.manual_seed(0)
    model = BUILDERS[name]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _train_step(model, batch(TWO_IMAGES))
        model.eval()
        with torch.no_grad():
            out = model(batch(TWO_IMAGES))
    for o in out:
        inst = o["instances"]
        assert torch.isfinite(inst.scores).all() and torch.isfinite(inst.pred_boxes.tensor).all()
