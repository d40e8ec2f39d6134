"""Sampling-Free in the dense detectors: FCOS options (BCE, guided loss, bias init, adaptive
thresholds) and the dataset-statistics counters, checked against the detectors' own training
labelers on synthetic_tiny_train."""
import copy

import pytest
import torch
import torch.nn.functional as F

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from balanced_det.data import get_detection_dataset_dicts
from balanced_det.modeling.meta_arch.fcos import flatten_levels
from balanced_det.stats import (
    dataset_stats_parts,
    _image_geometry,
    dummy_feature_maps,
    prepare_model_with_dataset_stats,
)
from balanced_det.utils.events import flush_tensor_scalars
from detectron2.config import LazyCall as L
from detectron2.structures import Boxes

from conftest import all_config_files, rel
from helpers import tiny_cfg
from helpers_dense import TWO_IMAGES, batch, tiny_fcos


def _fcos_parts(model, inputs):
    images = model.preprocess_image(inputs)
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    preds = model.head(feats)
    points, strides, counts = model.points(feats)
    labels, boxes = model.label_points(points, strides, counts, [x["instances"] for x in inputs])
    return preds, points, strides, labels, boxes


def test_fcos_bce_normalised_and_guided():
    torch.manual_seed(0)
    focal = tiny_fcos(loss_normalizer_momentum=0.0).train()
    bce = tiny_fcos(cls_loss_type="bce", loss_normalizer_momentum=0.0).train()
    guided = tiny_fcos(cls_loss_type="bce", guided_loss=True, loss_normalizer_momentum=0.0)
    bce.load_state_dict(focal.state_dict())
    guided.load_state_dict(focal.state_dict())
    guided.train()
    preds, points, strides, labels, boxes = _fcos_parts(focal, batch(TWO_IMAGES))
    with EventStorage(0) as storage:
        a = focal.losses(points, strides, preds, labels, boxes)
        b = bce.losses(points, strides, preds, labels, boxes)
        c = guided.losses(points, strides, preds, labels, boxes)
        logged = flush_tensor_scalars(storage)
    num_pos = (labels < 3).sum().float()
    logits = flatten_levels(preds["logits"])
    target = F.one_hot(labels, 4)[..., :3].float()
    ref = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / num_pos
    torch.testing.assert_close(b["loss_fcos_cls"], ref)
    for k in ("loss_fcos_loc", "loss_fcos_ctr"):
        torch.testing.assert_close(b[k], a[k])
        torch.testing.assert_close(c[k], a[k])
    r = ((b["loss_fcos_loc"] + b["loss_fcos_ctr"]) / 2 / b["loss_fcos_cls"]).detach()
    torch.testing.assert_close(c["loss_fcos_cls"], r * b["loss_fcos_cls"])
    assert logged["guided_loss_ratio"] == pytest.approx(float(r), rel=1e-5)


def test_fcos_guided_ratio_is_one_without_foreground():
    torch.manual_seed(0)
    model = tiny_fcos(cls_loss_type="bce", guided_loss=True).train()
    inputs = batch([([], []), ([], [])])
    with EventStorage(0):
        plain = tiny_fcos(cls_loss_type="bce")
        plain.load_state_dict(model.state_dict())
        a = plain.train()(inputs)
        b = model(inputs)
    torch.testing.assert_close(b["loss_fcos_cls"], a["loss_fcos_cls"])


def test_fcos_bias_init_and_thresholds():
    model = tiny_fcos(sampling_free_init=True, class_adaptive_thresholds=True)
    assert set(dataset_stats_parts(model)) == {"fcos_points"}
    model.apply_dataset_stats(12 / 1000, [1, 1, 2])
    torch.testing.assert_close(model.head.cls_score.bias.sigmoid(), torch.full((3,), 0.004))
    torch.testing.assert_close(model.class_score_thresholds.values,
                               torch.tensor([0.003, 0.003, 0.006]))
    assert dataset_stats_parts(tiny_fcos()) == {}
    # per class at inference
    model.eval()
    model.class_score_thresholds.values.copy_(torch.tensor([2.0, 2.0, -1.0]))
    with torch.no_grad():
        out = model(batch(TWO_IMAGES))
    classes = out[0]["instances"].pred_classes
    assert len(classes) > 0 and bool((classes == 2).all())


def test_fcos_unknown_loss_and_bad_values():
    with pytest.raises(ValueError, match=r"cls_loss='bce' is not valid; expected a "
                                         r"ClassificationLoss object"):
        tiny_fcos(cls_loss="bce")
    with pytest.raises(ValueError, match=r"box_reg_loss=.*FCOS regresses boxes"):
        tiny_fcos(box_reg_loss_type="balanced_l1")
    with pytest.raises(ValueError, match="center_sampling_radius"):
        tiny_fcos(center_sampling_radius=0.0)
    with pytest.raises(ValueError, match="loss_normalizer_momentum"):
        tiny_fcos(loss_normalizer_momentum=1.0)


# ----------------------------------------------------------------------------- statistics
def _cfg(name, tmp_path):
    path = [p for p in all_config_files() if rel(p) == name][0]
    cfg = tiny_cfg(path, tmp_path)
    # deterministic geometry, so the reference count below sees the same sizes
    cfg.dataloader.train.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length=128, max_size=256)]
    return cfg


def _training_images(cfg, divisibility):
    dicts = get_detection_dataset_dicts(["synthetic_tiny_train"], filter_empty=True)
    augs = [instantiate(copy.deepcopy(a)) for a in cfg.dataloader.train.mapper.augmentations]
    for d in dicts:
        (h, w), boxes, classes = _image_geometry(d, augs)
        h, w = -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.long)
        yield (h, w), inst


def test_retinanet_stats_counted_with_its_own_matcher(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache"))
    cfg = _cfg("Synthetic/sampling_free_retinanet_effnet_lite0_FPN.py", tmp_path)
    model = instantiate(cfg.model)
    stats = prepare_model_with_dataset_stats(model, cfg)
    fg = valid = 0
    for size, inst in _training_images(cfg, model.backbone.size_divisibility):
        anchors = model.anchor_generator(dummy_feature_maps(size, model.anchor_generator.strides))
        labels, _ = model.label_anchors(anchors, [inst])  # the training labeler
        fg += int(((labels[0] >= 0) & (labels[0] < model.num_classes)).sum())
        valid += int((labels[0] >= 0).sum())
    s = stats["retinanet_anchors"]
    assert (s.num_fg, s.num_valid) == (fg, valid) and fg > 0
    pi = fg / valid / model.num_classes
    bias = model.head.cls_score.bias
    torch.testing.assert_close(bias.sigmoid(), torch.full_like(bias, pi))
    total = sum(stats.class_counts)
    torch.testing.assert_close(model.class_score_thresholds.values,
                               torch.tensor([fg / valid * n / total for n in stats.class_counts]))


def test_fcos_stats_counted_with_its_own_assignment(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache"))
    cfg = _cfg("Synthetic/sampling_free_fcos_effnet_lite0_FPN.py", tmp_path)
    model = instantiate(cfg.model)
    stats = prepare_model_with_dataset_stats(model, cfg)
    fg = valid = 0
    for k, (size, inst) in enumerate(_training_images(cfg, model.backbone.size_divisibility)):
        points, strides, counts = model.points_for_image_size(size)
        if k == 0:  # the stats' level sizes are the network's on a padded input
            with torch.no_grad():
                feats = model.backbone(torch.zeros(1, 3, *size))
            real = model.points([feats[f] for f in model.head_in_features])
            torch.testing.assert_close(real[0], points)
            assert real[2] == counts
        labels, _ = model.label_points(points, strides, counts, [inst])
        fg += int((labels < model.num_classes).sum())
        valid += labels.numel()
    s = stats["fcos_points"]
    assert (s.num_fg, s.num_valid) == (fg, valid) and fg > 0
    torch.testing.assert_close(model.head.cls_score.bias.sigmoid(),
                               torch.full((3,), fg / valid / 3))
