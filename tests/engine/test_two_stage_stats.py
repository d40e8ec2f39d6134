"""Sampling-Free statistics of an R-CNN: counted with the model's own matchers on
synthetic_tiny_train, applied (RPN sigmoid bias, ROI softmax bias, class thresholds), cached,
and refused when a stats file was made for another matcher."""
import json
import math

import pytest
import torch

from detectron2.config import instantiate
from detectron2.structures import Boxes, pairwise_iou

from balanced_det.modeling.meta_arch.rcnn import BalancedRCNN, InitialProposalStats
from balanced_det.modeling.rpn import BalancedRPN
from balanced_det.ops import class_adaptive_thresholds, sigmoid_prior_bias
from balanced_det.stats import (
    DatasetStatsMismatchError,
    compute_dataset_stats,
    dataset_stats_parts,
    dummy_feature_maps,
    prepare_model_with_dataset_stats,
    stats_spec_from_config,
)

from conftest import all_config_files, rel
from helpers import TINY_CLASSES, tiny_cfg

SF = [p for p in all_config_files()
      if rel(p) == "Synthetic/sampling_free_faster_rcnn_effnet_lite0_FPN.py"][0]
BASE = [p for p in all_config_files() if rel(p) == "Synthetic/faster_rcnn_effnet_lite0_FPN.py"][0]


def _model(cfg):
    torch.manual_seed(0)
    return instantiate(cfg.model)


def test_statistics_with_own_matchers_applied_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache_a"))
    cfg = tiny_cfg(SF, tmp_path / "out")
    model = _model(cfg)
    assert isinstance(model, BalancedRCNN)
    stats = prepare_model_with_dataset_stats(model, cfg)
    assert set(stats.counters) == {"rpn", "roi_heads"}
    rpn, roi = model.proposal_generator, model.roi_heads

    # Independent recount (stats.py's anchor counter for the RPN, the reading written out for
    # the ROI head) with the model's anchor generator and its two different matchers.
    strides = list(rpn.anchor_generator.strides)
    k_train = rpn.post_nms_topk[True]

    def rpn_counter(size, boxes, classes):
        anchors = Boxes.cat(rpn.anchor_generator(dummy_feature_maps(size, strides)))
        if len(boxes) == 0:
            return 0, len(anchors)
        lab = rpn.anchor_matcher(pairwise_iou(Boxes(boxes), anchors))[1]
        return int((lab == 1).sum()), int((lab >= 0).sum())

    def roi_counter(size, boxes, classes):
        anchors = Boxes.cat(rpn.anchor_generator(dummy_feature_maps(size, strides)))
        a, g = len(anchors), len(boxes)
        fg = 0 if g == 0 else int(
            (roi.proposal_matcher(pairwise_iou(Boxes(boxes), anchors))[1] == 1).sum())
        k = min(k_train, a)
        return int(round(k * fg / a)) + g, k + g

    spec = stats_spec_from_config(cfg)
    spec.size_divisibility = model.backbone.size_divisibility
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache_b"))
    recount = compute_dataset_stats(spec, {"rpn": rpn_counter, "roi_heads": roi_counter},
                                    {"recount": True}, TINY_CLASSES)
    assert recount.counters == stats.counters
    assert recount.class_counts == stats.class_counts and sum(stats.class_counts) > 0
    f_rpn, f_roi = stats["rpn"].fg_fraction, stats["roi_heads"].fg_fraction
    assert 0 < f_rpn < 1 and 0 < f_roi < 1 and f_rpn != f_roi

    # applied to the model
    assert torch.allclose(rpn.rpn_head.objectness_logits.bias,
                          torch.full_like(rpn.rpn_head.objectness_logits.bias,
                                          sigmoid_prior_bias(f_rpn, 1)))
    bias = roi.box_predictor.cls_score.bias
    assert torch.allclose(bias[:TINY_CLASSES], torch.zeros(TINY_CLASSES))
    assert bias[TINY_CLASSES].item() == pytest.approx(
        math.log(TINY_CLASSES * (1 - f_roi) / f_roi), rel=1e-5)
    assert torch.allclose(roi.box_predictor.class_score_thresholds.values,
                          class_adaptive_thresholds(f_roi, stats.class_counts))

    # cached: a second model reads the file (a counter that would fail proves no recount)
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache_a"))
    model2 = _model(cfg)
    def boom(self):
        return lambda *a: (_ for _ in ()).throw(AssertionError("recounted"))

    monkeypatch.setattr(BalancedRPN, "dataset_stats_counter", boom)
    monkeypatch.setattr(InitialProposalStats, "dataset_stats_counter", boom)
    again = prepare_model_with_dataset_stats(model2, cfg)
    assert again.counters == stats.counters

    # a stats file made for another ROI matcher is refused; the right one is used
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats.to_json()))
    cfg.train.dataset_stats.stats_file = str(path)
    assert prepare_model_with_dataset_stats(_model(cfg), cfg).counters == stats.counters
    other = tiny_cfg(SF, tmp_path / "out2",
                     overrides=["model.roi_heads.proposal_matcher.thresholds=[0.6]"])
    other.train.dataset_stats.stats_file = str(path)
    with pytest.raises(DatasetStatsMismatchError, match="differs in: counters"):
        prepare_model_with_dataset_stats(_model(other), other)


def test_sampling_model_needs_no_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path))
    cfg = tiny_cfg(BASE, tmp_path / "out")
    cfg.model._target_ = BalancedRCNN
    model = _model(cfg)
    assert dataset_stats_parts(model) == {}
    assert prepare_model_with_dataset_stats(model, cfg) is None
    assert not list(tmp_path.glob("stats/*.json"))
