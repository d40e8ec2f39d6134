"""Dataset statistics (Sampling-Free): counts with a real detectron2 anchor generator/matcher,
cache reuse, and refusal of statistics made for other settings."""
import json

import pytest
import torch
from torch import nn

import detectron2.data.transforms as T
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou

from balanced_det.data import cache_dir
from balanced_det.stats import (
    DatasetStatsMismatchError,
    DatasetStatsSpec,
    AnchorCache,
    DatasetStats,
    anchor_stats_counter,
    compute_dataset_stats,
    count_matched_anchors,
    dummy_feature_maps,
)

STRIDES = [8, 16, 32]


def _anchor_parts(thresholds=(0.4, 0.5)):
    gen = DefaultAnchorGenerator(sizes=[[32], [64], [128]], aspect_ratios=[1.0], strides=STRIDES,
                                 offset=0.0)
    matcher = Matcher(list(thresholds), [0, -1, 1], allow_low_quality_matches=True)
    return gen, matcher


def test_count_matched_anchors_by_hand():
    gen, matcher = _anchor_parts()
    # 64x64 image: 8x8 + 4x4 + 2x2 = 84 anchors. One GT equal to an anchor of level 1.
    anchors = Boxes.cat(gen(dummy_feature_maps((64, 64), STRIDES)))
    assert len(anchors) == 84
    assert torch.equal(AnchorCache(gen)((64, 64)).tensor, anchors.tensor)
    gt = anchors.tensor[64 + 5: 64 + 6].clone()
    fg, valid = count_matched_anchors(anchors, matcher, gt)
    iou = pairwise_iou(Boxes(gt), anchors)[0]
    assert fg == int((iou >= 0.5).sum()) and fg >= 1
    assert valid == 84 - int(((iou >= 0.4) & (iou < 0.5)).sum())
    assert count_matched_anchors(anchors, matcher, torch.zeros(0, 4)) == (0, 84)
    assert anchor_stats_counter(gen, matcher)((64, 64), gt, torch.zeros(1)) == (fg, valid)
    # a matcher whose lowest band is "ignore": no valid anchor on an image without GTs
    ignore_low = Matcher([0.5], [-1, 1], allow_low_quality_matches=False)
    assert count_matched_anchors(anchors, ignore_low, torch.zeros(0, 4)) == (0, 0)


def _spec(**kw):
    augs = [T.ResizeShortestEdge(short_edge_length=96, max_size=200)]
    return DatasetStatsSpec(dataset_names=["synthetic_tiny_train"], augmentations=augs,
                            size_divisibility=32, **kw)


def _counters(thresholds=(0.4, 0.5)):
    gen, matcher = _anchor_parts(thresholds)

    return {"anchors": anchor_stats_counter(gen, matcher)}, {"thresholds": list(thresholds), "strides": STRIDES}


def test_compute_cache_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path))
    counters, key = _counters()
    stats = compute_dataset_stats(_spec(), counters, key, num_classes=3)
    assert 0 < stats["anchors"].fg_fraction < 1
    assert stats.num_images == 5  # 6 images, one without objects is filtered like training
    assert sum(stats.class_counts) > 0 and len(stats.class_counts) == 3
    files = list((tmp_path / "stats").glob("*.json"))
    assert len(files) == 1
    # Second call reads the file: a counter that would fail proves no recount happens.
    boom = {"anchors": lambda *a: (_ for _ in ()).throw(AssertionError("recounted"))}
    again = compute_dataset_stats(_spec(), boom, key, num_classes=3)
    assert again.counters == stats.counters
    # Another matcher setting gets its own file, never the old numbers.
    counters2, key2 = _counters((0.3, 0.7))
    other = compute_dataset_stats(_spec(), counters2, key2, num_classes=3)
    assert len(list((tmp_path / "stats").glob("*.json"))) == 2
    assert other.key != stats.key


def test_subset_and_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path))
    counters, key = _counters()
    sub = compute_dataset_stats(_spec(max_images=2), counters, key, num_classes=3)
    assert sub.num_images == 2
    (path,) = list((tmp_path / "stats").glob("*.json"))
    path.write_text("{ not json")
    fixed = compute_dataset_stats(_spec(max_images=2), counters, key, num_classes=3)
    assert fixed.counters == sub.counters
    assert json.loads(path.read_text())["num_images"] == 2


def test_explicit_file_for_other_settings_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path))
    counters, key = _counters()
    stats = compute_dataset_stats(_spec(), counters, key, num_classes=3)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(stats.to_json()))
    assert DatasetStats.from_json(json.loads(path.read_text())).counters == stats.counters
    assert compute_dataset_stats(_spec(stats_file=str(path)), counters, key, 3).counters == stats.counters
    _, key_other = _counters((0.3, 0.7))
    with pytest.raises(DatasetStatsMismatchError, match="differs in: counters"):
        compute_dataset_stats(_spec(stats_file=str(path)), counters, key_other, 3)
    with pytest.raises(DatasetStatsMismatchError, match="missing or unreadable"):
        compute_dataset_stats(_spec(stats_file=str(tmp_path / "none.json")), counters, key, 3)
    assert cache_dir("stats").exists() and nn
