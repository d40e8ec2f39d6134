"""Learning from Noisy Anchors inside BalancedRetinaNet (anchor_assigner plug-in): the losses
and their gradients against the per-element reference (tests/noisy_anchor_reference.py),
images without GTs, one-image batches, bfloat16 autocast, no host sync, bad combinations."""
import math

import pytest
import torch

from detectron2.layers import cat
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from balanced_det.modeling import (
    GHMCLoss,
    GIoULoss,
    ISRPWeighting,
    NoisyAnchorAssigner,
    SmoothL1Loss,
    SoftTargetFocalLoss,
)

from balanced_det.modeling.usw import SampleWeightingNet

import noisy_anchor_reference as ref
from helpers_dense import batch

# Fractional coordinates: no IoU ties decide a top-N set.
GTS = [
    ([[10.3, 12.7, 60.1, 70.9], [70.6, 20.2, 149.3, 109.8], [30.9, 80.4, 57.2, 119.6]], [0, 1, 2]),
    ([[40.2, 30.7, 119.1, 100.3]], [1]),
]
TOPK, ALPHA, FOCAL_ALPHA, BETA = 30, 0.75, 0.5, 0.1


def _model(tiny_retinanet, **kw):
    return tiny_retinanet(anchor_assigner=NoisyAnchorAssigner(topk=TOPK, alpha=ALPHA),
                          cls_loss=SoftTargetFocalLoss(alpha=FOCAL_ALPHA, gamma=2.0),
                          box_reg_loss=SmoothL1Loss(beta=BETA), **kw)


def _forward(model, inputs):
    """Training losses from head outputs made leaves, so their gradients can be compared."""
    images = model.preprocess_image(inputs)
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    preds = [[x.detach().requires_grad_() for x in p] for p in model.head(feats)]
    with EventStorage(0):
        losses = model.forward_training(images, feats, preds, [x["instances"] for x in inputs])
    anchors = Boxes.cat(model.anchor_generator(feats)).tensor
    return losses, preds, anchors


def _reference(model, preds, anchors, gts):
    """Per-element loss values, and the soft targets and constant weights they use."""
    C = model.num_classes
    logits, deltas = model._transpose_dense_predictions(preds, [C, 4])
    logits, deltas = cat(logits, 1).detach(), cat(deltas, 1).detach()
    A = anchors.tolist()
    N, R = logits.shape[:2]
    targets = [[0.0] * R for _ in range(N)]
    weights = [[1.0] * R for _ in range(N)]
    labels = [[C] * R for _ in range(N)]
    gt_deltas = [[None] * R for _ in range(N)]
    for i, (boxes, classes) in enumerate(gts):
        if not boxes:
            continue
        ious = [[ref.iou(b, a) for a in A] for b in boxes]
        cand = ref.candidate_list(ious, TOPK)
        m = {a: ref.matched_gt(ious, a) for a in cand}
        loc = [ref.iou(ref.decode(deltas[i, a].tolist(), A[a]), boxes[m[a]]) for a in cand]
        cls = [1 / (1 + math.exp(-float(logits[i, a, classes[m[a]]]))) for a in cand]
        t, r = ref.soft_targets_and_weights(loc, cls, ALPHA)
        for a, tv, rv in zip(cand, t, r):
            targets[i][a], weights[i][a], labels[i][a] = tv, rv, classes[m[a]]
            gt_deltas[i][a] = ref.encode(A[a], boxes[m[a]])
    num_pos = sum(lab != C for row in labels for lab in row)
    normalizer = 0.9 * 100 + 0.1 * max(num_pos, 1)

    cls_el = [[[ref.soft_focal(float(logits[i, a, k]),
                               targets[i][a] if k == labels[i][a] else 0.0, FOCAL_ALPHA, 2.0)
                for k in range(C)] for a in range(R)] for i in range(N)]
    s_cls = (sum(sum(e) for img in cls_el for e in img)
             / sum(weights[i][a] * sum(cls_el[i][a]) for i in range(N) for a in range(R)))
    box_el = {(i, a): sum(ref.smooth_l1(float(deltas[i, a, j]) - gt_deltas[i][a][j], BETA)
                          for j in range(4))
              for i in range(N) for a in range(R) if gt_deltas[i][a] is not None}
    den = sum(weights[i][a] * v for (i, a), v in box_el.items())
    s_reg = sum(box_el.values()) / den if den > 0 else 1.0
    loss_cls = s_cls * sum(weights[i][a] * sum(cls_el[i][a])
                           for i in range(N) for a in range(R)) / normalizer
    loss_box = s_reg * sum(weights[i][a] * v for (i, a), v in box_el.items()) / normalizer
    return dict(loss_cls=loss_cls, loss_box_reg=loss_box, targets=targets, labels=labels,
                w_cls=[[w * s_cls for w in row] for row in weights],
                w_reg=[[w * s_reg for w in row] for row in weights], gt_deltas=gt_deltas,
                normalizer=normalizer)


def _reference_graph(model, preds, r):
    """The same loss as a float64 graph of the leaves (constants from the reference)."""
    C = model.num_classes
    logits, deltas = model._transpose_dense_predictions(preds, [C, 4])
    x, d = cat(logits, 1).double(), cat(deltas, 1).double()
    N, R = x.shape[:2]
    t = torch.zeros(N, R, C, dtype=torch.float64)
    pos = torch.zeros(N, R, dtype=torch.bool)
    gd = torch.zeros(N, R, 4, dtype=torch.float64)
    for i in range(N):
        for a in range(R):
            if r["labels"][i][a] != C:
                t[i, a, r["labels"][i][a]] = r["targets"][i][a]
                pos[i, a] = True
                gd[i, a] = torch.tensor(r["gt_deltas"][i][a], dtype=torch.float64)
    p = torch.sigmoid(x)
    el = (-FOCAL_ALPHA * t * (1 - p) ** 2 * torch.log(p)
          - (1 - FOCAL_ALPHA) * (1 - t) * p ** 2 * torch.log(1 - p))
    w_cls = torch.tensor(r["w_cls"], dtype=torch.float64)
    w_reg = torch.tensor(r["w_reg"], dtype=torch.float64)
    diff = (d - gd).abs()
    sl1 = torch.where(diff < BETA, 0.5 * diff ** 2 / BETA, diff - 0.5 * BETA).sum(-1)
    return ((el.sum(-1) * w_cls).sum() / r["normalizer"],
            (torch.where(pos, sl1, torch.zeros_like(sl1)) * w_reg).sum() / r["normalizer"])


@pytest.mark.parametrize("gts", [GTS, GTS[:1], [GTS[1], ([], [])]],
                         ids=["two images", "one image", "with an empty image"])
def test_losses_and_gradients_match_the_per_element_reference(tiny_retinanet, gts):
    torch.manual_seed(0)
    model = _model(tiny_retinanet).train()
    losses, preds, anchors = _forward(model, batch(gts))
    r = _reference(model, preds, anchors, gts)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    for k in losses:
        assert losses[k].dtype == torch.float32
        assert float(losses[k].detach()) == pytest.approx(r[k], rel=1e-4, abs=1e-7), k
    leaves = [x for p in preds for x in p]
    ref_cls, ref_box = _reference_graph(model, preds, r)
    for ours, theirs in ((losses["loss_cls"], ref_cls), (losses["loss_box_reg"], ref_box)):
        g = torch.autograd.grad(ours, leaves, retain_graph=True, allow_unused=True)
        g_ref = torch.autograd.grad(theirs, leaves, retain_graph=True, allow_unused=True)
        for a, b, leaf in zip(g, g_ref, leaves):
            a = torch.zeros_like(leaf) if a is None else a
            b = torch.zeros_like(leaf) if b is None else b
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-7)


def test_zero_gt_batch_trains_with_finite_zero_box_loss(tiny_retinanet):
    torch.manual_seed(0)
    model = _model(tiny_retinanet).train()
    with EventStorage(0):
        losses = model(batch([([], [])]))
    assert float(losses["loss_box_reg"].detach()) == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grad = model.head.cls_score.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model.head.bbox_pred.weight.grad is not None


def test_bfloat16_autocast_training_step(tiny_retinanet):
    torch.manual_seed(0)
    model = _model(tiny_retinanet).train()
    with torch.autocast("cpu", dtype=torch.bfloat16), EventStorage(0):
        losses = model(batch(GTS))
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()


def test_training_step_has_no_host_sync(tiny_retinanet, monkeypatch):
    torch.manual_seed(0)
    model = _model(tiny_retinanet).train()

    def no_sync(self, *args):
        raise AssertionError("host synchronisation in the training step")

    inputs = batch(GTS)
    for name in ("item", "__bool__", "tolist", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    with EventStorage(0):
        losses = model(inputs)
    monkeypatch.undo()
    assert all(torch.isfinite(v) for v in losses.values())


def test_default_keeps_the_matcher(tiny_retinanet):
    assert tiny_retinanet().anchor_assigner is None


@pytest.mark.parametrize("kw, message", [
    (dict(cls_loss=GHMCLoss()), "element-wise classification loss"),
    (dict(box_reg_loss=GIoULoss()), "element-wise box loss on deltas"),
    (dict(positive_weighting=ISRPWeighting()), "set one of them"),
    (dict(sample_weighting=SampleWeightingNet()), "set one of them"),
    (dict(prior_init=True), "turn them off"),
])
def test_bad_combinations_fail_at_build_time(tiny_retinanet, kw, message):
    args = dict(anchor_assigner=NoisyAnchorAssigner(), cls_loss=SoftTargetFocalLoss(),
                box_reg_loss=SmoothL1Loss(0.1))
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        tiny_retinanet(**args)


def test_a_non_assigner_is_refused(tiny_retinanet):
    with pytest.raises(ValueError, match="anchor_assigner='topk' is not valid; expected a "
                                         "AnchorAssigner object"):
        tiny_retinanet(anchor_assigner="topk")


def test_soft_target_and_weight_statistics_are_logged(tiny_retinanet):
    from balanced_det.utils.events import flush_tensor_scalars

    torch.manual_seed(0)
    model = _model(tiny_retinanet).train()
    with EventStorage(0) as storage:
        model(batch(GTS))
        logged = flush_tensor_scalars(storage)
    assert 0.0 < logged["noisy_anchor_target_mean"] <= 1.0
    assert logged["noisy_anchor_weight_max"] >= 1.0
