"""USW (docs/methods/usw.md): the weighting network's inputs, scores, weights, regularisers and
weighted losses in the ROI box predictor against a straightforward per-ROI implementation
(values and gradients), detached inputs, bf16 autocast, zero-GT and one-image batches, bad
hyperparameters."""
import math

import pytest
import torch

from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from balanced_det.modeling.usw import SampleWeightingNet
from balanced_det.ops import usw_features, usw_losses, usw_scores

import helpers_two_stage as H

C = H.NUM_CLASSES
LABELS = [0, 2, C, 1, C, C, 0, C, 2, C]
LAM = 0.5
WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CLAMP = math.log(1000.0 / 16)


def _net(**kw):
    torch.manual_seed(3)
    kw.setdefault("hidden_dim", 5)
    kw.setdefault("init_std", 1.2)  # scores in about [-2.6, 1.7]: some clamped at -2
    return SampleWeightingNet(**kw)


def _predictor(net):
    torch.manual_seed(0)
    return H.roi_parts(sample_weighting=net, smooth_l1_beta=1.0)["box_predictor"]


def _proposals(gt_classes, seed=0):
    return H.labelled_proposals(gt_classes, seed=seed, shift=3.0)


def _predictions(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(n, C + 1, generator=g) * 2).requires_grad_()
    deltas = (torch.randn(n, 4 * C, generator=g) * 0.5).requires_grad_()
    return scores, deltas


# ---- the straightforward implementation: one ROI at a time -----------------------------------
def _smooth_l1(x, beta=1.0):
    return 0.5 * x * x / beta if abs(float(x.detach())) < beta else abs(x) - 0.5 * beta


def _encode(src, dst):
    sw, sh = src[2] - src[0], src[3] - src[1]
    dw, dh = dst[2] - dst[0], dst[3] - dst[1]
    return [WEIGHTS[0] * ((dst[0] + dw / 2) - (src[0] + sw / 2)) / sw,
            WEIGHTS[1] * ((dst[1] + dh / 2) - (src[1] + sh / 2)) / sh,
            WEIGHTS[2] * torch.log(dw / sw), WEIGHTS[3] * torch.log(dh / sh)]


def _decode(d, src):
    sw, sh = src[2] - src[0], src[3] - src[1]
    cx, cy = src[0] + sw / 2, src[1] + sh / 2
    dx, dy = d[0] / WEIGHTS[0], d[1] / WEIGHTS[1]
    dw, dh = min(float(d[2] / WEIGHTS[2]), CLAMP), min(float(d[3] / WEIGHTS[3]), CLAMP)
    pcx, pcy, pw, ph = dx * sw + cx, dy * sh + cy, math.exp(dw) * sw, math.exp(dh) * sh
    return [pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2]


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _mlp_row(layers, x):
    """Manual Linear / ReLU over one input row."""
    for m in layers:
        if isinstance(m, torch.nn.Linear):
            x = torch.stack([(m.weight[j] * x).sum() + m.bias[j] for j in range(m.out_features)])
        else:
            x = torch.clamp(x, min=0.0)
    return x


def _reference(net, scores, deltas, proposal_boxes, gt_boxes, labels, pooled=True,
               score_range=(-2.0, 2.0)):
    """USW's losses, one ROI after the other (inputs detached by hand)."""
    r = len(labels)
    ce, box, feats = [], {}, []
    for i in range(r):
        prob = torch.softmax(scores[i], dim=0)
        ce.append(-torch.log(prob[labels[i]]))
        if labels[i] < C:
            g = labels[i]
            d = deltas[i, 4 * g:4 * g + 4]
            t = _encode(proposal_boxes[i], gt_boxes[i])
            box[i] = [_smooth_l1(d[k] - t[k]) for k in range(4)]
            pb = _decode([float(x) for x in d.detach()], [float(x) for x in proposal_boxes[i]])
            iou = _iou(pb, [float(x) for x in gt_boxes[i]])
            feats.append([iou, float(prob[g].detach()), float(ce[i].detach())]
                         + [float(torch.as_tensor(x).detach()) for x in box[i]])
        else:
            feats.append([0.0, 0.0, float(ce[i].detach()), 0.0, 0.0, 0.0, 0.0])
    s_cls, s_reg = [], []
    for i in range(r):
        f = torch.tensor(feats[i])
        parts = [f[0:1], f[1:2], f[2:3], f[3:7]]
        h = torch.cat([_mlp_row(b, x) for b, x in zip(net.branches, parts)])
        out = _mlp_row(net.predictor, h)
        s_cls.append(torch.clamp(out[0], *score_range))
        s_reg.append(torch.clamp(out[1], *score_range))
    pos = [i for i in range(r) if labels[i] < C]
    neg = [i for i in range(r) if labels[i] == C]
    s_pos = sum(s_cls[i] for i in pos) / len(pos) if pos else torch.zeros(())
    s_neg = sum(s_cls[i] for i in neg) / len(neg) if neg else torch.zeros(())
    if pooled:
        s_cls = [s_pos if labels[i] < C else s_neg for i in range(r)]
    loss_cls = sum(torch.exp(-s_cls[i]) * ce[i] for i in range(r)) / r
    loss_reg = sum(torch.exp(-s_reg[i]) * sum(box[i]) for i in pos) / r
    reg_mean = sum(s_reg[i] for i in pos) / len(pos) if pos else torch.zeros(())
    return {"loss_cls": loss_cls, "loss_box_reg": loss_reg,
            "loss_usw_cls": LAM * (s_pos + s_neg), "loss_usw_reg": LAM * reg_mean,
            "features": torch.tensor(feats)}


def _ours(net, scores, deltas, p, autocast=False):
    pred = _predictor(net)
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return pred.losses((scores, deltas), [p])


KEYS = ("loss_cls", "loss_box_reg", "loss_usw_cls", "loss_usw_reg")


@pytest.mark.parametrize("pooled", [True, False])
def test_losses_and_gradients_match_the_per_roi_reference(pooled):
    net = _net(cls_weighting="pooled" if pooled else "per_sample")
    p = _proposals(LABELS)
    scores, deltas = _predictions(len(LABELS))
    ours = _ours(net, scores, deltas, p)
    assert set(ours) == set(KEYS)
    s2, d2 = scores.detach().clone().requires_grad_(), deltas.detach().clone().requires_grad_()
    ref = _reference(net, s2, d2, p.proposal_boxes.tensor, p.gt_boxes.tensor, LABELS, pooled)
    for k in KEYS:
        torch.testing.assert_close(ours[k], ref[k].reshape(()), rtol=1e-5, atol=1e-6)
    params = list(net.parameters())
    for k in KEYS:
        g_ours = torch.autograd.grad(ours[k], [scores, deltas] + params, retain_graph=True,
                                     allow_unused=True)
        g_ref = torch.autograd.grad(ref[k], [s2, d2] + params, retain_graph=True,
                                    allow_unused=True)
        for a, b in zip(g_ours, g_ref):
            a = torch.zeros(()) if a is None else a
            b = torch.zeros(()) if b is None else b
            torch.testing.assert_close(a.expand_as(b) if a.dim() == 0 else a,
                                       b.expand_as(a) if b.dim() == 0 else b,
                                       rtol=1e-4, atol=1e-6)


def test_inputs_are_detached_and_the_net_gets_the_task_gradient():
    net = _net()
    p = _proposals(LABELS)
    scores, deltas = _predictions(len(LABELS))
    ours = _ours(net, scores, deltas, p)
    reg = ours["loss_usw_cls"] + ours["loss_usw_reg"]
    g = torch.autograd.grad(reg, [scores, deltas], retain_graph=True, allow_unused=True)
    assert all(x is None or not x.any() for x in g), "regularisers reach the detector"
    # the weighted task losses do reach the network's parameters (w = exp(-s) not detached)
    g_net = torch.autograd.grad(ours["loss_cls"] + ours["loss_box_reg"], list(net.parameters()),
                                allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in g_net)


def test_features_are_the_authors_inputs_with_zeros_for_negatives():
    net = _net()
    p = _proposals(LABELS)
    scores, deltas = _predictions(len(LABELS))
    ref = _reference(net, scores, deltas, p.proposal_boxes.tensor, p.gt_boxes.tensor, LABELS)
    fg = torch.tensor([lab < C for lab in LABELS])
    fg_inds = fg.nonzero()[:, 0]
    f = ref["features"]
    ours = usw_features(len(LABELS), fg_inds, f[fg_inds, 0], f[fg_inds, 1], f[:, 2], f[fg_inds, 3:])
    torch.testing.assert_close(ours, f)
    assert not ours[~fg][:, [0, 1, 3, 4, 5, 6]].any() and ours[~fg][:, 2].gt(0).all()
    assert not ours.requires_grad


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("num_fg", [0, 1, 7])
def test_net_on_positives_only_is_the_same_function(mask, num_fg):
    """forward(features, fg_inds) (the non-CE branches on the positives only) gives the
    concatenating forward's scores and parameter gradients when the other rows carry zeros
    outside the CE, as usw_features builds them."""
    net = _net(hidden_dim=6, init_std=0.7, mask=mask)
    g = torch.Generator().manual_seed(num_fg)
    R = 40
    fg_inds = torch.randperm(R, generator=g)[:num_fg]
    dims = sum(net.feature_dims)
    fg = torch.rand(num_fg, dims - 1, generator=g) * 2
    feats = usw_features(R, fg_inds, fg[:, 0], fg[:, 1], torch.rand(R, generator=g) * 3,
                         fg[:, 2:6], fg[:, 6] if mask else None)
    outs, grads = [], []
    for idx in (None, fg_inds):
        net.zero_grad()
        out = net(feats, idx) if idx is not None else net(feats)
        (out * torch.linspace(-1, 2, out.numel()).reshape_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert outs[0].abs().max() > 0.05  # not a trivial near-zero network
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_scores_clamp_and_pool():
    raw = torch.tensor([[3.0, -5.0], [1.0, 0.5], [-1.0, 2.5], [0.2, 0.0]], requires_grad=True)
    fg = torch.tensor([True, True, False, False])
    s = usw_scores(raw, fg)
    torch.testing.assert_close(s["cls"], torch.tensor([1.5, 1.5, -0.4, -0.4]))
    torch.testing.assert_close(s["reg"], torch.tensor([-2.0, 0.5, 2.0, 0.0]))
    (g,) = torch.autograd.grad(s["cls"].sum(), raw)
    # the clamped entry (3.0 -> 2) gets no gradient; the others 1/n of each pooled copy
    torch.testing.assert_close(g[:, 0], torch.tensor([0.0, 1.0, 1.0, 1.0]))


def test_optimum_of_the_pooled_positive_term_is_log_of_loss_over_lambda():
    """exp(-s) A + lam s is minimal at s* = log(A / lam) (within the clamp)."""
    a = 0.9
    s = torch.zeros(1, 2, requires_grad=True)
    fg = torch.tensor([True])
    opt = torch.optim.SGD([s], lr=0.5)
    for _ in range(300):
        sc = usw_scores(s, fg)
        out = usw_losses(torch.tensor([a]), torch.zeros(1, 4), torch.tensor([0]), fg, sc, LAM)
        opt.zero_grad()
        (out["loss_cls"] + out["loss_usw_cls"]).backward()
        opt.step()
    assert float(s[0, 0].detach()) == pytest.approx(math.log(a / LAM), abs=1e-4)


def test_bf16_autocast_matches_float32_on_the_same_inputs():
    net = _net()
    p = _proposals(LABELS)
    scores, deltas = _predictions(len(LABELS))
    sb = scores.detach().bfloat16().requires_grad_()
    db = deltas.detach().bfloat16().requires_grad_()
    ours = _ours(net, sb, db, p, autocast=True)
    ref = _ours(net, sb.detach().float(), db.detach().float(), p)
    for k in KEYS:
        assert ours[k].dtype == torch.float32
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-7)
    sum(ours.values()).backward()
    assert torch.isfinite(sb.grad.float()).all() and torch.isfinite(db.grad.float()).all()


def test_zero_gt_and_zero_rois_are_finite_zeros_with_a_graph():
    net = _net()
    p = _proposals([C] * 6)
    scores, deltas = _predictions(6)
    out = _ours(net, scores, deltas, p)
    assert float(out["loss_box_reg"].detach()) == 0.0
    assert float(out["loss_usw_reg"].detach()) == 0.0
    assert all(math.isfinite(float(v.detach())) for v in out.values())
    sum(out.values()).backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    empty = _proposals([])
    s0, d0 = _predictions(0)
    out = _ours(net, s0, d0, empty)
    assert all(float(v.detach()) == 0.0 for v in out.values())
    sum(out.values()).backward()


@pytest.mark.parametrize("batch", [1, 2])
def test_roi_head_trains_with_one_or_two_images(batch):
    torch.manual_seed(0)
    net = SampleWeightingNet()
    roi = H.balanced_roi_heads(predictor_kw={"sample_weighting": net, "smooth_l1_beta": 1.0})
    roi.train()
    proposals, targets = H.crafted_batch()
    proposals, targets = proposals[:batch], targets[:batch]
    with EventStorage(0):
        _, losses = roi(None, H.features(batch), proposals, targets)
    assert set(losses) == set(KEYS)
    sum(losses.values()).backward()
    grads = [q.grad for q in roi.box_predictor.sample_weighting.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # at the initialisation (std 1e-4) s ~ 0: the weighted losses are the plain ones
    assert abs(float(losses["loss_usw_cls"].detach())) < 1e-3


@pytest.mark.parametrize("kw, match", [
    ({"hidden_dim": 0}, r"hidden_dim=0 is not valid; expected an integer >= 1"),
    ({"lam": 0.0}, r"lam=0.0 is not valid; expected a number in \(0.0, inf\]"),
    ({"lam": -1}, r"lam=-1 is not valid"),
    ({"init_std": -1.0}, r"init_std=-1.0 is not valid"),
    ({"score_min": 2.0, "score_max": 2.0},
     r"score_max=2.0 is not valid; expected a number in \(2.0"),
    ({"cls_weighting": "mean"}, r"cls_weighting='mean' is not valid; expected one of 'pooled'"),
])
def test_bad_hyperparameters_fail_at_build_time(kw, match):
    with pytest.raises(ValueError, match=match):
        SampleWeightingNet(**kw)


def test_predictor_refuses_a_non_plugin_and_a_non_elementwise_box_loss():
    with pytest.raises(ValueError, match="sample_weighting="):
        H.roi_parts(sample_weighting="usw")
    with pytest.raises(ValueError, match="sample_weighting"):
        H.roi_parts(sample_weighting=SampleWeightingNet(), box_reg_loss_type="giou")


# ---- RetinaNet: every anchor, one classification score -------------------------------------
def _dense_inputs(num_images=2, num_anchors=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_anchors, 2, generator=g) * 80
    anchors = torch.cat([xy, xy + 16 + torch.rand(num_anchors, 2, generator=g) * 30], dim=1)
    labels = torch.randint(0, C + 1, (num_images, num_anchors), generator=g)
    labels[torch.rand(num_images, num_anchors, generator=g) < 0.1] = -1  # ignored
    gt = anchors[None] + torch.randn(num_images, num_anchors, 4, generator=g) * 3
    logits = torch.randn(num_images, num_anchors, C, generator=g).requires_grad_()
    deltas = (torch.randn(num_images, num_anchors, 4, generator=g) * 0.3).requires_grad_()
    return anchors, labels, gt, logits, deltas


def _focal(x, t, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * ce


def _dense_reference(net, anchors, labels, gt, logits, deltas, normalizer, beta):
    """USW on RetinaNet, one anchor at a time (detectron2's deltas: weights 1)."""
    n, r = labels.shape
    feats, ce, box, pos = [], [], {}, []
    for i in range(n):
        for a in range(r):
            lab = int(labels[i, a])
            if lab < 0:
                ce.append(torch.zeros(()))
            else:
                ce.append(sum(_focal(logits[i, a, k], float(k == lab)) for k in range(C)))
            if 0 <= lab < C:
                src, dst = anchors[a], gt[i, a]
                sw, sh = src[2] - src[0], src[3] - src[1]
                dw, dh = dst[2] - dst[0], dst[3] - dst[1]
                t = [((dst[0] + dw / 2) - (src[0] + sw / 2)) / sw,
                     ((dst[1] + dh / 2) - (src[1] + sh / 2)) / sh,
                     torch.log(dw / sw), torch.log(dh / sh)]
                d = deltas[i, a]
                box[len(ce) - 1] = [_smooth_l1(d[k] - t[k], beta) for k in range(4)]
                cx, cy = float(src[0] + sw / 2), float(src[1] + sh / 2)
                dd = [float(x) for x in d.detach()]
                pw, ph = math.exp(dd[2]) * float(sw), math.exp(dd[3]) * float(sh)
                px, py = dd[0] * float(sw) + cx, dd[1] * float(sh) + cy
                iou = _iou([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2],
                           [float(x) for x in dst])
                feats.append([iou, float(torch.sigmoid(logits[i, a, lab]).detach()),
                              float(ce[-1].detach())]
                             + [float(x.detach()) for x in box[len(ce) - 1]])
                pos.append(len(ce) - 1)
            else:
                feats.append([0.0, 0.0, float(ce[-1].detach()), 0.0, 0.0, 0.0, 0.0])
    s_cls, s_reg = [], []
    for f in feats:
        f = torch.tensor(f)
        h = torch.cat([_mlp_row(b, x) for b, x in zip(net.branches, [f[0:1], f[1:2], f[2:3],
                                                                         f[3:7]])])
        out = _mlp_row(net.predictor, h)
        s_cls.append(torch.clamp(out[0], -2.0, 2.0))
        s_reg.append(torch.clamp(out[1], -2.0, 2.0))
    s_all = sum(s_cls) / len(s_cls)
    loss_cls = torch.exp(-s_all) * sum(ce) / normalizer
    loss_reg = sum(torch.exp(-s_reg[j]) * sum(box[j]) for j in pos) / normalizer
    return {"loss_cls": loss_cls, "loss_box_reg": loss_reg, "loss_usw_cls": LAM * s_all,
            "loss_usw_reg": LAM * sum(s_reg[j] for j in pos) / len(pos)}


def test_retinanet_losses_and_gradients_match_the_per_anchor_reference():
    from helpers_dense import tiny_retinanet

    net = _net()
    model = tiny_retinanet(sample_weighting=net).train()
    anchors, labels, gt, logits, deltas = _dense_inputs()
    with EventStorage(0):
        ours = model.losses([Boxes(anchors)], [logits], list(labels), [deltas], list(gt))
    assert set(ours) == set(KEYS)
    normalizer = float(model.loss_normalizer)
    l2, d2 = logits.detach().clone().requires_grad_(), deltas.detach().clone().requires_grad_()
    ref = _dense_reference(net, anchors, labels, gt, l2, d2, normalizer,
                           model.box_reg_loss.beta)
    params = list(net.parameters())
    for k in KEYS:
        torch.testing.assert_close(ours[k], ref[k].reshape(()), rtol=1e-5, atol=1e-6)
        g1 = torch.autograd.grad(ours[k], [logits, deltas] + params, retain_graph=True,
                                 allow_unused=True)
        g2 = torch.autograd.grad(ref[k], [l2, d2] + params, retain_graph=True,
                                 allow_unused=True)
        for a, b in zip(g1, g2):
            a = torch.zeros_like(b) if a is None and b is not None else a
            b = torch.zeros_like(a) if b is None and a is not None else b
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    reg = ours["loss_usw_cls"] + ours["loss_usw_reg"]
    g = torch.autograd.grad(reg, [logits, deltas], allow_unused=True)
    assert all(x is None or not x.any() for x in g), "inputs are detached"


@pytest.mark.parametrize("num_images", [1, 3])
def test_retinanet_trains_with_an_odd_batch_and_without_gts(num_images):
    """The authors' RetinaNet head reshapes its weights to (2, -1): odd batches crash there."""
    from helpers_dense import batch, tiny_retinanet

    model = tiny_retinanet(sample_weighting=SampleWeightingNet()).train()
    gts = [([[10, 12, 60, 70]], [1])] + [([], [])] * (num_images - 1)
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch(gts))
    assert set(losses) == set(KEYS)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.sample_weighting.parameters())


def test_retinanet_refuses_usw_with_isr_p_or_a_non_elementwise_loss():
    from helpers_dense import tiny_retinanet

    with pytest.raises(ValueError, match="sample_weighting needs element-wise losses"):
        tiny_retinanet(sample_weighting=SampleWeightingNet(), isr_p=True)
    with pytest.raises(ValueError, match="sample_weighting needs element-wise losses"):
        tiny_retinanet(sample_weighting=SampleWeightingNet(), cls_loss_type="ghm")


# ---- Mask R-CNN: the mask-loss input and weight (the authors' SWNMask) ---------------------
def _mask_instances(num_images=2, per_image=3, seed=0, size=64):
    from detectron2.structures import Instances, PolygonMasks

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_images):
        xy = torch.rand(per_image, 2, generator=g) * size * 0.5
        boxes = torch.cat([xy, xy + 8 + torch.rand(per_image, 2, generator=g) * size * 0.4], 1)
        inst = Instances((size, size))
        inst.proposal_boxes = Boxes(boxes + torch.randn(per_image, 4, generator=g))
        inst.gt_classes = torch.randint(C, (per_image,), generator=g)
        inst.gt_masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].numpy()] for b in boxes])
        out.append(inst)
    return out


@pytest.mark.parametrize("agnostic", [False, True])
def test_roi_mask_losses_are_the_per_roi_terms_of_detectrons_mask_loss(agnostic):
    from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
    from balanced_det.modeling.mask_head import roi_mask_losses

    inst = _mask_instances()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 1 if agnostic else C, 28, 28, generator=g)
    per_roi = roi_mask_losses(logits, inst)
    assert per_roi.shape == (6,)
    with EventStorage(0):
        assert float(per_roi.mean()) == pytest.approx(float(mask_rcnn_loss(logits, inst)), rel=1e-6)
    # ROI 4 (image 1, second box) by hand: BCE of its GT-class channel, mean over pixels
    target = inst[1].gt_masks.crop_and_resize(inst[1].proposal_boxes.tensor, 28)[1].float()
    x = logits[4, 0 if agnostic else int(inst[1].gt_classes[1])]
    p = torch.sigmoid(x)
    want = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert float(per_roi[4]) == pytest.approx(float(want), rel=1e-5)


def test_usw_mask_features_and_net_shapes():
    net = _net(mask=True)
    assert len(net.branches) == 5 and net.predictor[-1].out_features == 3
    feats = usw_features(4, torch.tensor([1, 3]), torch.tensor([0.5, 0.7]),
                         torch.tensor([0.2, 0.9]), torch.tensor([1.0, 2.0, 3.0, 4.0]),
                         torch.ones(2, 4), mask_loss=torch.tensor([0.3, 0.6]))
    assert feats.shape == (4, 8) and feats[:, 7].tolist() == pytest.approx([0, 0.3, 0, 0.6])
    assert net(feats).shape == (4, 3)


def test_mask_loss_is_weighted_by_exp_minus_s_mask_and_trains_the_net(tmp_path):
    from balanced_det.engine import build_model
    from detectron2.config import instantiate
    from helpers import tiny_cfg

    from conftest import ROOT

    cfg = tiny_cfg(f"{ROOT}/configs/Synthetic/usw_mask_rcnn_effnet_lite0_FPN.py", tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    last = model.roi_heads.box_predictor.sample_weighting.predictor[-1]
    out = {}
    for s in (0.0, math.log(2.0)):
        with torch.no_grad():  # s = (0, 0, s) for every ROI
            last.weight.zero_()
            last.bias.copy_(torch.tensor([0.0, 0.0, s]))
        torch.manual_seed(3)  # the same sampled ROIs in both runs
        with EventStorage(0):
            out[s] = model(batch)
    plain, half = out[0.0], out[math.log(2.0)]
    value = {s: {k: float(v.detach()) for k, v in o.items()} for s, o in out.items()}
    plain_v, half_v = value[0.0], value[math.log(2.0)]
    assert half_v["loss_mask"] == pytest.approx(0.5 * plain_v["loss_mask"], rel=1e-5)
    assert half_v["loss_usw_mask"] == pytest.approx(LAM * math.log(2.0), rel=1e-6)
    assert plain_v["loss_usw_mask"] == 0.0
    # d loss_mask / d s_mask = -w mean_i l_i over the positives: the bias gets -0.5 L_plain
    model.zero_grad()
    half["loss_mask"].backward()
    assert float(last.bias.grad[2]) == pytest.approx(-0.5 * plain_v["loss_mask"], rel=1e-4)
    assert float(last.bias.grad[0]) == 0.0 and float(last.bias.grad[1]) == 0.0


def test_mask_weighting_needs_the_weighted_mask_head_and_retinanet_refuses_it():
    from balanced_det.config import load_config
    from balanced_det.modeling.roi_heads import BalancedROIHeads
    from detectron2.config import instantiate

    from conftest import ROOT

    with pytest.raises(ValueError, match="WeightedMaskRCNNConvUpsampleHead"):
        BalancedROIHeads(**H.roi_parts(sample_weighting=_net(mask=True), smooth_l1_beta=1.0))
    cfg = load_config(f"{ROOT}/configs/Synthetic/usw_retinanet_effnet_lite0_FPN.py")
    cfg.model.sample_weighting.mask = True
    cfg.model.backbone.pretrained = False
    with pytest.raises(ValueError, match="mask=True"):
        instantiate(cfg.model)
