"""ROI-head samplers and RPN: identity with detectron2, counts, weights, OHEM, Libra, none."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from balanced_det.modeling.losses import CARL, BalancedL1Loss, GIoULoss, GuidedLoss
from balanced_det.modeling.roi_heads import BalancedFastRCNNOutputLayers, BalancedROIHeads
from balanced_det.modeling.rpn import BalancedRPN
from balanced_det.modeling.samplers import (
    CombinedSampler,
    IoUBalancedNegSampler,
    ISRPWeighting,
    OHEMSampler,
    ScoreHLRSampler,
)
from balanced_det.ops import isr_p_weights

import helpers_two_stage as H
from helpers_two_stage import ROI_SAMPLERS


def _train_forward(heads, seed=5, proposals=None, targets=None, feats=None):
    if proposals is None:
        proposals, targets = H.crafted_batch()
    heads.train()
    torch.manual_seed(seed)
    with EventStorage(0):
        out, losses = heads(H.image_list(), feats if feats is not None else H.features(),
                            proposals, targets)
    return out, losses


def _sampled(heads, features=None, seed=5, proposals=None, targets=None):
    if proposals is None:
        proposals, targets = H.crafted_batch()
    heads.train()
    torch.manual_seed(seed)
    with EventStorage(0), torch.no_grad():
        return heads.label_and_sample_proposals(proposals, targets, features=features), targets


# ---- identity with detectron2 ---------------------------------------------------------------
def test_random_sampler_equals_standard_roi_heads():
    ours, ref = H.balanced_roi_heads("random"), H.standard_roi_heads()
    ours.load_state_dict(ref.state_dict())
    out_a, loss_a = _train_forward(ours)
    out_b, loss_b = _train_forward(ref)
    assert set(loss_a) == set(loss_b) == {"loss_cls", "loss_box_reg"}
    for k in loss_a:
        assert torch.allclose(loss_a[k], loss_b[k], rtol=1e-6, atol=0), k
    for a, b in zip(out_a, out_b):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.equal(a.gt_classes, b.gt_classes)
    # Inference too.
    ours.eval(), ref.eval()
    props, _ = H.crafted_batch()
    with torch.no_grad():
        pa, _ = ours(H.image_list(), H.features(), props)
        pb, _ = ref(H.image_list(), H.features(), props)
    for a, b in zip(pa, pb):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)


def test_rpn_random_equals_detectron2():
    ours, ref = H.balanced_rpn(), H.standard_rpn()
    ours.load_state_dict(ref.state_dict())
    _, targets = H.crafted_batch()
    results = []
    for m in (ours, ref):
        m.train()
        torch.manual_seed(3)
        with EventStorage(0):
            results.append(m(H.image_list(), H.features(), targets))
    (pa, la), (pb, lb) = results
    assert set(la) == set(lb)
    for k in la:
        assert torch.equal(la[k], lb[k]), k
    for a, b in zip(pa, pb):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)


# ---- counts, fractions, duplicates ------------------------------------------------------------
def _labels_of(heads, proposals, targets, append_gt=True):
    """Label of every candidate (proposals + appended GTs), computed independently."""
    out = []
    for p, t in zip(proposals, targets):
        boxes = Boxes.cat([p.proposal_boxes, t.gt_boxes]) if append_gt else p.proposal_boxes
        iou = pairwise_iou(t.gt_boxes, boxes)
        v, m = iou.max(dim=0)
        lab = t.gt_classes[m].clone()
        lab[v < 0.5] = heads.num_classes
        out.append(lab)
    return out


@pytest.mark.parametrize("sampler", ROI_SAMPLERS)
def test_sampler_counts_fractions_no_duplicates(sampler):
    heads = H.balanced_roi_heads(sampler)
    proposals, targets = H.crafted_batch()
    feats = H.features()
    labels = _labels_of(heads, proposals, targets)
    out, _ = _sampled(heads, feats, proposals=proposals, targets=targets)
    for p, t, lab, s in zip(proposals, targets, labels, out):
        n_cand = len(p) + len(t)
        idx = H.proposal_index(s)
        orig = idx[idx >= 0]
        assert orig.unique().numel() == orig.numel(), "a proposal sampled twice"
        num_gt_boxes = int((idx < 0).sum())
        assert num_gt_boxes <= len(t)
        pos = (s.gt_classes != heads.num_classes)
        n_pos_avail = int((lab != heads.num_classes).sum())
        if sampler == "none":
            assert len(s) == n_cand  # matcher without ignore band: every candidate
            assert int(pos.sum()) == n_pos_avail
        else:
            assert len(s) == min(heads.batch_size_per_image, n_cand)
            assert int(pos.sum()) == min(n_pos_avail, int(64 * 0.25))
        assert torch.equal(s.gt_classes[idx >= 0], lab[idx[idx >= 0]])
        if sampler in ("pisa",):
            assert s.has("cls_weights") and s.cls_weights.shape == (len(s),)


def test_none_keeps_every_labelled_proposal_and_drops_ignored():
    matcher = Matcher([0.3, 0.5], [0, -1, 1], allow_low_quality_matches=False)
    heads = H.balanced_roi_heads("none", matcher=matcher)
    proposals, targets = H.crafted_batch()
    out, _ = _sampled(heads, proposals=proposals, targets=targets)
    for p, t, s in zip(proposals, targets, out):
        boxes = Boxes.cat([p.proposal_boxes, t.gt_boxes])
        v = pairwise_iou(t.gt_boxes, boxes).max(dim=0).values
        keep = (v < 0.3) | (v >= 0.5)
        assert 0 < int((~keep).sum()), "the crafted batch has ignored proposals"
        assert len(s) == int(keep.sum())
        idx = H.proposal_index(s)
        assert set(idx[idx >= 0].tolist()) == set(torch.nonzero(keep[: len(p)])[:, 0].tolist())


def test_all_proposals_ignored_gives_finite_losses():
    matcher = Matcher([1.5], [-1, 1], allow_low_quality_matches=False)  # all ignored
    for sampler in ROI_SAMPLERS:
        heads = H.balanced_roi_heads(sampler, matcher=matcher)
        out, losses = _train_forward(heads)
        assert all(len(s) == 0 for s in out), sampler
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()  # a graph exists


# ---- OHEM -------------------------------------------------------------------------------------
def test_ohem_picks_the_highest_loss_rois(monkeypatch):
    heads = H.balanced_roi_heads("ohem", proposal_append_gt=False)
    proposals, targets = H.crafted_batch()
    labels = _labels_of(heads, proposals, targets, append_gt=False)
    g = torch.Generator().manual_seed(0)
    crafted = {}

    def fake_predict(features, boxes):
        scores = torch.randn(sum(len(b) for b in boxes), heads.num_classes + 1, generator=g) * 3
        crafted["scores"] = scores
        return scores, torch.zeros(scores.shape[0], 4 * heads.num_classes)

    monkeypatch.setattr(heads, "_predict_no_grad", fake_predict)
    out, _ = _sampled(heads, H.features(), proposals=proposals, targets=targets)
    scores = crafted["scores"]
    start = 0
    for lab, s in zip(labels, out):
        n = len(lab)
        ce = F.cross_entropy(scores[start:start + n], lab, reduction="none")
        start += n
        is_pos = lab != heads.num_classes
        k_pos = min(16, int(is_pos.sum()))
        k_neg = 64 - k_pos
        exp_pos = torch.nonzero(is_pos)[:, 0][ce[is_pos].topk(k_pos).indices]
        exp_neg = torch.nonzero(~is_pos)[:, 0][ce[~is_pos].topk(k_neg).indices]
        got = H.proposal_index(s)
        assert set(got.tolist()) == set(exp_pos.tolist()) | set(exp_neg.tolist())
        assert int((s.gt_classes != heads.num_classes).sum()) == k_pos


# ---- Libra --------------------------------------------------------------------------------------
def test_libra_spreads_positives_over_gts_and_negatives_over_iou_bins():
    # GT A has many positives, GT B few: instance balancing gives B ~ half of the positives.
    proposals, targets = H.crafted_image([[10, 10, 70, 70], [100, 20, 130, 50]], [0, 1],
                                         num_pos_per_gt=0, num_neg=100, seed=3)
    g = torch.Generator().manual_seed(0)
    many = H.jitter(targets.gt_boxes.tensor[:1], 80, 0.05, g)
    few = H.jitter(targets.gt_boxes.tensor[1:], 6, 0.05, g)
    boxes = torch.cat([many, few, proposals.proposal_boxes.tensor])
    proposals = proposals.__class__(H.IMAGE)
    proposals.proposal_boxes = Boxes(boxes)
    proposals.objectness_logits = -torch.arange(1, len(boxes) + 1, dtype=torch.float32)
    heads = H.balanced_roi_heads("libra")
    rand = H.balanced_roi_heads("random")
    from_b, from_b_random = [], []
    for seed in range(5):
        for h, acc in ((heads, from_b), (rand, from_b_random)):
            (s,), _ = _sampled(h, seed=seed, proposals=[proposals], targets=[targets])
            acc.append(int((s.gt_classes == 1).sum()))
    assert min(from_b) >= 5 and sum(from_b) > 2 * sum(from_b_random)
    # negatives: every non-empty IoU bin of [0, max IoU of the negatives) is drawn from
    (s,), _ = _sampled(heads, seed=0, proposals=[proposals], targets=[targets])
    neg = s.gt_classes == heads.num_classes
    iou_all = pairwise_iou(targets.gt_boxes, proposals.proposal_boxes).max(dim=0).values
    cand = iou_all[iou_all < 0.5]
    hi = float(cand.max())
    bins_avail = set((cand / (hi / 3)).floor().clamp(max=2).long().tolist())
    iou_s = pairwise_iou(targets.gt_boxes, s.proposal_boxes).max(dim=0).values[neg]
    bins_got = set((iou_s / (hi / 3)).floor().clamp(max=2).long().tolist())
    assert bins_avail == bins_got == {0, 1, 2}


# ---- PISA ---------------------------------------------------------------------------------------
def test_isr_p_weights_attached_to_the_right_positives(monkeypatch):
    heads = H.balanced_roi_heads("pisa", isr_n=False)
    with torch.no_grad():  # zero deltas: the regressed box is the proposal box
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.zero_()
    seen = {}
    orig = heads.box_predictor.losses

    def spy(predictions, proposals):
        seen["pred"], seen["props"] = predictions, proposals
        return orig(predictions, proposals)

    monkeypatch.setattr(heads.box_predictor, "losses", spy)
    _train_forward(heads)
    props = seen["props"]
    scores = seen["pred"][0].detach()
    lab = torch.cat([p.gt_classes for p in props])
    fg = lab < heads.num_classes
    w = torch.cat([p.cls_weights for p in props])
    assert torch.equal(w[~fg], torch.ones(int((~fg).sum())))  # negatives keep weight 1
    boxes = torch.cat([p.proposal_boxes.tensor for p in props])[fg]
    gts = torch.cat([p.gt_boxes.tensor for p in props])[fg]
    iou = pairwise_iou(Boxes(boxes), Boxes(gts)).diagonal()
    # batch-unique GT ids: image 1's GTs follow image 0's 3
    img = torch.cat([torch.full((len(p),), i) for i, p in enumerate(props)])[fg]
    uid = torch.cat([p.gt_uid for p in props])[fg]
    assert torch.equal(uid >= 3, img == 1)
    ce = F.cross_entropy(scores[fg], lab[fg], reduction="none")
    assert torch.allclose(w[fg], isr_p_weights(iou, uid, lab[fg], ce))
    # inside every GT, a better-localised positive never gets a smaller weight
    for u in uid.unique():
        m = uid == u
        order = iou[m].argsort(descending=True)
        assert (w[fg][m][order].diff() <= 1e-6).all()
    # loss-preserving: sum w CE over positives = sum CE
    assert torch.allclose((w[fg] * ce).sum(), ce.sum(), rtol=1e-5)


def _fake_negative_scores(heads, valid_scores):
    """Box-head outputs for negatives: the first len(valid_scores) of each image get max
    foreground probability valid_scores[i] (class 0), the rest background-sure."""
    c = heads.num_classes

    def fake_predict(features, boxes):
        rows = []
        for b in boxes:
            p = torch.full((len(b), c + 1), 1e-4)
            p[:, c] = 1 - c * 1e-4
            k = min(len(valid_scores), len(b))
            p[:k, 0] = torch.tensor(valid_scores[:k])
            p[:k, c] = 1 - p[:k, 0] - (c - 1) * 1e-4
            rows.append(p.log())
        scores = torch.cat(rows)
        return scores, torch.zeros(scores.shape[0], 4 * c)

    return fake_predict


def test_isr_n_weights_leaders_first_and_renormalised(monkeypatch):
    heads = H.balanced_roi_heads("pisa", isr_p=False)
    valid = [0.9, 0.5, 0.3, 0.2, 0.1]
    monkeypatch.setattr(heads, "_predict_no_grad", _fake_negative_scores(heads, valid))
    proposals, targets = H.crafted_batch()
    out, _ = _sampled(heads, H.features(), proposals=proposals, targets=targets)
    c = heads.num_classes
    for p, t, s in zip(proposals, targets, out):
        neg = s.gt_classes == c
        assert torch.equal(s.cls_weights[~neg], torch.ones(int((~neg).sum())))
        w = s.cls_weights[neg]
        idx = H.proposal_index(s)[neg]
        boxes = Boxes.cat([p.proposal_boxes, t.gt_boxes])
        v = pairwise_iou(t.gt_boxes, boxes).max(dim=0).values
        neg_cands = torch.nonzero(v < 0.5)[:, 0].tolist()
        # the valid negatives (the first 5 negative candidates) are all selected, first
        assert set(idx[:5].tolist()) == set(neg_cands[:5])
        # fillers share the minimum weight, valid ones weigh at least as much
        assert torch.allclose(w[5:], w[5:].min().expand(len(w) - 5))
        assert (w[:5] >= w[5:].max() - 1e-6).all()
        # the top-scoring negative leads its cluster: the largest weight
        top = neg_cands[0]
        assert w[idx.tolist().index(top)] == w.max()
        # renormalised: sum w CE = sum CE over the selected negatives (CE of the fake forward)
        pos_in = [neg_cands.index(i) for i in idx.tolist()]
        p_bg = torch.tensor([1 - valid[k] - (c - 1) * 1e-4 if k < 5 else 1 - c * 1e-4
                             for k in pos_in])
        ce = -p_bg.log()
        assert torch.allclose((w * ce).sum(), ce.sum(), rtol=1e-4)


def test_isr_n_without_valid_negatives_is_random_with_weight_one(monkeypatch):
    heads = H.balanced_roi_heads("pisa", isr_p=False)
    monkeypatch.setattr(heads, "_predict_no_grad", _fake_negative_scores(heads, []))
    out, _ = _sampled(heads, H.features())
    for s in out:
        assert len(s) == 64
        assert torch.equal(s.cls_weights, torch.ones(64))
    # and a real training step runs
    heads2 = H.balanced_roi_heads("pisa")
    _, losses = _train_forward(heads2)
    assert all(torch.isfinite(v) for v in losses.values())


# ---- errors -------------------------------------------------------------------------------------
def test_a_sampler_must_be_a_sampler_object():
    with pytest.raises(ValueError, match="sampler='hard' is not valid; expected a Sampler"):
        BalancedROIHeads(sampler="hard", **H.roi_parts())
    with pytest.raises(ValueError, match="OHEMSampler.*not valid for the RPN"):
        BalancedRPN(**H.rpn_parts(), sampler=OHEMSampler())


@pytest.mark.parametrize("make, match", [
    (lambda: ISRPWeighting(gamma=-1.0), r"gamma=-1.0 is not valid; expected a number in \[0"),
    (lambda: ScoreHLRSampler(beta=1.5), r"beta=1.5 is not valid; expected a number in \[0.0, 1.0\]"),
    (lambda: ScoreHLRSampler(score_thresh=-0.1), "score_thresh=-0.1"),
    (lambda: ScoreHLRSampler(iou_thresh=0.0), r"iou_thresh=0.0 .*\(0.0, 1.0\]"),
    (lambda: IoUBalancedNegSampler(num_bins=0), "num_bins=0 is not valid; expected an integer >= 1"),
    (lambda: IoUBalancedNegSampler(floor_fraction=2), "floor_fraction=2"),
    (lambda: IoUBalancedNegSampler(floor_thr=1.0), "floor_thr=1.0"),
    (lambda: OHEMSampler(nms_thresh=1.5), "nms_thresh=1.5"),
    (lambda: CombinedSampler(pos_sampler=IoUBalancedNegSampler()), "pos_sampler=.*PositiveSampler"),
    (lambda: CARL(bias=1.2), "bias=1.2"),
    (lambda: CARL(k=-2.0), "k=-2.0"),
    (lambda: GuidedLoss(w_cls=0.0), "w_cls=0.0"),
    (lambda: BalancedL1Loss(alpha=0), "alpha=0"),
])
def test_out_of_range_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kw, match", [
    (dict(box_reg_loss_type="l2"), "box_reg_loss_type='l2' is not valid; expected one of 'smooth_l1'"),
    (dict(box_reg_loss_type="balanced_l1"), "box_reg_loss_type='balanced_l1' is not valid"),
    (dict(box_reg_normalizer="anchors"), "box_reg_normalizer='anchors'"),
    (dict(carl=True, box_reg_loss_type="giou"), "carl / box_reg_normalizer='positives' need"),
    (dict(box_reg_loss=GIoULoss()), "expected an element-wise loss on deltas"),
    (dict(carl="yes"), "carl='yes' is not valid; expected a CARL object"),
])
def test_bad_predictor_options_are_refused(kw, match):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform

    if kw.get("carl") is True:
        kw["carl"] = CARL()
    with pytest.raises(ValueError, match=match):
        BalancedFastRCNNOutputLayers(ShapeSpec(channels=32), num_classes=3,
                                     box2box_transform=Box2BoxTransform((10, 10, 5, 5)), **kw)


def test_isr_needs_a_weighting_predictor():
    from detectron2.modeling.roi_heads import FastRCNNOutputLayers

    parts = H.roi_parts(predictor_cls=FastRCNNOutputLayers)
    with pytest.raises(ValueError, match="per-sample weights"):
        BalancedROIHeads(sampler=ScoreHLRSampler(), **parts)
    with pytest.raises(ValueError, match="per-sample weights"):
        BalancedROIHeads(positive_weighting=ISRPWeighting(), **parts)
    assert isinstance(H.balanced_roi_heads("pisa").box_predictor, BalancedFastRCNNOutputLayers)
    assert isinstance(H.balanced_rpn(), BalancedRPN)
