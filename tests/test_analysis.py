"""tools/analysis.py: the ROI head's sample recorder, and each figure's data extraction on tiny
randomly initialised models (no training), with a figure written."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from detectron2.structures import pairwise_iou
from detectron2.utils.events import EventStorage

import helpers_two_stage as H
from conftest import ROOT
from helpers import tiny_cfg

_spec = importlib.util.spec_from_file_location("analysis_tool",
                                               os.path.join(ROOT, "tools", "analysis.py"))
A = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(A)

SYN = os.path.join(ROOT, "configs", "Synthetic")


def _forward(heads, recorder=None, seed=5):
    proposals, targets = H.crafted_batch()
    heads.train()
    heads.sample_recorder = recorder
    torch.manual_seed(seed)
    with EventStorage(0):
        out, losses = heads(H.image_list(), H.features(), proposals, targets)
    heads.sample_recorder = None
    return out, losses, targets


# ---- the recording hook -------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["random", "ohem", "libra", "pisa", "none"])
def test_sample_recorder_records_the_sampled_rois(sampler):
    records = []
    heads = H.balanced_roi_heads(sampler)
    out, losses, targets = _forward(heads, lambda p, pred: records.append((p, pred)))
    assert len(records) == 1
    props, (scores, deltas) = records[0]
    assert props is out  # the sampled proposals that trained the box head
    n = sum(len(p) for p in props)
    assert scores.shape == (n, H.NUM_CLASSES + 1)
    if sampler == "pisa":  # ISR-P (positives) and ISR-N (negatives) weights, after ISR-P
        assert all(p.has("cls_weights") for p in props)

    s = A.samples_from_record(props, (scores, deltas), H.NUM_CLASSES)
    assert {len(v) for v in s.values()} == {n}
    # IoU = the proposal's max IoU with its image's GTs; positives exactly those >= 0.5.
    max_iou = torch.cat([pairwise_iou(t.gt_boxes, p.proposal_boxes).max(dim=0).values
                         for p, t in zip(props, targets)]).numpy()
    np.testing.assert_allclose(s["iou"], max_iou, atol=1e-6)
    np.testing.assert_array_equal(s["positive"], max_iou >= 0.5)
    labels = torch.cat([p.gt_classes for p in props])
    ce = torch.nn.functional.cross_entropy(scores.detach(), labels, reduction="none").numpy()
    np.testing.assert_allclose(s["loss"], ce, rtol=1e-6)
    if sampler == "pisa":
        weights = torch.cat([p.cls_weights for p in props]).detach().numpy()
        np.testing.assert_allclose(s["weight"], weights)
        assert not np.allclose(s["weight"], 1.0)
    else:
        assert np.all(s["weight"] == 1.0)


def test_sample_recorder_changes_nothing():
    a, la, _ = _forward(H.balanced_roi_heads("pisa"), recorder=None)
    b, lb, _ = _forward(H.balanced_roi_heads("pisa"), recorder=lambda p, pred: None)
    assert set(la) == set(lb)
    for k in la:
        assert torch.equal(la[k], lb[k]), k
    for x, y in zip(a, b):
        assert torch.equal(x.proposal_boxes.tensor, y.proposal_boxes.tensor)
        assert torch.equal(x.cls_weights, y.cls_weights)
    assert H.balanced_roi_heads("random").sample_recorder is None  # off by default


# ---- each subcommand's data and figure, tiny random models ----------------------------------
def test_samplers_figure(tmp_path):
    cfg = tiny_cfg(os.path.join(SYN, "faster_rcnn_effnet_lite0_FPN.py"), tmp_path / "frcnn")
    model, _ = A.load_model(cfg, None)
    knobs = A.sampler_knobs("synthetic")
    assert knobs["pisa"]["sampler"] == "pisa" and knobs["ohem"]["sampler"] == "ohem"
    batch = A.training_batch(cfg, iteration=0)
    samples = A.collect_sampler_samples(cfg, model, batch, knobs)
    assert set(samples) == {"random", "ohem", "libra", "pisa", "none"}
    for name in ("random", "ohem", "libra", "pisa"):
        s = samples[name]
        assert len(s["iou"]) > 0 and np.isfinite(s["loss"]).all()
        # every sampled ROI is among the candidates ("none" keeps every labelled proposal)
        assert len(s["iou"]) <= len(samples["none"]["iou"])
    per_image = model.roi_heads.batch_size_per_image
    assert len(samples["random"]["iou"]) <= per_image * len(batch)
    path = A.plot_samplers(samples, str(tmp_path / "samplers.png"), "t", "caption")
    assert os.path.getsize(path) > 0


def test_dw_figure(tmp_path):
    cfg = tiny_cfg(os.path.join(SYN, "dw_fcos_effnet_lite0_FPN.py"), tmp_path / "dw")
    model, _ = A.load_model(cfg, None)
    from balanced_det.data import get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts("synthetic_tiny_val", filter_empty=False)
    d = A.busiest_image(dicts)
    assert len(d["annotations"]) == max(len(x.get("annotations", [])) for x in dicts)
    item = A.mapped_image(cfg, d)
    res = A.dw_maps(model, item, ["p3", "p4"])
    assert set(res["maps"]) == {"p3", "p4"}
    assert len(res["gt_boxes"]) == len(d["annotations"])
    p3 = res["maps"]["p3"]
    assert p3["pos_weight"].shape == p3["score"].shape == p3["iou"].shape
    assert (p3["neg_weight"] >= 0).all() and (p3["neg_weight"] <= 1).all()
    assert p3["pos_weight"].max() > 0  # points inside the GT boxes get positive weight
    img = np.zeros((*item["image"].shape[1:], 3), dtype=np.uint8)
    path = A.plot_dw(res, img, str(tmp_path / "dw.png"), "t", "caption")
    assert os.path.getsize(path) > 0


def test_sampling_free_figure(tmp_path):
    cfg = tiny_cfg(os.path.join(SYN, "sampling_free_retinanet_effnet_lite0_FPN.py"),
                   tmp_path / "sf")
    model, _ = A.load_model(cfg, None)  # dataset statistics: class-adaptive thresholds set
    theta = A.model_class_thresholds(model)
    assert theta is not None and theta.shape == (3,)
    loader, name, n = A._val_loader(cfg, max_images=1)
    sf = A.score_statistics(model, loader, name, {"global": False, "adaptive": True}, 0.05, n)
    assert sf["num_images"] == 1 and sf["hist"].sum() + sf["below"] == sf["total"] > 0
    assert set(sf["ap"]) == {"global", "adaptive"}
    assert model.class_adaptive_thresholds  # restored after the global-threshold pass
    bcfg = tiny_cfg(os.path.join(SYN, "retinanet_effnet_lite0_FPN.py"), tmp_path / "rn")
    bmodel, _ = A.load_model(bcfg, None)
    bloader, _, _ = A._val_loader(bcfg, max_images=1)
    base = A.score_statistics(bmodel, bloader, name, {"global": False}, 0.05, n)
    md = A.threshold_table([("base", "global", base, "0.05"), ("sf", "global", sf, "0.05"),
                            ("sf", "adaptive", sf, "class-adaptive")], ["a", "b", "c"], theta,
                           0.05, "header")
    assert md.count("\n| ") >= 5 and "theta" in md
    path = A.plot_sampling_free(base, sf, "base", "sf", ["a", "b", "c"], 0.05,
                                str(tmp_path / "sf.png"), "t", "caption")
    assert os.path.getsize(path) > 0


def _fake_run(folder, losses, aps, final_ap):
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for it, v in losses.items():
            f.write(json.dumps({"iteration": it, "total_loss": v}) + "\n")
        for it, v in aps.items():
            f.write(json.dumps({"iteration": it, "bbox/AP": v}) + "\n")
    with open(os.path.join(folder, "eval_results.json"), "w") as f:
        json.dump({"bbox": {"AP": final_ap}}, f)


def test_curves_figure_and_missing_runs(tmp_path):
    cmp = tmp_path / "cmp"
    for seed in (0, 1):
        for name, scale in (("retinanet", 1.0), ("ghm_retinanet", 0.5), ("faster_rcnn", 2.0)):
            _fake_run(str(cmp / name / f"seed{seed}"),
                      {i: scale * (3 - i / 50) + 0.1 * seed for i in range(9, 100, 10)},
                      {49: 5.0 + seed, 99: 10.0 + seed}, 10.0 + seed)
    os.makedirs(cmp / "dw_fcos" / "seed0")  # unfinished: no eval_results.json
    (cmp / "dw_fcos" / "seed0" / "metrics.json").write_text('{"iteration": 9, "total_loss": 1}\n')
    curves, missing, unfinished = A.read_curves("synthetic", str(cmp))
    assert set(curves) == {"retinanet", "ghm_retinanet", "faster_rcnn"}
    assert "dw_fcos" in missing and unfinished == [os.path.join("dw_fcos", "seed0")]
    assert curves["retinanet"]["seeds"] == [0, 1] and curves["retinanet"]["family"] == "retinanet"
    its, mean, lo, hi = A._band(curves["retinanet"]["loss"])
    assert len(its) == 10 and np.all(lo <= mean) and np.all(mean <= hi)
    written = A.main(["curves", "--suite", "synthetic", "--compare-dir", str(cmp),
                      "--out", str(tmp_path / "fig")])
    assert written == [str(tmp_path / "fig" / "synthetic_curves.png")]
    assert os.path.getsize(written[0]) > 0

    # a figure whose run is missing names the run and the command that trains it
    with pytest.raises(SystemExit, match=r"python tools/compare\.py --suite synthetic --only "
                                         r"dw_fcos --seeds 0"):
        A.main(["dw", "--suite", "synthetic", "--compare-dir", str(cmp), "--out",
                str(tmp_path / "fig")])
    # `all` skips the missing ones and still draws the curves
    written = A.main(["all", "--suite", "synthetic", "--compare-dir", str(cmp), "--out",
                      str(tmp_path / "fig2")])
    assert [os.path.basename(p) for p in written] == ["synthetic_curves.png"]
