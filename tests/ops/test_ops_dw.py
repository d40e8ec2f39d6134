"""DW weights and losses (docs/methods/dw.md): the dense reference forms by hand, and
balanced_det.ops.dw's losses against a per-GT loop."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss

from balanced_det.ops.dw import dw_image_terms, dw_losses
from balanced_det.ops.points import grid_points

from dw_dense_reference import (
    dw_candidate_bag,
    dw_center_prior,
    dw_negative_weights,
    dw_pairwise_iou_giou,
    dw_positive_weights,
)


# ----------------------------------------------------------------------------- bags, prior
def test_candidate_bag_across_levels_and_boundaries():
    # P3 (stride 8) points at 4, 12, 20, ...; P5 (stride 32) points at 16, 48.
    points, strides, counts = grid_points([(8, 8), (2, 2)], [8, 32])
    box = torch.tensor([[4.0, 4.0, 20.0, 20.0]])
    bag = dw_candidate_bag(points, box)[:, 0]
    inside = {tuple(p.tolist()) for p in points[bag]}
    # (12, 12) from P3 and (16, 16) from P5 are strictly inside; (4, *), (20, *) lie on the edges.
    assert inside == {(12.0, 12.0), (16.0, 16.0)}
    assert bag[: counts[0]].sum() == 1 and bag[counts[0] :].sum() == 1
    assert dw_candidate_bag(points, torch.zeros(0, 4)).shape == (points.shape[0], 0)


def test_center_prior_values():
    # box centred on (50, 50); points: the centre (stride 8), one stride right (stride 8),
    # one stride below on a stride-16 level, and one outside the box.
    points = torch.tensor([[50.0, 50.0], [58.0, 50.0], [50.0, 66.0], [150.0, 50.0]])
    strides = torch.tensor([8.0, 8.0, 16.0, 8.0])
    box = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    prior = dw_center_prior(points, strides, box, torch.tensor([0]))[:, 0]
    one = math.exp(-1 / (2 * 1.11**2))  # 0.66644: exp(-d^2 / (2 sigma^2)) at d = 1 stride
    torch.testing.assert_close(prior, torch.tensor([1.0, one, one, 0.0]))
    # per-class, per-axis sigma: class 1 has (sigma_x, sigma_y) = (2, 0.5)
    sig = torch.tensor([[1.11, 1.11], [2.0, 0.5]])
    prior1 = dw_center_prior(points, strides, box, torch.tensor([1]), sigma=sig)[:, 0]
    torch.testing.assert_close(prior1, torch.tensor([1.0, math.exp(-1 / 8), math.exp(-2.0), 0.0]))


# ----------------------------------------------------------------------------- weights
def test_positive_weights_three_points_by_hand():
    # v = p_cls p_loc = [0.5, 0.1, 0.45], prior = [1, 0.5, 0.25]
    # den = e^{1.5} 0.5 + e^{0.3} 0.05 + e^{1.35} 0.1125 = 2.7422978
    # w   = [e^{2.5} 0.5, e^{0.5} 0.05, e^{2.25} 0.1125] / den = [2.22122, 0.030061, 0.389225]
    p_cls = torch.tensor([[0.5], [0.2], [0.9]])
    p_loc = torch.tensor([[1.0], [0.5], [0.5]])
    prior = torch.tensor([[1.0], [0.5], [0.25]])
    bag = torch.ones(3, 1, dtype=torch.bool)
    w = dw_positive_weights(p_cls, p_loc, prior, bag)
    torch.testing.assert_close(w[:, 0], torch.tensor([2.2212201, 0.0300609, 0.3892248]))
    # third point outside the bag: weight 0 and left out of the denominator
    # den = 2.3083375 -> w = [e^{2.5} 0.5, e^{0.5} 0.05] / den = [2.638803, 0.035712]
    bag[2] = False
    w = dw_positive_weights(p_cls, p_loc, prior, bag)
    torch.testing.assert_close(w[:, 0], torch.tensor([2.6388026, 0.0357123, 0.0]))
    # detached even with grad inputs
    pc = p_cls.clone().requires_grad_(True)
    assert not dw_positive_weights(pc, p_loc, prior, bag).requires_grad
    # empty bag -> zeros, finite
    w = dw_positive_weights(p_cls, p_loc, prior, torch.zeros(3, 1, dtype=torch.bool))
    assert torch.equal(w, torch.zeros(3, 1))


def test_negative_weights_t_curve_and_normalisation():
    # t(x) = 4/3 (1 - x^2): t(0.5) = 1, t(1) = 0. A bag of IoUs [0.5, 1.0]:
    # min t = 0, min(1, max t) = 1 -> y = [1, 0] (up to eps)
    bag = torch.ones(2, 1, dtype=torch.bool)
    y = dw_negative_weights(torch.tensor([[0.5], [1.0]]), bag, torch.tensor([0]), 1)
    torch.testing.assert_close(y[:, 0], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)

    # bag IoUs [0.3, 0.6, 0.8, 0.9] of a class-1 GT (C = 3), plus a point outside the bag:
    # t = [1.2133, 0.85333, 0.48, 0.25333]; min t = t(0.9) = 0.25333, min(1, max t) = 1
    # y(0.6) = 4/3 (0.81 - 0.36) / (1 - 0.25333) = 0.6 / 0.74667 = 0.803571
    # y(0.8) = 4/3 (0.81 - 0.64) / 0.74667 = 0.303571, y(0.9) = 0, y(0.3) = 1 (IoU < 0.5)
    ious = torch.tensor([[0.3], [0.6], [0.8], [0.9], [0.95]])
    bag = torch.tensor([[True], [True], [True], [True], [False]])
    pn = dw_negative_weights(ious, bag, torch.tensor([1]), 3)
    expected = torch.ones(5, 3)
    expected[:4, 1] = torch.tensor([1.0, 0.803571, 0.303571, 0.0])
    torch.testing.assert_close(pn, expected, atol=1e-5, rtol=0)
    assert pn.dtype == torch.float32

    # max t < 1: IoUs [0.6, 0.9] -> min(1, max t) = t(0.6) = 0.85333 -> y = [1, 0]
    pn = dw_negative_weights(
        torch.tensor([[0.6], [0.9]]), torch.ones(2, 1, dtype=torch.bool), torch.tensor([0]), 1
    )
    torch.testing.assert_close(pn[:, 0], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)

    # whole bag below 0.5 -> all ones
    pn = dw_negative_weights(
        torch.tensor([[0.1], [0.4]]), torch.ones(2, 1, dtype=torch.bool), torch.tensor([0]), 1
    )
    assert torch.equal(pn, torch.ones(2, 1))


def test_negative_weights_same_class_overlap_takes_minimum():
    # point 0 is in the bags of GT 0 and GT 1 (both class 0) and GT 2 (class 2).
    # GT 0 bag: points 0, 1, 4 with IoUs 0.8, 0.9, 0.3: min t = t(0.9) = 0.25333,
    #           min(1, max t) = min(1, t(0.3) = 1.2133) = 1 ->
    #           y = [(t(0.8) - t(0.9)) / (1 - t(0.9)), 0, 1 (IoU < 0.5)] = [0.303571, 0, 1]
    # GT 1 bag: points 0, 2 with IoUs 0.6, 0.9: min(1, max t) = t(0.6) = 0.85333 -> y = [1, 0]
    # GT 2 bag: points 0, 3 with IoUs 0.55, 0.7 -> y = [1, 0]
    # point 0, class 0: min(0.303571, 1) = 0.303571 (the reference would keep GT 1's value 1)
    ious = torch.tensor(
        [[0.8, 0.6, 0.55], [0.9, 0.0, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 0.7], [0.3, 0.0, 0.0]]
    )
    bag = torch.tensor(
        [
            [True, True, True],
            [True, False, False],
            [False, True, False],
            [False, False, True],
            [True, False, False],
        ]
    )
    pn = dw_negative_weights(ious, bag, torch.tensor([0, 0, 2]), 3)
    expected = torch.ones(5, 3)
    expected[0, 0] = 0.303571
    expected[1, 0] = 0.0
    expected[2, 0] = 0.0
    expected[3, 2] = 0.0
    torch.testing.assert_close(pn, expected, atol=1e-5, rtol=0)
    # GT order does not matter
    pn_rev = dw_negative_weights(ious.flip(1), bag.flip(1), torch.tensor([2, 0, 0]), 3)
    torch.testing.assert_close(pn_rev, pn)


def test_pairwise_iou_giou_matches_torchvision():
    torch.manual_seed(0)
    a = torch.rand(7, 2) * 50
    a = torch.cat([a, a + 5 + torch.rand(7, 2) * 30], 1)
    b = torch.rand(3, 2) * 50
    b = torch.cat([b, b + 5 + torch.rand(3, 2) * 30], 1)
    iou, gl = dw_pairwise_iou_giou(a, b)
    torch.testing.assert_close(iou, box_iou(a, b))
    ref = torch.stack([generalized_box_iou_loss(a, b[j].expand(7, 4)) for j in range(3)], 1)
    torch.testing.assert_close(gl, ref)


# ----------------------------------------------------------------------------- whole image
def reference_terms(scores, boxes, points, strides, gt, labels, sigma=1.11, eps=1e-12):
    """Straightforward per-GT loop (as the reference head), float64, min over same-class bags."""
    s = scores.double()
    bx = boxes.double()
    P, C = s.shape
    pos_cls = s.sum() * 0
    pos_loc = s.sum() * 0
    pneg = torch.ones(P, C, dtype=torch.float64)
    for j in range(gt.shape[0]):
        x1, y1, x2, y2 = gt[j].double().tolist()
        px, py = points[:, 0].double(), points[:, 1].double()
        inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        st = strides.double()
        prior = torch.exp(-(((px - cx) / st) ** 2) / (2 * sigma**2)) * torch.exp(
            -(((py - cy) / st) ** 2) / (2 * sigma**2)
        )
        prior = prior * inside
        gl = generalized_box_iou_loss(bx, gt[j].double().expand(P, 4), reduction="none")
        p_loc = torch.exp(-5 * gl)
        p_cls = s[:, labels[j]]
        v = (p_cls * p_loc).detach()
        w = torch.exp(5 * v) * v * prior / max((torch.exp(3 * v) * v * prior).sum().item(), eps)
        pos_cls = (
            pos_cls
            + (F.binary_cross_entropy(p_cls, torch.ones_like(p_cls), reduction="none") * w).sum()
        )
        pos_loc = (
            pos_loc
            + (F.binary_cross_entropy(p_loc, torch.ones_like(p_loc), reduction="none") * w).sum()
        )
        if inside.any():
            iou = box_iou(bx.detach(), gt[j : j + 1].double())[:, 0][inside]
            t = 4 / 3 * (1 - iou**2)
            y = (t - t.min() + eps) / (min(1.0, t.max().item()) - t.min() + eps)
            y[iou < 0.5] = 1
            idx = inside.nonzero()[:, 0]
            pneg[idx, labels[j]] = torch.minimum(pneg[idx, labels[j]], y)
    neg = (pneg * s**2 * F.binary_cross_entropy(s, torch.zeros_like(s), reduction="none")).sum()
    return pos_cls, pos_loc, neg, (1 - pneg).sum()


def random_image(seed, G=5, C=3):
    g = torch.Generator().manual_seed(seed)
    points, strides, _ = grid_points([(8, 8), (4, 4)], [8, 16])
    P = points.shape[0]
    xy = torch.rand(G, 2, generator=g) * 36
    gt = torch.cat([xy, xy + 12 + torch.rand(G, 2, generator=g) * 24], 1)
    gt[1] = gt[0] + torch.tensor([4.0, 3.0, 6.0, 2.0])  # same-class overlap (labels 0, 0)
    labels = torch.tensor([0, 0, 1, 2, 1][:G])
    # predicted boxes: half jittered copies of a GT (high IoU), half random boxes around the point
    pick = torch.randint(0, G, (P,), generator=g)
    jitter = gt[pick] + torch.randn(P, 4, generator=g) * 2
    half = torch.rand(P, 2, generator=g) * 20 + 1
    around = torch.cat([points - half, points + half.flip(1)], 1)
    use = torch.rand(P, 1, generator=g) < 0.5
    boxes = torch.where(use, jitter, around)
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1)
    cls_logits = torch.randn(P, C, generator=g) * 2
    obj_logits = torch.randn(P, 1, generator=g) * 2
    return points, strides, gt, labels, boxes, cls_logits, obj_logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_terms_match_per_gt_loop_reference(seed):
    points, strides, gt, labels, boxes0, cl0, ob0 = random_image(seed)
    outs, grads = [], []
    for impl in ("ours", "ref"):
        boxes = boxes0.clone().requires_grad_(True)
        cl = cl0.clone().requires_grad_(True)
        ob = ob0.clone().requires_grad_(True)
        s = cl.sigmoid() * ob.sigmoid()
        if impl == "ours":
            t = dw_image_terms(s, boxes, points, strides, gt, labels)
            vals = (t.pos_cls, t.pos_loc, t.neg, t.neg_norm)
        else:
            vals = reference_terms(s, boxes, points, strides, gt, labels)
        sum(v for v in vals[:3]).backward()
        outs.append(torch.stack([v.detach().double() for v in vals]))
        grads.append((boxes.grad.double(), cl.grad.double(), ob.grad.double()))
    assert outs[0][0] > 0 and outs[0][1] > 0 and outs[0][3] > 0  # the example exercises every term
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_gt_chunks_give_the_same_result():
    points, strides, gt, labels, boxes0, cl0, ob0 = random_image(3)
    res = []
    for chunk in (None, 2, 1):
        boxes = boxes0.clone().requires_grad_(True)
        cl = cl0.clone().requires_grad_(True)
        s = cl.sigmoid() * ob0.sigmoid()
        t = dw_image_terms(s, boxes, points, strides, gt, labels, gt_chunk_size=chunk)
        (t.pos_cls + t.pos_loc + t.neg).backward()
        res.append((torch.stack(list(t)).detach(), boxes.grad, cl.grad))
    for other in res[1:]:
        for a, b in zip(res[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="gt_chunk_size"):
        dw_image_terms(cl0.sigmoid(), boxes0, points, strides, gt, labels, gt_chunk_size=0)


def test_dw_losses_normalisation():
    points, strides, gt, labels, boxes, cl, ob = random_image(4)
    s = cl.sigmoid() * ob.sigmoid()
    t1 = dw_image_terms(s, boxes, points, strides, gt, labels)
    t2 = dw_image_terms(s, boxes, points, strides, gt[:2], labels[:2])
    out = dw_losses([t1, t2])
    n = 5 + 2
    torch.testing.assert_close(out["loss_cls_pos"], 0.25 * (t1.pos_cls + t2.pos_cls) / n)
    torch.testing.assert_close(out["loss_loc"], 0.25 * (t1.pos_loc + t2.pos_loc) / n)
    torch.testing.assert_close(out["loss_cls_neg"], (t1.neg + t2.neg) / (t1.neg_norm + t2.neg_norm))
    # externally reduced normalisers (clamped at 1)
    out = dw_losses([t1], num_gt=torch.tensor(0.5), neg_norm=torch.tensor(10.0))
    torch.testing.assert_close(out["loss_cls_pos"], 0.25 * t1.pos_cls)
    torch.testing.assert_close(out["loss_cls_neg"], t1.neg / 10)


# ----------------------------------------------------------------------------- edge cases
def _check_finite_with_grad(points, strides, gt, labels, expect_no_positive=True):
    P = points.shape[0]
    cl = torch.randn(P, 3, requires_grad=True)
    boxes = torch.cat([points - 5, points + 5], 1).requires_grad_(True)
    s = cl.sigmoid() * 0.5
    t = dw_image_terms(s, boxes, points, strides, gt, labels)
    losses = dw_losses([t])
    for v in list(t) + list(losses.values()):
        assert torch.isfinite(v).all()
    sum(losses.values()).backward()
    assert torch.isfinite(cl.grad).all() and torch.isfinite(boxes.grad).all()
    if expect_no_positive:
        assert t.pos_cls.item() == 0.0 and t.pos_loc.item() == 0.0 and t.neg_norm.item() == 0.0
        assert losses["loss_cls_pos"].requires_grad and losses["loss_loc"].requires_grad
    return t


def test_zero_gts():
    points, strides, _ = grid_points([(4, 4)], [8])
    t = _check_finite_with_grad(
        points, strides, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    )
    assert t.num_gt.item() == 0 and t.neg.item() > 0


def test_gt_smaller_than_a_stride_and_gt_outside():
    points, strides, _ = grid_points([(4, 4)], [8])
    # [1, 1, 2, 2] contains no point (points at 4, 12, ...); [100, 100, 120, 120] is off the image
    gt = torch.tensor([[1.0, 1.0, 2.0, 2.0], [100.0, 100.0, 120.0, 120.0]])
    _check_finite_with_grad(points, strides, gt, torch.tensor([0, 2]))
    # a degenerate (zero-area) GT too
    gt = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    _check_finite_with_grad(points, strides, gt, torch.tensor([1]))


def test_bf16_inputs_give_float32():
    points, strides, gt, labels, boxes, cl, ob = random_image(5)
    s = (cl.sigmoid() * ob.sigmoid()).bfloat16()
    t = dw_image_terms(s, boxes.bfloat16(), points, strides, gt.bfloat16(), labels)
    for v in t:
        assert v.dtype == torch.float32 and torch.isfinite(v)
    pr = dw_center_prior(points.bfloat16(), strides, gt, labels)
    assert pr.dtype == torch.float32
    pn = dw_negative_weights(
        torch.rand(points.shape[0], 5).bfloat16(),
        torch.ones(points.shape[0], 5, dtype=torch.bool),
        labels,
        3,
    )
    assert pn.dtype == torch.float32 and torch.isfinite(pn).all()
