"""balanced_det.ops.dw: the bag-pair computation of ``dw_image_terms`` / ``dw_image_weights``
equals the dense (P, G) form of tests/ops/dw_dense_reference.py (values and gradients), for every
GT chunking, zero GTs, empty bags and crowded images."""

import pytest
import torch

from balanced_det.ops.dw import EPS, dw_image_terms, dw_image_weights
from balanced_det.ops.points import grid_points

from dw_dense_reference import (
    dw_candidate_bag,
    dw_center_prior,
    dw_negative_weights,
    dw_pairwise_iou_giou,
    dw_positive_weights,
)


def dense_terms(s, boxes, points, strides, gt, labels, sigma=1.11):
    """The loss terms in dense (P, G) form, one chunk."""
    s = s.float()
    P, C = s.shape
    bag = dw_candidate_bag(points, gt)
    prior = dw_center_prior(points, strides, gt, labels, sigma, bag)
    with torch.no_grad():
        iou, giou = dw_pairwise_iou_giou(boxes.detach(), gt)
        w_pos = dw_positive_weights(s.detach()[:, labels], torch.exp(-5 * giou), prior, bag)
        neg_w = dw_negative_weights(iou, bag, labels, C)
        cls_w = torch.zeros(P, C).scatter_add_(1, labels[None].expand(P, -1), w_pos)
    _, giou_g = dw_pairwise_iou_giou(boxes, gt)
    pos_loc = (w_pos * 5 * giou_g).sum()
    pos_cls = (cls_w * -torch.log(s.clamp(min=EPS))).sum()
    neg = (neg_w * s * s * -torch.log((1 - s).clamp(min=EPS))).sum()
    return (pos_cls, pos_loc, neg, (1 - neg_w).sum(), w_pos.sum()), w_pos, neg_w


def image(seed, G=6, C=4, sizes=((10, 12), (5, 6), (3, 3)), strides=(8, 16, 32)):
    g = torch.Generator().manual_seed(seed)
    points, strd, _ = grid_points(list(sizes), list(strides))
    P = points.shape[0]
    xy = torch.rand(G, 2, generator=g) * 60
    gt = torch.cat([xy, xy + 6 + torch.rand(G, 2, generator=g) * 50], 1)
    if G >= 2:
        gt[1] = gt[0] + torch.tensor([3.0, 2.0, 5.0, 1.0])  # overlapping same-class pair
    if G >= 3:
        gt[2] = torch.tensor([1.0, 1.0, 2.0, 2.0])  # no point inside: empty bag
    labels = torch.randint(0, C, (G,), generator=g)
    if G >= 2:
        labels[1] = labels[0]
    pick = torch.randint(0, max(G, 1), (P,), generator=g)
    base = gt[pick] if G else torch.cat([points - 8, points + 8], 1)
    boxes = base + torch.randn(P, 4, generator=g) * 3
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1)
    cl = torch.randn(P, C, generator=g) * 2
    ob = torch.randn(P, 1, generator=g)
    return points, strd, gt, labels, boxes, cl, ob


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk", [None, 256, 4, 1])
def test_weights_equal_the_dense_functions(seed, chunk):
    points, strd, gt, labels, boxes, cl, ob = image(seed)
    s = cl.sigmoid() * ob.sigmoid()
    _, w_dense, neg_dense = dense_terms(s, boxes, points, strd, gt, labels)
    out = dw_image_weights(s, boxes, points, strd, gt, labels, gt_chunk_size=chunk)
    bag = dw_candidate_bag(points, gt)
    # the pairs are exactly the bag, GT-major, no duplicates
    gj, pi = bag.t().nonzero().unbind(1)
    assert torch.equal(out.point_idx, pi) and torch.equal(out.gt_idx, gj)
    w = torch.zeros_like(w_dense)
    w[out.point_idx, out.gt_idx] = out.pos
    torch.testing.assert_close(w, w_dense, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.dense_neg(), neg_dense, rtol=0, atol=1e-6)
    # stored: entries of the pairs' (point, class), each once, ascending, all below 1
    keys = out.point_idx * s.shape[1] + labels[out.gt_idx]
    assert bool((out.neg_idx[1:] > out.neg_idx[:-1]).all()) and bool((out.neg < 1).all())
    assert bool(torch.isin(out.neg_idx, keys).all()) and out.shape == tuple(s.shape)
    assert out.pos.dtype == torch.float32 and out.neg.dtype == torch.float32
    assert (out.neg < 1).any() and not out.pos.requires_grad


def test_weights_with_per_class_sigma():
    points, strd, gt, labels, boxes, cl, ob = image(2)
    s = cl.sigmoid() * ob.sigmoid()
    sig = torch.tensor([[1.11, 1.11], [2.0, 0.5], [0.7, 1.5], [1.0, 3.0]])
    _, w_dense, _ = dense_terms(s, boxes, points, strd, gt, labels, sigma=sig)
    out = dw_image_weights(s, boxes, points, strd, gt, labels, sigma=sig)
    w = torch.zeros_like(w_dense)
    w[out.point_idx, out.gt_idx] = out.pos
    torch.testing.assert_close(w, w_dense, rtol=1e-5, atol=1e-7)


def test_a_tiny_sigma_keeps_the_weights_finite():
    """sigma = 1e-20: 2 sigma^2 underflows towards 0, so the prior is 1 for a point on the GT
    centre's row and column and 0 elsewhere, never 0 / 0 or 0 * inf."""
    points = torch.tensor([[8.0, 8.0], [4.0, 8.0], [12.0, 12.0]])
    strd = torch.full((3,), 8.0)
    gt = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = torch.cat([points - 4, points + 4], 1)
    s = torch.full((3, 2), 0.5)
    out = dw_image_weights(s, boxes, points, strd, gt, torch.tensor([0]), sigma=1e-20)
    assert torch.isfinite(out.pos).all() and out.pos[0] > 0 and (out.pos[1:] == 0).all()
    _, w_dense, _ = dense_terms(s, boxes, points, strd, gt, torch.tensor([0]), sigma=1e-20)
    torch.testing.assert_close(out.pos, w_dense[:, 0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("chunk", [None, 2])
def test_terms_and_gradients_equal_the_dense_form(chunk):
    points, strd, gt, labels, boxes0, cl0, ob0 = image(3)
    res = []
    for impl in ("sparse", "dense"):
        boxes = boxes0.clone().requires_grad_(True)
        cl = cl0.clone().requires_grad_(True)
        ob = ob0.clone().requires_grad_(True)
        s = cl.sigmoid() * ob.sigmoid()
        if impl == "sparse":
            t = dw_image_terms(s, boxes, points, strd, gt, labels, gt_chunk_size=chunk)
            vals = (t.pos_cls, t.pos_loc, t.neg, t.neg_norm, t.pos_weight)
        else:
            vals = dense_terms(s, boxes, points, strd, gt, labels)[0]
        (vals[0] + vals[1] + vals[2]).backward()
        res.append((torch.stack([v.detach() for v in vals]), boxes.grad, cl.grad, ob.grad))
    assert res[0][0][0] > 0 and res[0][0][1] > 0 and res[0][0][3] > 0
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_no_grad_mode_gives_the_same_values():
    points, strd, gt, labels, boxes, cl, ob = image(4)
    s = cl.sigmoid() * ob.sigmoid()
    a = dw_image_terms(s, boxes, points, strd, gt, labels)
    with torch.no_grad():
        b = dw_image_terms(s, boxes.requires_grad_(True), points, strd, gt, labels)
        c = dw_image_terms(s, boxes, points, strd, gt, labels, gt_chunk_size=2)
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x.detach(), y)
        torch.testing.assert_close(x.detach(), z, rtol=1e-5, atol=1e-6)
        assert not y.requires_grad


def test_zero_gts_and_only_empty_bags():
    points, strd, _, _, boxes, cl, ob = image(5)
    s = (cl.sigmoid() * ob.sigmoid()).requires_grad_(True)
    boxes.requires_grad_(True)
    P, C = s.shape
    for gt, labels in ((torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
                       (torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([2]))):
        w = dw_image_weights(s, boxes, points, strd, gt, labels)
        assert w.point_idx.numel() == 0 and w.pos.numel() == 0
        assert w.neg_idx.numel() == 0 and torch.equal(w.dense_neg(), torch.ones(P, C))
        t = dw_image_terms(s, boxes, points, strd, gt, labels)
        assert t.pos_cls.item() == 0 and t.pos_loc.item() == 0 and t.neg_norm.item() == 0
        assert t.pos_cls.requires_grad and t.pos_loc.requires_grad
        (t.pos_cls + t.pos_loc + t.neg).backward()
        assert torch.isfinite(s.grad).all() and torch.isfinite(boxes.grad).all()
        s.grad = boxes.grad = None


def test_crowded_image_chunks_agree():
    """120 GTs on a small grid, many bags overlapping: one chunk, chunks of 16 (checkpointed
    localisation term) and the dense form agree, gradients included."""
    points, strd, gt, labels, boxes0, cl0, ob0 = image(6, G=120, C=5)
    res = []
    for chunk in (None, 16, "dense"):
        boxes = boxes0.clone().requires_grad_(True)
        cl = cl0.clone().requires_grad_(True)
        s = cl.sigmoid() * ob0.sigmoid()
        if chunk == "dense":
            vals = dense_terms(s, boxes, points, strd, gt, labels)[0]
        else:
            t = dw_image_terms(s, boxes, points, strd, gt, labels, gt_chunk_size=chunk)
            vals = (t.pos_cls, t.pos_loc, t.neg, t.neg_norm, t.pos_weight)
        (vals[0] + vals[1] + vals[2]).backward()
        res.append((torch.stack([v.detach() for v in vals]), boxes.grad, cl.grad))
    for other in res[1:]:
        for a, b in zip(res[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_points_on_box_edges_are_outside():
    points = torch.tensor([[4.0, 8.0], [8.0, 4.0], [8.0, 8.0], [12.0, 8.0], [8.0, 12.0]])
    strd = torch.full((5,), 8.0)
    gt = torch.tensor([[4.0, 4.0, 12.0, 12.0]])
    w = dw_image_weights(torch.full((5, 2), 0.5), torch.cat([points - 4, points + 4], 1),
                         points, strd, gt, torch.tensor([1]))
    assert w.point_idx.tolist() == [2] and w.gt_idx.tolist() == [0]
    assert dw_candidate_bag(points, gt)[:, 0].tolist() == [False, False, True, False, False]


@pytest.mark.parametrize("shrink", [0.0, 1.0])
def test_a_one_pair_bag_is_not_a_negative(shrink):
    """A bag of one point (IoU 1, or IoU (6/8)^2 = 0.5625 >= 0.5 with the box shrunk by 1 px per
    side): min t = max t, so y = (0 + eps) / (0 + eps) = 1 and P_neg stays 1 there, as in the
    reference formula; nothing is stored and the negative normaliser is 0."""
    points = torch.tensor([[4.0, 8.0], [8.0, 4.0], [8.0, 8.0], [12.0, 8.0], [8.0, 12.0]])
    strd = torch.full((5,), 8.0)
    gt = torch.tensor([[4.0, 4.0, 12.0, 12.0]])
    boxes = torch.cat([points - 4 + shrink, points + 4 - shrink], 1)
    s = torch.full((5, 2), 0.5)
    w = dw_image_weights(s, boxes, points, strd, gt, torch.tensor([1]))
    assert w.point_idx.tolist() == [2] and w.neg_idx.numel() == 0
    iou, _ = dw_pairwise_iou_giou(boxes, gt)
    assert abs(iou[2, 0].item() - (1.0 if shrink == 0 else 0.5625)) < 1e-6
    dense = dw_negative_weights(iou, dw_candidate_bag(points, gt), torch.tensor([1]), 2)
    assert torch.equal(dense, torch.ones(5, 2)) and torch.equal(w.dense_neg(), dense)
    t = dw_image_terms(s, boxes, points, strd, gt, torch.tensor([1]))
    assert t.neg_norm.item() == 0


def test_fused_negative_sum_matches_autograd():
    from balanced_det.ops.dw import _NegativeSum

    g = torch.Generator().manual_seed(7)
    s0 = torch.rand(50, 6, generator=g)
    s0[0, :4] = torch.tensor([0.0, 1.0, 1 - 1e-8, 0.999])  # clamp active at 1 and 1 - 1e-8
    res = []
    for fused in (True, False):
        s = s0.clone().requires_grad_(True)
        if fused:
            val = _NegativeSum.apply(s)
        else:
            val = (s * s * -torch.log((1 - s).clamp(min=EPS))).sum()
        (3.0 * val).backward()
        res.append((val.detach(), s.grad))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert torch.isfinite(a).all()


def test_touched_negatives_take_the_minimum_per_entry():
    from balanced_det.ops.dw import _touched_negatives

    # entry 5 is touched by three pairs (a point inside three boxes of one class): min at its
    # first pair, 1 at the others
    keys = torch.tensor([5, 2, 5, 7, 5])
    order, neg = _touched_negatives(keys, torch.tensor([0.3, 0.9, 0.1, 1.0, 0.6]))
    assert keys[order].tolist() == [2, 5, 5, 5, 7]
    torch.testing.assert_close(neg, torch.tensor([0.9, 0.1, 1.0, 1.0, 1.0]))
    order, neg = _touched_negatives(torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert order.numel() == 0 and neg.numel() == 0
