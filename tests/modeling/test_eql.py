"""EQLFastRCNNOutputLayers (docs/methods/eql.md): sigmoid classifier over C classes, prior
bias, equalization loss from the dataset's class frequencies, box loss on every foreground
class (the last one included), sigmoid inference; the ROI head around it on zero-GT images,
one-image batches and under bfloat16 autocast."""
import math

import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from balanced_det.modeling.roi_heads import BalancedROIHeads, EQLFastRCNNOutputLayers
from balanced_det.modeling.samplers import RandomSampler
from balanced_det.ops import eql_loss, tail_classes
from balanced_det.stats import ClassFrequencyPart, DatasetStatsSpec, compute_dataset_stats

import helpers_two_stage as H

C = H.NUM_CLASSES
FREQ = [0.4, 0.01, 0.2]   # class 1 is the tail class at lambda = 0.05
LAM = 0.05


def _predictor(frequencies=FREQ, **kw):
    torch.manual_seed(0)
    pred = H.roi_parts(predictor_cls=EQLFastRCNNOutputLayers, lambda_=LAM, **kw)["box_predictor"]
    if frequencies is not None:
        pred.apply_class_frequencies(frequencies)
    return pred


def _heads(frequencies=FREQ, **kw):
    torch.manual_seed(0)
    heads = BalancedROIHeads(sampler=RandomSampler(), **H.roi_parts(
        predictor_cls=EQLFastRCNNOutputLayers, lambda_=LAM, **kw))
    heads.box_predictor.apply_class_frequencies(frequencies)
    return heads


def _proposals(gt_classes, seed=0):
    return H.labelled_proposals(gt_classes, seed=seed)


def _predictions(n, seed=0, agnostic=False):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, C, generator=g).requires_grad_(True)
    deltas = (torch.randn(n, 4 if agnostic else 4 * C, generator=g) * 0.5).requires_grad_(True)
    return scores, deltas


LABELS = [0, 2, C, 1, C, 2, 0, C, 2]  # class C - 1 = 2 (the last class) three times


def test_classifier_has_c_logits_and_the_prior_bias():
    pred = _predictor()
    assert pred.cls_score.out_features == C and pred.bbox_pred.out_features == 4 * C
    assert torch.allclose(pred.cls_score.bias, torch.full((C,), -math.log(999.0)))
    assert pred.cls_score.bias[0].item() == pytest.approx(-6.906755, abs=1e-6)
    assert pred.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert isinstance(pred, ClassFrequencyPart)


def test_loss_cls_is_the_equalization_loss_and_box_loss_covers_the_last_class():
    pred = _predictor()
    props = _proposals(LABELS)
    scores, deltas = _predictions(len(LABELS))
    with EventStorage(0):
        losses = pred.losses((scores, deltas), [props])
    gt = torch.tensor(LABELS)
    tail = tail_classes(torch.tensor(FREQ), LAM)
    assert tail.tolist() == [False, True, False]
    assert torch.allclose(losses["loss_cls"], eql_loss(scores, gt, tail))
    # L1 (smooth_l1_beta 0) over every foreground ROI, the last class's included, / R
    target = pred.box2box_transform.get_deltas(props.proposal_boxes.tensor, props.gt_boxes.tensor)
    want = sum((deltas[i].view(C, 4)[c] - target[i]).abs().sum()
               for i, c in enumerate(LABELS) if c < C) / len(LABELS)
    assert torch.allclose(losses["loss_box_reg"], want)
    # the last class's ROIs do receive a box gradient
    (g,) = torch.autograd.grad(losses["loss_box_reg"], deltas)
    assert (g[gt == C - 1].view(-1, C, 4)[:, C - 1].abs().sum(-1) > 0).all()


def test_class_agnostic_regression():
    pred = _predictor(cls_agnostic_bbox_reg=True)
    props = _proposals(LABELS)
    scores, deltas = _predictions(len(LABELS), agnostic=True)
    with EventStorage(0):
        losses = pred.losses((scores, deltas), [props])
    target = pred.box2box_transform.get_deltas(props.proposal_boxes.tensor, props.gt_boxes.tensor)
    fg = torch.tensor(LABELS) < C
    assert torch.allclose(losses["loss_box_reg"],
                          (deltas[fg] - target[fg]).abs().sum() / len(LABELS))


def test_training_without_frequencies_fails_clearly():
    pred = _predictor(frequencies=None)
    with EventStorage(0), pytest.raises(RuntimeError, match="no class frequencies"):
        pred.losses(_predictions(len(LABELS)), [_proposals(LABELS)])


def test_frequencies_travel_with_the_state_dict():
    src = _predictor()
    dst = _predictor(frequencies=None)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.class_frequencies, torch.tensor(FREQ))
    with EventStorage(0):
        dst.losses(_predictions(len(LABELS)), [_proposals(LABELS)])  # no error


@pytest.mark.parametrize("bad", [0.0, 1.0, -1e-3, 2.0, float("inf")])
def test_bad_lambda_fails_at_build_naming_value_and_range(bad):
    with pytest.raises(ValueError, match=rf"lambda_={bad!r} is not valid; expected a number "
                                         r"in \(0.0, 1.0\)"):
        H.roi_parts(predictor_cls=EQLFastRCNNOutputLayers, lambda_=bad)


@pytest.mark.parametrize("kw", [dict(prior_init=True), dict(class_adaptive_thresholds=True)])
def test_softmax_only_options_are_refused(kw):
    with pytest.raises(ValueError, match="softmax only"):
        H.roi_parts(predictor_cls=EQLFastRCNNOutputLayers, lambda_=LAM, **kw)


def test_bad_frequencies_are_refused():
    pred = _predictor(frequencies=None)
    with pytest.raises(ValueError, match="expected 3 values in"):
        pred.apply_class_frequencies([0.1, 0.2])
    with pytest.raises(ValueError, match="expected 3 values in"):
        pred.apply_class_frequencies([0.1, 0.2, 1.5])


def test_inference_uses_per_class_sigmoid_scores():
    pred = _predictor(test_topk_per_image=300)
    pred.test_score_thresh = 1e-4
    logits = torch.tensor([[2.0, -1.0, -12.0],     # classes 0 and 1 kept (both > 1e-4)
                           [-12.0, -12.0, 0.5]])   # class 2 only
    deltas = torch.zeros(2, 4 * C)
    props = Instances(H.IMAGE)
    props.proposal_boxes = Boxes(torch.tensor([[0, 0, 10, 10], [50, 50, 70, 70]],
                                              dtype=torch.float))
    (probs,) = pred.predict_probs((logits, deltas), [props])
    assert probs.shape == (2, C + 1) and (probs[:, C] == 0).all()
    assert torch.allclose(probs[:, :C], torch.sigmoid(logits))
    (inst,), (kept,) = pred.inference((logits, deltas), [props])
    got = sorted(zip(kept.tolist(), inst.pred_classes.tolist(), inst.scores.tolist()))
    assert [(r, c) for r, c, _ in got] == [(0, 0), (0, 1), (1, 2)]
    assert got[1][2] == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item())


def _empty():
    empty = Instances(H.IMAGE)
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    return empty


def test_zero_gt_images_train_with_finite_losses_and_a_gradient_path():
    heads = _heads()
    proposals, _ = H.crafted_batch()
    heads.train()
    with EventStorage(0):
        _, losses = heads(H.image_list(), H.features(), proposals, [_empty(), _empty()])
    assert float(losses["loss_box_reg"].detach()) == 0.0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grad = heads.box_predictor.cls_score.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_batch_of_one_image_matches_the_loss_formula():
    heads = _heads()
    proposals, targets = H.crafted_batch()
    recorded = {}
    heads.sample_recorder = lambda props, preds: recorded.update(props=props, preds=preds)
    heads.train()
    with EventStorage(0):
        out, losses = heads(H.image_list(1), H.features(1), proposals[:1], targets[:1])
    assert len(out) == 1
    scores = recorded["preds"][0]
    gt = recorded["props"][0].gt_classes
    assert torch.allclose(losses["loss_cls"],
                          eql_loss(scores, gt, tail_classes(torch.tensor(FREQ), LAM)))
    sum(losses.values()).backward()


def test_bfloat16_autocast_trains_and_infers():
    heads = _heads()
    proposals, targets = H.crafted_batch()
    heads.train()
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = heads(H.image_list(), H.features(), proposals, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    heads.eval()
    heads.box_predictor.test_score_thresh = 1e-4
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = heads(H.image_list(), H.features(), proposals)
    assert all(torch.isfinite(o.scores).all() for o in out)


def test_weighting_samplers_are_refused():
    from balanced_det.modeling.samplers import ISRPWeighting

    with pytest.raises(ValueError, match="per-sample weights"):
        BalancedROIHeads(sampler=RandomSampler(), positive_weighting=ISRPWeighting(),
                         **H.roi_parts(predictor_cls=EQLFastRCNNOutputLayers, lambda_=LAM))


def test_score_hlr_is_refused_and_ohem_ranks_by_the_equalization_loss():
    from balanced_det.modeling.samplers import AllSampler, OHEMSampler, ScoreHLRSampler
    from balanced_det.ops import eql_roi_losses

    with pytest.raises(ValueError, match="per-sample weights"):
        BalancedROIHeads(sampler=ScoreHLRSampler(),
                         **H.roi_parts(predictor_cls=EQLFastRCNNOutputLayers, lambda_=LAM))
    torch.manual_seed(0)
    heads = BalancedROIHeads(sampler=OHEMSampler(), **dict(H.roi_parts(
        predictor_cls=EQLFastRCNNOutputLayers, lambda_=LAM), batch_size_per_image=8))
    heads.box_predictor.apply_class_frequencies(FREQ)
    proposals, targets = H.crafted_batch()
    recorded = {}
    heads.sample_recorder = lambda props, preds: recorded.update(props=props)
    heads.train()
    with EventStorage(0):
        _, losses = heads(H.image_list(), H.features(), proposals, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        # every labelled candidate and its equalization loss under the same weights
        heads.sampler = AllSampler()
        every = heads.label_and_sample_proposals(proposals, targets, features=H.features())
    with torch.no_grad():
        scores, _ = heads._predict_no_grad(H.features(), [e.proposal_boxes for e in every])
    scores = scores[:len(every[0])]
    loss = eql_roi_losses(scores, every[0].gt_classes, heads.box_predictor.tail_classes())
    kept = recorded["props"][0]
    num_neg = int((kept.gt_classes == C).sum())
    assert num_neg > 0
    neg = every[0].gt_classes == C
    hardest = loss.masked_fill(~neg, -1.0).topk(num_neg).indices
    want = {tuple(b) for b in every[0].proposal_boxes.tensor[hardest].tolist()}
    got = {tuple(b) for b in kept.proposal_boxes.tensor[kept.gt_classes == C].tolist()}
    assert got == want


def test_dataset_statistics_count_images_per_class():
    dicts = DatasetCatalog.get("synthetic_tiny_train")
    annotated = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d["annotations"])]
    want = [sum(any(a["category_id"] == j and not a.get("iscrowd", 0) for a in d["annotations"])
                for d in annotated) / len(annotated) for j in range(3)]
    stats = compute_dataset_stats(DatasetStatsSpec(["synthetic_tiny_train"]), {}, {}, 3,
                                  need_image_counts=True)
    assert stats.num_annotated_images == len(annotated)
    assert stats.class_frequencies == pytest.approx(want)
    # instance counts as before
    assert stats.class_counts == [sum(a["category_id"] == j for d in annotated
                                      for a in d["annotations"] if not a.get("iscrowd", 0))
                                  for j in range(3)]
