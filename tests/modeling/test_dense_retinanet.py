"""BalancedRetinaNet: detectron2-identical default, GHM / ISR-P / CARL / Sampling-Free /
Balanced L1 plug-ins inside the detector, per-class thresholds, bad settings."""
import math

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss

from detectron2.layers import cat
from detectron2.utils.events import EventStorage

from balanced_det.modeling import (CARL, BalancedL1Loss, GHMCLoss, GHMRLoss, GuidedLoss,
                                   ISRPWeighting)
from balanced_det.ops import (
    GHMC,
    GHMR,
    aligned_iou,
    balanced_l1_loss,
    encode_box_deltas,
    isr_p_weights,
)
from balanced_det.ops.carl import carl_loss
from fvcore.nn import smooth_l1_loss
from balanced_det.stats import dataset_stats_parts

from helpers_dense import TWO_IMAGES, batch, tiny_retinanet


def _same_weights(src, dst):
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"loss_normalizer"}, (missing, unexpected)


def _dense_inputs(model, inputs):
    """Everything ``losses`` needs, from a real forward of ``model`` (train mode)."""
    images = model.preprocess_image(inputs)
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    preds = model.head(feats)
    logits, deltas = model._transpose_dense_predictions(preds, [model.num_classes, 4])
    anchors = model.anchor_generator(feats)
    gts = [x["instances"] for x in inputs]
    labels, boxes, matched = model.label_anchors_with_indices(anchors, gts)
    return dict(anchors=anchors, pred_logits=logits, gt_labels=labels, pred_anchor_deltas=deltas,
                gt_boxes=boxes, matched=matched, num_gts=[len(g) for g in gts])


def _losses(model, d, **kw):
    return model.losses(d["anchors"], d["pred_logits"], d["gt_labels"], d["pred_anchor_deltas"],
                        d["gt_boxes"], matched_gt_idxs=d["matched"], num_gts=d["num_gts"], **kw)


# ----------------------------------------------------------------------------- default
def test_focal_default_equals_detectron2_retinanet():
    torch.manual_seed(0)
    ref = tiny_retinanet(detectron2_class=True)
    ours = tiny_retinanet()
    _same_weights(ref, ours)
    ref.train()
    ours.train()
    inputs = batch(TWO_IMAGES)
    with EventStorage(0):
        for it in range(2):  # the EMA normaliser moves the same way
            la = ref(inputs)
            lb = ours(inputs)
            assert set(la) == set(lb) == {"loss_cls", "loss_box_reg"}
            for k in la:
                torch.testing.assert_close(lb[k], la[k].float(), rtol=1e-5, atol=1e-6)
            ref.zero_grad()
            ours.zero_grad()
            sum(la.values()).backward()
            sum(lb.values()).backward()
            for (n, pa), (_, pb) in zip(ref.named_parameters(), ours.named_parameters()):
                torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-7, msg=n)
    assert float(ours.loss_normalizer) == pytest.approx(ref.loss_normalizer, rel=1e-6)
    ref.eval()
    ours.eval()
    with torch.no_grad():
        oa, ob = ref(inputs), ours(inputs)
    for a, b in zip(oa, ob):
        torch.testing.assert_close(b["instances"].scores, a["instances"].scores)
        torch.testing.assert_close(b["instances"].pred_boxes.tensor,
                                   a["instances"].pred_boxes.tensor)


def test_normalizer_is_a_buffer_without_host_sync(monkeypatch):
    torch.manual_seed(0)
    model = tiny_retinanet(isr_p=True, carl=True, guided_loss=True).train()

    def no_item(self):  # any .item() in the training step fails the test
        raise AssertionError(".item() called in the training step")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    with EventStorage(0):
        losses = model(batch(TWO_IMAGES))
    monkeypatch.undo()
    assert "loss_normalizer" in model.state_dict()
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- GHM
def _ghm_targets(model, d):
    """Valid / positive anchors (N, R), one-hot targets (N, R, C) and target deltas (N, R, 4)
    of the labelled batch ``d``, written out here."""
    C = model.num_classes
    labels = torch.stack(d["gt_labels"])
    valid = labels >= 0
    pos = valid & (labels < C)
    targets = F.one_hot(torch.where(valid, labels, C), C + 1)[..., :C].float()
    anchors = cat([a.tensor for a in d["anchors"]])
    gt_boxes = torch.stack(d["gt_boxes"])
    safe = torch.where(pos[..., None], gt_boxes, anchors.expand_as(gt_boxes))
    gt_deltas = encode_box_deltas(anchors.expand_as(gt_boxes), safe, (1.0, 1.0, 1.0, 1.0))
    return valid, pos, targets, gt_deltas


def test_ghm_one_ema_update_per_iteration_over_all_levels():
    torch.manual_seed(0)
    model = tiny_retinanet(cls_loss_type="ghm", box_reg_loss_type="ghm").train()
    d = _dense_inputs(model, batch(TWO_IMAGES))
    with EventStorage(0):
        out = _losses(model, d)
    # one update: every non-empty bin counted once
    assert int(model.cls_loss.updates.max()) == 1 and int(model.box_reg_loss.updates.max()) == 1
    # equal to one GHM-C / GHM-R call over all levels and images concatenated
    C = model.num_classes
    valid, pos, targets, gt_deltas = _ghm_targets(model, d)
    logits = cat(d["pred_logits"], 1)
    ghmc = GHMC(bins=30, momentum=0.75).train()
    ref_cls = ghmc(logits.reshape(-1, C), targets.reshape(-1, C), valid.reshape(-1, 1))
    torch.testing.assert_close(out["loss_cls"], ref_cls)
    ghmr = GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0).train()
    ref_box = ghmr(cat(d["pred_anchor_deltas"], 1).reshape(-1, 4), gt_deltas.reshape(-1, 4),
                   pos.reshape(-1))
    torch.testing.assert_close(out["loss_box_reg"], ref_box)
    torch.testing.assert_close(model.cls_loss.acc_sum, ghmc.acc_sum)
    # a second iteration: at most two updates per bin; the buffers are in the state dict
    with EventStorage(1):
        _losses(model, d)
    assert int(model.cls_loss.updates.max()) == 2
    sd = model.state_dict()
    for k in ("cls_loss.acc_sum", "cls_loss.updates", "box_reg_loss.acc_sum",
              "box_reg_loss.updates", "loss_normalizer"):
        assert k in sd
    fresh = tiny_retinanet(cls_loss_type="ghm", box_reg_loss_type="ghm")
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh.cls_loss.acc_sum, model.cls_loss.acc_sum)


def test_ghm_per_level_is_the_sum_of_one_call_per_level_in_order():
    """per_level=True (mmdetection's call): loss = sum over FPN levels of a GHM call on the
    level's anchors of all images, the EMA updated after each level (reference: independent
    GHMC / GHMR modules called level by level)."""
    torch.manual_seed(0)
    model = tiny_retinanet(cls_loss_type="ghm", box_reg_loss_type="ghm").train()
    model.cls_loss = GHMCLoss(per_level=True)
    model.box_reg_loss = GHMRLoss(per_level=True)
    d = _dense_inputs(model, batch(TWO_IMAGES))
    with EventStorage(0):
        out = _losses(model, d)
    C = model.num_classes
    valid, pos, targets, gt_deltas = _ghm_targets(model, d)
    ghmc = GHMC(bins=30, momentum=0.75).train()
    ghmr = GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0).train()
    ref_cls, ref_box, start, levels_with_pos = 0.0, 0.0, 0, 0
    for logits_l, deltas_l in zip(d["pred_logits"], d["pred_anchor_deltas"]):
        sl = slice(start, start + logits_l.shape[1])
        start = sl.stop
        ref_cls = ref_cls + ghmc(logits_l.reshape(-1, C), targets[:, sl].reshape(-1, C),
                                 valid[:, sl].reshape(-1, 1))
        ref_box = ref_box + ghmr(deltas_l.reshape(-1, 4), gt_deltas[:, sl].reshape(-1, 4),
                                 pos[:, sl].reshape(-1))
        levels_with_pos += int(pos[:, sl].any())
    assert len(d["pred_logits"]) == 5 and levels_with_pos >= 2
    torch.testing.assert_close(out["loss_cls"], ref_cls)
    torch.testing.assert_close(out["loss_box_reg"], ref_box)
    torch.testing.assert_close(model.cls_loss.acc_sum, ghmc.acc_sum)
    torch.testing.assert_close(model.box_reg_loss.acc_sum, ghmr.acc_sum)
    assert torch.equal(model.cls_loss.updates, ghmc.updates)
    assert int(model.cls_loss.updates.max()) == 5  # one EMA update per level
    # it is a different loss from the one call over all levels (about 5x the weight)
    one_call = GHMC(bins=30, momentum=0.75).train()(
        cat(d["pred_logits"], 1).reshape(-1, C), targets.reshape(-1, C), valid.reshape(-1, 1))
    assert float(out["loss_cls"].detach()) > 2.0 * float(one_call.detach())
    assert "per_level=True" in repr(model.cls_loss)


# ----------------------------------------------------------------------------- PISA
def test_isr_p_weights_attached_to_the_right_anchors():
    torch.manual_seed(0)
    model = tiny_retinanet(isr_p=True).train()
    d = _dense_inputs(model, batch(TWO_IMAGES))
    with EventStorage(0):
        loss = _losses(model, d)["loss_cls"]
    normalizer = model.loss_normalizer  # updated once by the call above
    C = model.num_classes
    anchors = cat([a.tensor for a in d["anchors"]])
    # Reference, image by image: positives, their IoU with their GT, batch-unique GT ids.
    ious, ids, labels, ces, where = [], [], [], [], []
    offset = 0
    all_deltas = cat(d["pred_anchor_deltas"], 1).detach()
    all_logits = cat(d["pred_logits"], 1).detach()
    for i in range(2):
        lab = d["gt_labels"][i]
        pos = ((lab >= 0) & (lab < C)).nonzero()[:, 0]
        deltas = all_deltas[i][pos]
        pred = model.box2box_transform.apply_deltas(deltas, anchors[pos])
        ious.append(aligned_iou(pred, d["gt_boxes"][i][pos]))
        ids.append(d["matched"][i][pos] + offset)
        offset += d["num_gts"][i]
        labels.append(lab[pos])
        tgt = F.one_hot(lab[pos], C).float()
        ces.append(sigmoid_focal_loss(all_logits[i][pos], tgt, 0.25, 2.0, "none"))
        where += [(i, int(a)) for a in pos]
    w = isr_p_weights(torch.cat(ious), torch.cat(ids), torch.cat(labels), torch.cat(ces))
    assert len(where) > 10 and not torch.allclose(w, torch.ones_like(w))
    weight_map = torch.stack([(lab >= 0).float() for lab in d["gt_labels"]])
    for (i, a), wi in zip(where, w):
        weight_map[i, a] = wi
    labels_all = torch.stack(d["gt_labels"])
    targets = F.one_hot(torch.where(labels_all >= 0, labels_all, C), C + 1)[..., :C].float()
    focal = sigmoid_focal_loss(cat(d["pred_logits"], 1), targets, 0.25, 2.0, "none")
    expected = (focal * weight_map[..., None]).sum() / normalizer
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # ISR-P keeps the total positive classification loss (renormalisation)
    torch.testing.assert_close((torch.cat(ces).sum(1) * w).sum(), torch.cat(ces).sum())


def test_carl_term_reaches_the_classifier():
    torch.manual_seed(0)
    model = tiny_retinanet(carl=True).train()
    d = _dense_inputs(model, batch(TWO_IMAGES))
    with EventStorage(0):
        out = _losses(model, d)
    assert set(out) == {"loss_cls", "loss_box_reg", "loss_carl"}
    # value: CARL over the positives with sigmoid GT-class probabilities
    C = model.num_classes
    labels = torch.stack(d["gt_labels"])
    img, anc = ((labels >= 0) & (labels < C)).nonzero(as_tuple=True)
    logits = cat(d["pred_logits"], 1)
    deltas = cat(d["pred_anchor_deltas"], 1)
    anchors = cat([a.tensor for a in d["anchors"]])
    tgt = encode_box_deltas(anchors[anc], torch.stack(d["gt_boxes"])[img, anc], (1, 1, 1, 1))
    box = smooth_l1_loss(deltas[img, anc], tgt, beta=0.1, reduction="none").sum(1)
    ref = carl_loss(logits[img, anc, labels[img, anc]].sigmoid(), box, k=1.0, bias=0.2,
                    avg_factor=model.loss_normalizer)
    torch.testing.assert_close(out["loss_carl"], ref)
    out["loss_carl"].backward()
    g = model.head.cls_score.weight.grad
    assert g is not None and g.abs().sum() > 0


# ----------------------------------------------------------------------------- Libra, SF
def test_balanced_l1_box_loss():
    torch.manual_seed(0)
    model = tiny_retinanet(box_reg_loss_type="balanced_l1").train()
    d = _dense_inputs(model, batch(TWO_IMAGES))
    with EventStorage(0):
        out = _losses(model, d)
    C = model.num_classes
    labels = torch.stack(d["gt_labels"])
    img, anc = ((labels >= 0) & (labels < C)).nonzero(as_tuple=True)
    anchors = cat([a.tensor for a in d["anchors"]])
    tgt = encode_box_deltas(anchors[anc], torch.stack(d["gt_boxes"])[img, anc], (1, 1, 1, 1))
    ref = balanced_l1_loss(cat(d["pred_anchor_deltas"], 1)[img, anc], tgt, 0.5, 1.5, 0.11)
    torch.testing.assert_close(out["loss_box_reg"], ref / model.loss_normalizer)


def test_sampling_free_bce_normalised_by_positive_count():
    torch.manual_seed(0)
    # momentum 0: the normaliser is this batch's positive count (the reference's)
    model = tiny_retinanet(cls_loss_type="bce", loss_normalizer_momentum=0.0).train()
    d = _dense_inputs(model, batch(TWO_IMAGES))
    with EventStorage(0):
        out = _losses(model, d)
    C = model.num_classes
    labels = torch.stack(d["gt_labels"])
    valid = labels >= 0
    num_pos = (valid & (labels < C)).sum()
    targets = F.one_hot(torch.where(valid, labels, C), C + 1)[..., :C].float()
    bce = F.binary_cross_entropy_with_logits(cat(d["pred_logits"], 1), targets, reduction="none")
    ref = (bce * valid[..., None]).sum() / num_pos.clamp(min=1)
    torch.testing.assert_close(out["loss_cls"], ref)
    assert float(model.loss_normalizer) == float(num_pos)
    # default momentum: detectron2's EMA (initial 100)
    model2 = tiny_retinanet(cls_loss_type="bce").train()
    with EventStorage(0):
        out2 = _losses(model2, d)
    torch.testing.assert_close(out2["loss_cls"] * (0.9 * 100 + 0.1 * num_pos.float()),
                               ref * num_pos.float())


def test_guided_loss_ratio():
    torch.manual_seed(0)
    plain = tiny_retinanet(cls_loss_type="bce")
    guided = tiny_retinanet(cls_loss_type="bce", guided_loss=True)
    _same_weights(plain, guided)
    d = _dense_inputs(plain.train(), batch(TWO_IMAGES))
    guided.train()
    with EventStorage(0):
        a = _losses(plain, d)
        b = _losses(guided, d)
    r = a["loss_box_reg"].detach() / a["loss_cls"].detach()
    torch.testing.assert_close(b["loss_cls"], r * a["loss_cls"])
    torch.testing.assert_close(b["loss_box_reg"], a["loss_box_reg"])


def test_bias_init_and_class_thresholds_from_stats():
    model = tiny_retinanet(sampling_free_init=True, class_adaptive_thresholds=True)
    assert dataset_stats_parts(model) == {"retinanet_anchors": model}
    model.apply_dataset_stats(30 / 1000, [6, 3, 1])
    prob = torch.sigmoid(model.head.cls_score.bias)
    torch.testing.assert_close(prob, torch.full_like(prob, 0.03 / 3))
    torch.testing.assert_close(model.class_score_thresholds.values,
                               torch.tensor([0.018, 0.009, 0.003]))
    assert "class_score_thresholds.values" in model.state_dict()
    # not using the statistics: nothing is counted
    assert dataset_stats_parts(tiny_retinanet()) == {}
    with pytest.raises(ValueError, match="class_counts has 2 entries; expected one per class"):
        model.apply_dataset_stats(0.03, [1, 2])


def test_checkpoints_with_the_former_buffer_names_load(tmp_path):
    from balanced_det.engine import Checkpointer

    model = tiny_retinanet(class_adaptive_thresholds=True, cls_loss_type="ghm")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["class_score_thresholds"] = torch.tensor([0.1, 0.2, 0.3])
    del sd["class_score_thresholds.values"]
    for k in [k for k in sd if k.startswith("cls_loss.")]:
        sd["ghm_c." + k[len("cls_loss."):]] = sd.pop(k) + 1
    torch.save({"model": sd}, tmp_path / "old.pth")
    fresh = tiny_retinanet(class_adaptive_thresholds=True, cls_loss_type="ghm")
    Checkpointer(fresh).load(str(tmp_path / "old.pth"), strict=True)
    torch.testing.assert_close(fresh.class_score_thresholds.values, torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(fresh.cls_loss.acc_sum, model.cls_loss.acc_sum + 1)


def test_class_adaptive_thresholds_applied_per_class():
    torch.manual_seed(0)
    model = tiny_retinanet(class_adaptive_thresholds=True).eval()
    model.class_score_thresholds.values.copy_(torch.tensor([2.0, -1.0, 2.0]))  # only class 1 passes
    with torch.no_grad():
        out = model(batch(TWO_IMAGES))
    for o in out:
        classes = o["instances"].pred_classes
        assert len(classes) > 0 and bool((classes == 1).all())
    model.class_score_thresholds.values.copy_(torch.tensor([-1.0, 2.0, -1.0]))
    with torch.no_grad():
        classes = model(batch(TWO_IMAGES))[0]["instances"].pred_classes
    assert len(classes) > 0 and not bool((classes == 1).any())


# ----------------------------------------------------------------------------- bad settings
def test_losses_must_be_plugin_objects():
    with pytest.raises(ValueError, match=r"cls_loss='softmax' is not valid; expected a "
                                         r"ClassificationLoss object"):
        tiny_retinanet(cls_loss="softmax")
    with pytest.raises(ValueError,
                       match=r"box_reg_loss_type='l2' is not valid; expected one of 'smooth_l1', "
                             r"'giou'"):
        tiny_retinanet(box_reg_loss_type="l2")


@pytest.mark.parametrize("make, name", [
    (lambda: tiny_retinanet(loss_normalizer_momentum=1.0), "loss_normalizer_momentum=1.0"),
    (lambda: ISRPWeighting(beta=1.5), "beta=1.5"),
    (lambda: CARL(bias=-0.1), "bias=-0.1"),
    (lambda: BalancedL1Loss(beta=0.0), "beta=0.0"),
    (lambda: GHMCLoss(momentum=1.0), "momentum"),
    (lambda: GuidedLoss(w_cls=0.0), "w_cls=0.0"),
])
def test_out_of_range_hyperparameters_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_isr_p_with_ghm_is_refused():
    with pytest.raises(ValueError, match="positive_weighting needs an element-wise"):
        tiny_retinanet(isr_p=True, cls_loss_type="ghm")
    with pytest.raises(ValueError, match="carl needs an element-wise box loss"):
        tiny_retinanet(carl=True, box_reg_loss_type="ghm")


def test_huge_logits_stay_finite():
    torch.manual_seed(0)
    model = tiny_retinanet(isr_p=True, carl=True).train()
    d = _dense_inputs(model, batch(TWO_IMAGES))
    d["pred_logits"] = [x * 1e4 for x in d["pred_logits"]]
    with EventStorage(0):
        out = _losses(model, d)
    assert all(math.isfinite(float(v.detach())) for v in out.values())


def test_config_overrides_are_checked_against_all_arguments():
    from balanced_det.config import ConfigKeyError, load_config

    from conftest import all_config_files, rel

    path = [p for p in all_config_files()
            if rel(p) == "COCO-Detection/pisa_retinanet_R_50_FPN_1x.py"][0]
    cfg = load_config(path, ["model.carl.k=2.0", "model.smooth_l1_beta=0.11"])  # own, base
    assert cfg.model.carl.k == 2.0 and cfg.model.smooth_l1_beta == 0.11
    with pytest.raises(ConfigKeyError, match="did you mean smooth_l1_beta"):
        load_config(path, ["model.smooth_l1_bet=2.0"])
