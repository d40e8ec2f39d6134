"""Box predictor and RPN losses: CARL, Balanced L1, weights, guided loss, Sampling-Free bias
and thresholds, empty inputs, bf16 autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from balanced_det.modeling.roi_heads import BalancedFastRCNNOutputLayers
from helpers_two_stage import ROI_SAMPLERS
from balanced_det.ops import balanced_l1_loss, carl_weights, sigmoid_prior_bias

import helpers_two_stage as H

C = H.NUM_CLASSES


def _predictor(**kw):
    torch.manual_seed(0)
    return H.roi_parts(**kw)["box_predictor"]


def _proposals(gt_classes, weights=None, seed=0):
    return H.labelled_proposals(gt_classes, weights, seed)


def _predictions(n, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, C + 1, generator=g).requires_grad_(requires_grad)
    deltas = (torch.randn(n, 4 * C, generator=g) * 0.5).requires_grad_(requires_grad)
    return scores, deltas


def _losses(pred, proposals, predictions):
    with EventStorage(0):
        return pred.losses(predictions, proposals)


LABELS = [0, 2, C, 1, C, C, 0, C]


def test_carl_gradient_reaches_the_classification_logits():
    pred = _predictor(carl=True, smooth_l1_beta=1.0)
    scores, deltas = _predictions(len(LABELS))
    p = _proposals(LABELS)
    losses = _losses(pred, [p], (scores, deltas))
    (g_scores,) = torch.autograd.grad(losses["loss_carl"], scores, retain_graph=True)
    fg = torch.tensor(LABELS) < C
    assert g_scores[fg].abs().sum() > 0  # positives' logits receive CARL's gradient
    assert torch.equal(g_scores[~fg], torch.zeros_like(g_scores[~fg]))
    # value: sum_i c_i * sum_coords SmoothL1 / #ROIs, c from the GT-class softmax probability
    t = pred.box2box_transform.get_deltas(p.proposal_boxes.tensor[fg], p.gt_boxes.tensor[fg])
    lab = torch.tensor(LABELS)[fg]
    d = deltas.view(-1, C, 4)[fg, lab]
    prob = F.softmax(scores, 1)[fg, lab]
    reg = F.smooth_l1_loss(d, t, beta=1.0, reduction="none").sum(1)
    exp = (carl_weights(prob) * reg).sum() / len(LABELS)
    assert torch.allclose(losses["loss_carl"], exp)
    assert torch.allclose(carl_weights(prob).mean(), torch.tensor(1.0))


def test_balanced_l1_box_loss_and_positive_normaliser():
    fg = torch.tensor(LABELS) < C
    p = _proposals(LABELS)
    scores, deltas = _predictions(len(LABELS))
    t = H.roi_parts()["box_predictor"].box2box_transform.get_deltas(
        p.proposal_boxes.tensor[fg], p.gt_boxes.tensor[fg])
    d = deltas.view(-1, C, 4)[fg, torch.tensor(LABELS)[fg]]
    bl1 = balanced_l1_loss(d, t, reduction="sum")
    rois = _losses(_predictor(box_reg_loss_type="balanced_l1"), [p], (scores, deltas))
    assert torch.allclose(rois["loss_box_reg"], bl1 / len(LABELS))
    pos = _losses(_predictor(box_reg_loss_type="balanced_l1", box_reg_normalizer="positives"),
                  [p], (scores, deltas))
    assert torch.allclose(pos["loss_box_reg"], bl1 / (4 * int(fg.sum())))


def test_per_sample_weights_scale_the_cross_entropy():
    w = torch.linspace(0.2, 2.0, len(LABELS))
    scores, deltas = _predictions(len(LABELS))
    losses = _losses(_predictor(), [_proposals(LABELS, weights=w)], (scores, deltas))
    ce = F.cross_entropy(scores, torch.tensor(LABELS), reduction="none")
    assert torch.allclose(losses["loss_cls"], (w * ce).sum() / len(LABELS))


def test_guided_loss_ratio_is_detached_and_one_without_foreground():
    pred = _predictor(guided_loss=True, guided_w_cls=2.0)
    scores, deltas = _predictions(len(LABELS))
    losses = _losses(pred, [_proposals(LABELS)], (scores, deltas))
    assert torch.allclose(losses["loss_cls"], 2 * losses["loss_box_reg"])  # value: 2 r L_cls
    # r is detached: loss_cls sends no gradient to the box deltas, and d/dCE = 2 r
    g = torch.autograd.grad(losses["loss_cls"], deltas, retain_graph=True, allow_unused=True)[0]
    assert g is None or torch.equal(g, torch.zeros_like(g))
    ce = F.cross_entropy(scores, torch.tensor(LABELS))
    r = (losses["loss_box_reg"] / ce).detach()
    (g1,) = torch.autograd.grad(losses["loss_cls"], scores)
    (g2,) = torch.autograd.grad(2 * r * F.cross_entropy(scores, torch.tensor(LABELS)), scores)
    assert torch.allclose(g1, g2, atol=1e-6)
    # no foreground: r = 1
    scores, deltas = _predictions(3)
    bg = _losses(pred, [_proposals([C, C, C])], (scores, deltas))
    assert torch.allclose(bg["loss_cls"], 2 * F.cross_entropy(scores, torch.full((3,), C)))


def test_softmax_prior_gives_the_intended_initial_probability():
    f = 0.03
    pred = _predictor(prior_init=True)
    pred.apply_dataset_stats(f, [1] * C)
    with torch.no_grad():
        pred.cls_score.weight.zero_()
        probs = F.softmax(pred(torch.randn(5, 32))[0], dim=1)
    assert torch.allclose(probs[:, :C], torch.full((5, C), f / C), rtol=1e-5)
    assert torch.allclose(probs[:, C], torch.full((5,), 1 - f), rtol=1e-5)
    # with the default N(0, 0.01) weights, the mean initial foreground probability is f / C
    pred = _predictor(prior_init=True)
    pred.apply_dataset_stats(f, [1] * C)
    with torch.no_grad():
        probs = F.softmax(pred(torch.rand(200, 32))[0], dim=1)
    assert probs[:, :C].mean().item() == pytest.approx(f / C, rel=0.05)


def test_rpn_sigmoid_prior_gives_the_intended_initial_probability():
    rpn = H.balanced_rpn(sampler="none", prior_init=True)
    rpn.apply_dataset_stats(2e-4, [1])
    bias = rpn.rpn_head.objectness_logits.bias
    assert torch.allclose(bias, torch.full((3,), sigmoid_prior_bias(2e-4, 1)))
    assert torch.allclose(torch.sigmoid(rpn.rpn_head.objectness_logits.bias),
                          torch.full((3,), 2e-4), rtol=1e-4)


def test_class_adaptive_thresholds_are_applied_per_class():
    pred = _predictor(class_adaptive_thresholds=True)
    pred.apply_dataset_stats(0.3, [10, 20, 0])  # class 2 unseen: smallest theta
    theta = pred.class_score_thresholds.values
    assert torch.allclose(theta, torch.tensor([0.1, 0.2, 0.1]))
    # 4 ROIs far apart (no NMS interaction); probabilities chosen around the thresholds
    probs = torch.tensor([[0.15, 0.05, 0.05, 0.75],   # class 0 > 0.1 kept
                          [0.05, 0.15, 0.15, 0.65],   # class 1 (0.15 < 0.2) dropped, class 2 kept
                          [0.09, 0.25, 0.01, 0.65],   # class 0 dropped, class 1 kept
                          [0.02, 0.02, 0.02, 0.94]])  # nothing
    scores = probs.log()
    deltas = torch.zeros(4, 4 * C)
    props = Instances(H.IMAGE)
    props.proposal_boxes = Boxes(torch.tensor([[0, 0, 10, 10], [40, 0, 50, 10], [80, 0, 90, 10],
                                               [0, 40, 10, 50]], dtype=torch.float))
    (inst,), (kept,) = pred.inference((scores, deltas), [props])
    got = sorted(zip(kept.tolist(), inst.pred_classes.tolist()))
    assert got == [(0, 0), (1, 2), (2, 1)]
    # the global threshold is not used
    pred.test_score_thresh = 0.5
    (inst,), _ = pred.inference((scores, deltas), [props])
    assert len(inst) == 3


def test_empty_and_background_only_batches_have_finite_losses_with_a_graph():
    for kw in (dict(), dict(carl=True, guided_loss=True, box_reg_normalizer="positives"),
               dict(box_reg_loss_type="balanced_l1", carl=True)):
        pred = _predictor(**kw)
        for labels in ([], [C, C]):
            scores, deltas = _predictions(len(labels))
            p = _proposals(labels) if labels else _proposals([])
            losses = _losses(pred, [p], (scores, deltas))
            total = sum(losses.values())
            assert torch.isfinite(total) and float(total.detach()) >= 0
            total.backward()


def test_rpn_sampling_free_uses_every_anchor_and_guided_loss():
    rpn = H.balanced_rpn(sampler="none", guided_loss=True)
    _, targets = H.crafted_batch()
    rpn.train()
    with EventStorage(0):
        anchors = rpn.anchor_generator([H.features()["p3"]])
        labels, _ = rpn.label_and_sample_anchors(anchors, targets)
        _, losses = rpn(H.image_list(), H.features(), targets)
    ref = H.balanced_rpn(sampler="random")
    with EventStorage(0):
        ref_labels, _ = ref.label_and_sample_anchors(anchors, targets)
    lab = torch.stack(labels)
    assert int((lab >= 0).sum()) > int((torch.stack(ref_labels) >= 0).sum())
    assert int((lab == -1).sum()) > 0  # matcher's ignore band is kept ignored
    assert torch.allclose(losses["loss_rpn_cls"], losses["loss_rpn_loc"])  # w_cls r L_cls
    # normalisers: BCE sum / #pos and box loss / (4 #pos)
    num_pos = int((lab == 1).sum())
    rpn2 = H.balanced_rpn(sampler="none")
    with EventStorage(0):
        _, raw = rpn2(H.image_list(), H.features(), targets)
        logits = torch.cat([x.permute(0, 2, 3, 1).flatten(1)
                            for x in rpn2.rpn_head([H.features()["p3"]])[0]], 1)
    valid = lab >= 0
    exp = F.binary_cross_entropy_with_logits(logits[valid], (lab[valid] == 1).float(),
                                             reduction="sum") / num_pos
    assert torch.allclose(raw["loss_rpn_cls"], exp, rtol=1e-5)


@pytest.mark.parametrize("sampler", ROI_SAMPLERS)
def test_bf16_autocast_runs_every_head_without_nan(sampler):
    heads = H.balanced_roi_heads(sampler, predictor_kw=dict(
        carl=True, guided_loss=sampler == "none",
        box_reg_loss_type="balanced_l1" if sampler == "libra" else "smooth_l1"))
    rpn = H.balanced_rpn(sampler="none" if sampler == "none" else "random",
                         guided_loss=sampler == "none")
    proposals, targets = H.crafted_batch()
    feats = H.features()
    heads.train(), rpn.train()
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        props, rpn_losses = rpn(H.image_list(), feats, targets)
        _, losses = heads(H.image_list(), feats, proposals, targets)
    losses.update(rpn_losses)
    for k, v in losses.items():
        assert v.dtype == torch.float32, k
        assert torch.isfinite(v), k
    sum(losses.values()).backward()
    heads.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = heads(H.image_list(), feats, proposals)
    assert all(torch.isfinite(o.scores).all() for o in out)


def test_zero_gt_images_give_finite_losses_with_a_gradient_path():
    for sampler in ROI_SAMPLERS:
        heads = H.balanced_roi_heads(sampler, predictor_kw=dict(carl=True, guided_loss=True))
        proposals, targets = H.crafted_batch()
        empty = Instances(H.IMAGE)
        empty.gt_boxes = Boxes(torch.zeros(0, 4))
        empty.gt_classes = torch.zeros(0, dtype=torch.long)
        heads.train()
        with EventStorage(0):
            _, losses = heads(H.image_list(), H.features(), proposals, [empty, empty])
        total = sum(losses.values())
        assert torch.isfinite(total), sampler
        total.backward()
        grads = [p.grad for p in heads.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert math.isfinite(float(losses["loss_box_reg"].detach()))
    rpn = H.balanced_rpn(sampler="none", guided_loss=True)
    with EventStorage(0):
        _, losses = rpn(H.image_list(), H.features(), [empty, empty])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("sampler", ROI_SAMPLERS)
def test_image_without_proposals_and_gts(sampler):
    """Image 0 has no proposal and no GT (no candidate at all), image 1 is normal."""
    heads = H.balanced_roi_heads(sampler, predictor_kw=dict(carl=True))
    proposals, targets = H.crafted_batch()
    proposals[0] = proposals[0][:0]
    targets[0] = targets[0][:0]
    heads.train()
    with EventStorage(0):
        out, losses = heads(H.image_list(), H.features(), proposals, targets)
    assert len(out[0]) == 0 and len(out[1]) > 0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_predictor_is_a_fast_rcnn_output_layers():
    from detectron2.modeling.roi_heads import FastRCNNOutputLayers

    assert issubclass(BalancedFastRCNNOutputLayers, FastRCNNOutputLayers)
