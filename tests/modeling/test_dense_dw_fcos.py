"""DWFCOS: the batch loss against a straightforward per-GT loop, box refinement gradients,
scores, empty bags, many GTs, bad settings."""
import math

import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou_loss

from detectron2.utils.events import EventStorage

from balanced_det.modeling.meta_arch.fcos import decode_ltrb, flatten_levels
from balanced_det.ops.points import grid_points
from balanced_det.utils.events import flush_tensor_scalars

from helpers_dense import TWO_IMAGES, batch, instances, tiny_dw_fcos


def per_gt_loop_dw_losses(scores, boxes, points, strides, gts, sigma=1.11):
    """The DW loss (docs/methods) written plainly: loops over images and GTs, every formula spelled
    out. A point in the bags of two same-class GTs takes the smaller negative weight."""
    eps = 1e-12
    pos_cls = pos_loc = neg = 0.0
    neg_norm = 0.0
    num_gt = 0
    for i, inst in enumerate(gts):
        s = scores[i]
        pneg = torch.ones_like(s)
        for j in range(len(inst)):
            gt = inst.gt_boxes.tensor[j]
            c = int(inst.gt_classes[j])
            inside = ((points[:, 0] > gt[0]) & (points[:, 0] < gt[2]) & (points[:, 1] > gt[1])
                      & (points[:, 1] < gt[3]))
            if not inside.any():
                continue
            idx = inside.nonzero()[:, 0]
            centre = (gt[:2] + gt[2:]) / 2
            d = (points[idx] - centre) / strides[idx, None]
            prior = torch.exp(-(d ** 2) / (2 * sigma ** 2)).prod(1)
            pb = boxes[i, idx]
            giou = generalized_box_iou_loss(pb, gt.expand_as(pb), reduction="none", eps=1e-6)
            p_loc = torch.exp(-5 * giou)
            p_cls = s[idx, c]
            v = (p_cls * p_loc).detach()
            w = torch.exp(5 * v) * v * prior / (torch.exp(3 * v) * v * prior).sum().clamp(min=eps)
            pos_cls = pos_cls + (w * -torch.log(p_cls)).sum()
            pos_loc = pos_loc + (w * -torch.log(p_loc)).sum()
            with torch.no_grad():
                iou = box_iou(pb, gt[None])[:, 0]
                t = 4.0 / 3.0 * (1 - iou ** 2)
                y = (t - t.min() + eps) / (min(1.0, float(t.max())) - t.min() + eps)
                y[iou < 0.5] = 1
                pneg[idx, c] = torch.minimum(pneg[idx, c], y)
        neg = neg + (pneg * s ** 2 * -torch.log(1 - s)).sum()
        neg_norm += float((1 - pneg).sum())
        num_gt += len(inst)
    return {
        "loss_cls_pos": 0.25 * pos_cls / max(num_gt, 1),
        "loss_loc": 0.25 * pos_loc / max(num_gt, 1),
        "loss_cls_neg": neg / max(neg_norm, 1.0),
    }


def crafted_batch(seed=0):
    """Points of a 128 x 160 input (P3-P7), scores and boxes with a spread of qualities."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    points, strides, _ = grid_points(sizes, [8, 16, 32, 64, 128])
    R = points.shape[0]
    logits = torch.randn(2, R, 3, generator=g) * 2
    scores = logits.sigmoid() * torch.rand(2, R, 1, generator=g).clamp(min=0.05)
    ltrb = (torch.rand(2, R, 4, generator=g) * 3 + 0.2) * strides[None, :, None]
    gts = [
        # two overlapping boxes of class 1, one of class 0, a tiny one (empty bag)
        instances([[10, 12, 60, 70], [30, 20, 90, 80], [70, 20, 150, 110], [101, 101, 103, 103]],
                  [1, 1, 0, 2]),
        instances([], []),  # an image without GTs
    ]
    return scores.requires_grad_(), ltrb.requires_grad_(), points, strides, gts


@pytest.mark.parametrize("seed", [0, 1])
def test_dw_loss_equals_per_gt_loop(seed):
    model = tiny_dw_fcos()
    scores, ltrb, points, strides, gts = crafted_batch(seed)
    boxes = decode_ltrb(points, ltrb)
    with EventStorage(0) as storage:
        ours = model.losses(scores, boxes, points, strides, gts)
        logged = flush_tensor_scalars(storage)
    ref = per_gt_loop_dw_losses(scores, boxes, points, strides, gts)
    assert set(ours) == set(ref)
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k].float(), rtol=1e-5, atol=1e-7, msg=k)
    ga = torch.autograd.grad(sum(ours.values()), (scores, ltrb))
    gb = torch.autograd.grad(sum(ref.values()), (scores, ltrb))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert logged["dw_num_gt"] == 4.0 and logged["dw_pos_weight_sum"] > 0
    assert logged["dw_neg_weight_deficit"] > 0


def test_box_refinement_passes_gradients_to_coarse_boxes_and_offsets():
    torch.manual_seed(0)
    model = tiny_dw_fcos(box_refine=True).train()
    with EventStorage(0):
        losses = model(batch(TWO_IMAGES))
    assert set(losses) == {"loss_cls_pos", "loss_loc", "loss_cls_neg"}
    losses["loss_loc"].backward()
    head = model.head
    for p in (head.reg_offset.weight, head.reg_offset.bias, head.box_pred.weight,
              head.box_pred.bias):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # the refined distances are what the loss and inference use
    model.eval()
    feats = model.backbone(model.preprocess_image(batch(TWO_IMAGES)).tensor)
    preds = model.head([feats[f] for f in model.head_in_features])
    _, strides, _ = model.points([feats[f] for f in model.head_in_features])
    coarse = model.predicted_ltrb(preds["box_reg"], strides)
    refined = model.box_distances(preds, strides)
    assert refined.shape == coarse.shape and not torch.allclose(refined, coarse)
    del preds["box_offsets"]
    torch.testing.assert_close(model.box_distances(preds, strides), coarse)


def test_inference_score_is_cls_times_obj():
    torch.manual_seed(0)
    model = tiny_dw_fcos().eval()
    preds = {"logits": [torch.randn(1, 3, 2, 2)], "quality": [torch.randn(1, 1, 2, 2)]}
    s = model.scores(preds)
    ref = flatten_levels(preds["logits"]).sigmoid() * flatten_levels(preds["quality"]).sigmoid()
    torch.testing.assert_close(s, ref)
    assert model.test_nms_thresh == 0.6 and model.test_topk_candidates == 1000
    assert model.test_score_thresh == 0.05 and model.max_detections_per_image == 100
    # head initialisation of the DW config: prior 0.02, regression bias 4.0
    torch.testing.assert_close(model.head.cls_score.bias.sigmoid(),
                               torch.full((3,), 0.02))
    torch.testing.assert_close(model.head.box_pred.bias, torch.full((4,), 4.0))


def test_gt_smaller_than_a_stride_and_many_gts():
    torch.manual_seed(0)
    model = tiny_dw_fcos(gt_chunk_size=16).train()
    tiny = ([[101, 101, 103, 103]], [0])  # no point strictly inside: empty bag
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * 120
    wh = torch.rand(300, 2, generator=g) * 30 + 2
    many = (torch.cat([xy, xy + wh], 1).tolist(), torch.randint(0, 3, (300,), generator=g).tolist())
    with EventStorage(0):
        losses = model(batch([tiny, many]))
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("kw, name", [
    (dict(center_prior_sigma=0.0), "center_prior_sigma"),
    (dict(pos_loss_weight=-1.0), "pos_loss_weight"),
    (dict(gt_chunk_size=0), "gt_chunk_size"),
    (dict(test_nms_thresh=1.5), "test_nms_thresh"),
])
def test_bad_settings_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        tiny_dw_fcos(**kw)


def test_normalisers_are_averaged_over_processes(monkeypatch):
    """num_gt and sum(1 - P_neg) are the mean over processes (the reference's reduce_mean):
    a fake second process contributes 3 GTs and a negative normaliser of 10."""
    import torch.distributed as dist

    model = tiny_dw_fcos()
    scores, ltrb, points, strides, gts = crafted_batch(0)
    boxes = decode_ltrb(points, ltrb)
    single = model.losses(scores, boxes, points, strides, gts)

    def all_reduce(t, *a, **k):
        t += torch.tensor([3.0, 10.0])

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    with EventStorage(0) as storage:
        multi = model.losses(scores, boxes, points, strides, gts)
        logged = flush_tensor_scalars(storage)
    num_gt, deficit = logged["dw_num_gt"], logged["dw_neg_weight_deficit"]
    scale_pos = max(num_gt, 1) / ((num_gt + 3) / 2)
    scale_neg = max(deficit, 1) / ((deficit + 10) / 2)
    torch.testing.assert_close(multi["loss_cls_pos"], single["loss_cls_pos"] * scale_pos)
    torch.testing.assert_close(multi["loss_loc"], single["loss_loc"] * scale_pos)
    torch.testing.assert_close(multi["loss_cls_neg"], single["loss_cls_neg"] * scale_neg)
