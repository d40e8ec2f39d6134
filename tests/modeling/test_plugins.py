"""The plug-in classes on their own: losses against straightforward formulas written here,
the add-ons' gradients, samplers in the RPN and a user-defined sampler in the ROI head."""
import inspect
import math

import pytest
import torch

from detectron2.utils.events import EventStorage

from balanced_det.engine.checkpoint import upgrade_state_dict
from balanced_det.modeling import (
    CARL,
    BalancedL1Loss,
    BalancedFastRCNNOutputLayers,
    BalancedRetinaNet,
    BalancedROIHeads,
    ClassScoreThresholds,
    FocalLoss,
    GIoULoss,
    GuidedLoss,
    RandomSampler,
    Sampler,
    SigmoidBCELoss,
    SmoothL1Loss,
)
from balanced_det.modeling.samplers import SampleCandidates
from balanced_det.ops import random_choice

import helpers_two_stage as H


def _logits(seed=0, shape=(2, 7, 3)):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).requires_grad_()
    y = (torch.rand(shape, generator=g) < 0.3).float()
    return x, y


def test_focal_and_bce_elements_match_the_formulas():
    x, y = _logits()
    p = torch.sigmoid(x)
    p_t = torch.where(y > 0, p, 1 - p)
    alpha_t = torch.where(y > 0, torch.full_like(p, 0.25), torch.full_like(p, 0.75))
    focal = -alpha_t * (1 - p_t) ** 2 * torch.log(p_t)
    torch.testing.assert_close(FocalLoss().elements(x, y), focal, rtol=1e-5, atol=1e-6)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    torch.testing.assert_close(SigmoidBCELoss().elements(x, y), bce, rtol=1e-5, atol=1e-5)
    # the call: sum(weights * elements) / normalizer, weights broadcast
    w = torch.rand(2, 7, 1)
    torch.testing.assert_close(FocalLoss()(x, y, w, 4.0), (focal * w).sum() / 4.0, rtol=1e-5,
                               atol=1e-6)
    assert FocalLoss(alpha=-1).alpha == -1  # fvcore: no alpha weighting


def test_box_losses_masked_sum_and_per_box():
    g = torch.Generator().manual_seed(1)
    pred, tgt = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    mask = torch.rand(2, 5, generator=g) < 0.5
    d = (pred - tgt).abs()
    sl1 = torch.where(d < 0.5, 0.5 * d ** 2 / 0.5, d - 0.25)
    loss = SmoothL1Loss(beta=0.5)
    torch.testing.assert_close(loss.per_box(pred, tgt), sl1.sum(-1))
    torch.testing.assert_close(loss(pred, tgt, mask, 3.0), sl1.sum(-1)[mask].sum() / 3.0)
    torch.testing.assert_close(loss(pred[mask], tgt[mask]), sl1[mask].sum())
    # Balanced L1 (alpha 0.5, gamma 1.5, beta 1): b = e^(gamma/alpha) - 1
    b = math.exp(3) - 1
    bl1 = torch.where(d < 1, 0.5 / b * (b * d + 1) * torch.log(b * d + 1) - 0.5 * d,
                      1.5 * d + 1.5 / b - 0.5)
    torch.testing.assert_close(BalancedL1Loss().elements(pred, tgt), bl1, rtol=1e-5, atol=1e-5)
    # GIoU on boxes: 1 - GIoU, per box
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 4, 4]])
    c = torch.tensor([[5.0, 0, 15, 10], [6, 6, 8, 8]])
    giou = torch.tensor([1 - (50 / 150 - 0), 1 - (0 - (64 - 20) / 64)])
    torch.testing.assert_close(GIoULoss().per_box(a, c), giou)
    assert GIoULoss.on_boxes and not SmoothL1Loss.on_boxes


def test_carl_value_and_gradient_into_the_probabilities():
    probs = torch.tensor([0.9, 0.2, 0.6], requires_grad=True)
    box = torch.tensor([1.0, 2.0, 0.5])
    out = CARL(k=1.0, bias=0.2, loss_weight=2.0)(probs, box, 4.0)
    v = 0.8 * probs + 0.2
    ref = 2.0 * ((v / v.mean()) * box).sum() / 4.0
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out, probs)
    # independent derivative of 2/4 * sum_i b_i v_i / mean(v): d/dp_j = 0.8 * 0.5 *
    # (b_j / m - sum_i b_i v_i / (n m^2)), m = mean(v), n = 3
    vd, m = v.detach(), v.detach().mean()
    exp = 0.4 * (box / m - (box * vd).sum() / (3 * m ** 2))
    torch.testing.assert_close(g, exp)


def test_guided_loss_ratio_is_detached():
    cls = torch.tensor(2.0, requires_grad=True)
    reg = torch.tensor(0.5, requires_grad=True)
    g = GuidedLoss(w_cls=2.0, w_reg=3.0)
    weighted = g.regression(reg)
    out, r = g.classification(cls, weighted, torch.tensor(True))
    assert float(r) == pytest.approx(1.5 / 2.0) and float(out.detach()) == pytest.approx(3.0)
    dcls, dreg = torch.autograd.grad(out, (cls, reg), allow_unused=True)
    assert float(dcls) == pytest.approx(2 * 0.75) and (dreg is None or float(dreg) == 0)
    out, r = g.classification(cls, weighted, torch.tensor(False))  # no foreground: r = 1
    assert float(r) == 1.0 and float(out.detach()) == pytest.approx(4.0)


def test_class_score_thresholds_from_stats():
    t = ClassScoreThresholds(3, initial=0.05)
    torch.testing.assert_close(t.values, torch.full((3,), 0.05))
    t.set_from_stats(0.2, [1, 3, 0])  # theta_j = f N_j / sum N; unseen class: smallest seen
    torch.testing.assert_close(t.values, torch.tensor([0.05, 0.15, 0.05]))
    with pytest.raises(ValueError, match="class_counts has 2 entries"):
        t.set_from_stats(0.2, [1, 3])


def test_rpn_random_sampler_equals_detectron2_rpn(tiny_rpn):
    from detectron2.modeling.proposal_generator import RPN

    _, targets = H.crafted_batch()
    ours = tiny_rpn(sampler="random")
    theirs = RPN(**H.rpn_parts())
    anchors = ours.anchor_generator([H.features()["p3"]])
    torch.manual_seed(3)
    a, _ = ours.label_and_sample_anchors(anchors, targets)
    torch.manual_seed(3)
    b, _ = theirs.label_and_sample_anchors(anchors, targets)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert isinstance(ours.sampler, RandomSampler)


class HardestIoUNegSampler(Sampler):
    """The README's example: random positives; negatives with the highest IoU first."""

    def sample(self, c: SampleCandidates):
        picks = []
        for i in range(len(c.labels)):
            pos, neg = c.masks(i)
            pos_idx = random_choice(pos, c.num_pos_expected)
            iou = torch.where(neg, c.max_ious(i), torch.full_like(c.max_ious(i), -1.0))
            k = min(c.num_per_image - pos_idx.numel(), int(neg.sum()))
            picks.append((torch.cat([pos_idx, iou.topk(k).indices]), None))
        return picks


def test_a_user_defined_sampler_plugs_into_the_roi_head(tiny_roi_heads):
    heads = tiny_roi_heads()
    heads.sampler = HardestIoUNegSampler()
    proposals, targets = H.crafted_batch()
    heads.train()
    with EventStorage(0):
        out, losses = heads(H.image_list(), H.features(), proposals, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    from detectron2.structures import pairwise_iou

    for s, t in zip(out, targets):
        neg = s.gt_classes == heads.num_classes
        iou = pairwise_iou(t.gt_boxes, s.proposal_boxes).max(dim=0).values[neg]
        assert len(s) == 64 and torch.equal(iou, iou.sort(descending=True).values)


def test_signatures_list_the_detectron2_arguments():
    for cls, own, base in ((BalancedROIHeads, "sampler", "batch_size_per_image"),
                           (BalancedFastRCNNOutputLayers, "carl", "smooth_l1_beta"),
                           (BalancedRetinaNet, "cls_loss", "focal_loss_alpha")):
        params = inspect.signature(cls).parameters
        assert own in params and base in params, cls
        assert not any(p.kind == p.VAR_KEYWORD for p in params.values()), cls


def test_former_buffer_names_are_upgraded_when_the_model_has_the_new_ones():
    model_keys = {"roi_heads.box_predictor.class_score_thresholds.values", "cls_loss.acc_sum",
                  "class_score_thresholds.values"}
    old = {"roi_heads.box_predictor.class_score_thresh": 1, "ghm_c.acc_sum": 2,
           "class_score_thresholds": 3, "unrelated": 4}
    assert upgrade_state_dict(old, model_keys) == {
        "roi_heads.box_predictor.class_score_thresholds.values": 1, "cls_loss.acc_sum": 2,
        "class_score_thresholds.values": 3, "unrelated": 4}
    assert upgrade_state_dict({"cls_loss.acc_sum": 5}, model_keys) == {"cls_loss.acc_sum": 5}


def test_fcos_calls_a_per_level_loss_once_per_fpn_level():
    """FCOS hands a ``per_level`` loss each level's points in turn (level-major order), one
    GHM EMA update per level; without it, one call over all levels."""
    from balanced_det.modeling import GHMCLoss
    from helpers_dense import TWO_IMAGES, batch, tiny_fcos

    class Recording(GHMCLoss):
        def forward(self, logits, targets, weights=None, normalizer=1.0):
            calls.append(logits.shape[1])
            return super().forward(logits, targets, weights, normalizer)

    sizes = {}
    for per_level in (False, True):
        calls = []
        torch.manual_seed(0)
        model = tiny_fcos(cls_loss=Recording(per_level=per_level)).train()
        with EventStorage(0):
            losses = model(batch(TWO_IMAGES))
        assert torch.isfinite(losses["loss_fcos_cls"])
        sizes[per_level] = calls
    levels = len(model.head_in_features)
    assert len(sizes[False]) == 1 and len(sizes[True]) == levels > 1
    assert sum(sizes[True]) == sizes[False][0]
    assert sizes[True] == sorted(sizes[True], reverse=True)  # P3 first, coarser levels after
    assert int(model.cls_loss.updates.max()) == levels
