"""tools/analysis: finished runs as tools/compare.py counts them, and each figure's data
extraction on tiny randomly initialised models (no training), with a figure written."""
import copy
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from balanced_det.config import load_config
from detectron2.config import LazyCall as L
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from conftest import ROOT
from helpers import tiny_cfg


from tools import compare as C
from tools.analysis import curves, dw, runs, samplers, sampling_free
from tools.analysis.__main__ import main

SYN = os.path.join(ROOT, "configs", "Synthetic")
FRCNN = os.path.join(SYN, "faster_rcnn_effnet_lite0_FPN.py")


# ---- samplers --------------------------------------------------------------------------------
def test_samples_from_record_hand_values():
    p = Instances((100, 100))
    p.proposal_boxes = Boxes(torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 5.],
                                           [50., 50., 60., 60.]]))
    p.gt_boxes = Boxes(torch.tensor([[0., 0., 10., 10.]] * 3))  # matched GT, also background
    p.gt_classes = torch.tensor([1, 2, 2])  # 2 classes + background (2)
    p.cls_weights = torch.tensor([1.5, 0.5, 1.0])
    scores = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    s = samplers.samples_from_record([p], (scores, None), num_classes=2)
    np.testing.assert_allclose(s["iou"], [1.0, 0.5, 0.0], atol=1e-6)
    ce = -torch.log_softmax(scores, 1)[torch.arange(3), p.gt_classes].numpy()
    np.testing.assert_allclose(s["loss"], ce, rtol=1e-6)
    np.testing.assert_allclose(s["weight"], [1.5, 0.5, 1.0])
    assert s["positive"].tolist() == [True, False, False]
    p.remove("cls_weights")
    assert np.all(samplers.samples_from_record([p], (scores, None), 2)["weight"] == 1.0)


def test_sampler_variant_head_copies_sampler_and_positive_weighting(monkeypatch):
    """Only the method config's ``roi_heads.sampler`` / ``positive_weighting`` nodes reach the
    head; the rest is the baseline's (the head class itself is stubbed)."""
    from balanced_det.modeling.roi_heads import BalancedFastRCNNOutputLayers, BalancedROIHeads

    built = []

    def fake_instantiate(node):
        built.append(node)
        return copy.deepcopy(model.roi_heads)

    monkeypatch.setattr(samplers, "instantiate", fake_instantiate)
    roi_heads = torch.nn.Module()
    roi_heads.box_predictor = torch.nn.Linear(2, 2)  # takes no per-sample weights
    model = SimpleNamespace(roi_heads=roi_heads, device="cpu")
    cfg = load_config(FRCNN)
    method = load_config(FRCNN)
    method.model.roi_heads.sampler = L(SimpleNamespace)(pos=L(SimpleNamespace)(k=1), num_bins=3)
    method.model.roi_heads.positive_weighting = L(SimpleNamespace)(gamma=2.0)
    method.model.roi_heads.batch_size_per_image = 7  # not a sampler part: not taken

    samplers.sampler_variant_head(cfg, model, method)
    roi = built[-1]
    assert roi._target_ is BalancedROIHeads
    assert roi.box_predictor._target_ is BalancedFastRCNNOutputLayers
    assert roi.sampler == method.model.roi_heads.sampler
    assert roi.positive_weighting == method.model.roi_heads.positive_weighting
    assert roi.batch_size_per_image == cfg.model.roi_heads.batch_size_per_image != 7
    roi.sampler.num_bins = 5
    assert method.model.roi_heads.sampler.num_bins == 3  # a copy
    assert "sampler" not in cfg.model.roi_heads  # the baseline config is left as it was

    # a method config with neither part: the head's defaults (random sampling, no weighting)
    samplers.sampler_variant_head(cfg, model, load_config(FRCNN))
    assert built[-1].get("sampler") is None and built[-1].get("positive_weighting") is None
    # ... also when the baseline itself sets them (e.g. the PISA run's weights as the base)
    samplers.sampler_variant_head(method, model, load_config(FRCNN))
    assert built[-1].sampler is None and built[-1].positive_weighting is None


def _record(head, images, features, proposals, gt, recorder, seed=3):
    head.sample_recorder = recorder
    torch.manual_seed(seed)
    with EventStorage(0):
        out = head(images, features, proposals, gt)
    head.sample_recorder = None
    return out


@pytest.fixture(scope="module")
def frcnn_batch(tmp_path_factory):
    """A tiny random Faster R-CNN, one training batch, its features and RPN proposals."""
    cfg = tiny_cfg(FRCNN, tmp_path_factory.mktemp("frcnn"))
    model, _ = runs.load_model(cfg, None)
    batch = samplers.training_batch(cfg, iteration=0)
    model.train()
    with torch.no_grad(), EventStorage(0):
        images = model.preprocess_image(batch)
        gt = [x["instances"] for x in batch]
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, gt)
    return SimpleNamespace(cfg=cfg, model=model, batch=batch, images=images, gt=gt,
                           features=features, proposals=proposals)


def test_sample_recorder_records_the_sampled_rois(frcnn_batch):
    b = frcnn_batch
    head = samplers.sampler_variant_head(b.cfg, b.model, b.cfg).train()  # random sampler
    records = []
    with torch.no_grad():
        out, _ = _record(head, b.images, b.features, b.proposals, b.gt,
                         lambda p, pred: records.append((p, pred)))
    assert len(records) == 1
    props, (scores, deltas) = records[0]
    assert props is out  # the sampled proposals that trained the box head
    n = sum(len(p) for p in props)
    assert 0 < n <= head.batch_size_per_image * len(b.batch)
    assert scores.shape == (n, head.num_classes + 1)

    s = samplers.samples_from_record(props, (scores, deltas), head.num_classes)
    assert {len(v) for v in s.values()} == {n}
    # IoU = the proposal's max IoU with its image's GTs; positives exactly those >= the
    # matcher's foreground threshold
    max_iou = torch.cat([pairwise_iou(t.gt_boxes, p.proposal_boxes).max(dim=0).values
                         for p, t in zip(props, b.gt)]).numpy()
    np.testing.assert_allclose(s["iou"], max_iou, atol=1e-6)
    fg = head.proposal_matcher.thresholds[1]
    np.testing.assert_array_equal(s["positive"], max_iou >= fg)
    labels = torch.cat([p.gt_classes for p in props])
    ce = torch.nn.functional.cross_entropy(scores.float(), labels, reduction="none").numpy()
    np.testing.assert_allclose(s["loss"], ce, rtol=1e-5)
    assert np.all(s["weight"] == 1.0)


def test_sample_recorder_changes_nothing(frcnn_batch):
    b = frcnn_batch
    head = samplers.sampler_variant_head(b.cfg, b.model, b.cfg).train()
    assert head.sample_recorder is None  # off by default
    a, la = _record(head, b.images, b.features, b.proposals, b.gt, None)
    c, lc = _record(head, b.images, b.features, b.proposals, b.gt, lambda p, pred: None)
    assert set(la) == set(lc)
    for k in la:
        assert torch.equal(la[k], lc[k]), k
    for x, y in zip(a, c):
        assert torch.equal(x.proposal_boxes.tensor, y.proposal_boxes.tensor)


def test_samplers_figure(frcnn_batch, tmp_path):
    b = frcnn_batch
    method_cfgs = samplers.sampler_method_configs("synthetic")
    assert list(method_cfgs) == ["random", "ohem", "libra", "pisa", "none"]
    samples = samplers.collect_sampler_samples(b.cfg, b.model, b.batch, method_cfgs)
    assert set(samples) == {"random", "ohem", "libra", "pisa", "none"}
    per_image = b.model.roi_heads.batch_size_per_image
    for name in ("random", "ohem", "libra", "pisa"):
        s = samples[name]
        assert 0 < len(s["iou"]) <= per_image * len(b.batch) and np.isfinite(s["loss"]).all()
        # every sampled ROI is among the candidates ("none" keeps every labelled proposal)
        assert len(s["iou"]) <= len(samples["none"]["iou"])
        # PISA weights its samples (ISR-P, ISR-N), the others do not
        assert np.allclose(s["weight"], 1.0) == (name != "pisa"), name
    # OHEM picks the highest-loss negatives: not the random ones
    neg = {k: np.sort(samples[k]["loss"][~samples[k]["positive"]]) for k in ("random", "ohem")}
    assert neg["ohem"].mean() > neg["random"].mean()
    path = samplers.plot_samplers(samples, str(tmp_path / "samplers.png"), "t", "caption")
    assert os.path.getsize(path) > 0


# ---- dw, sampling_free -----------------------------------------------------------------------
def test_dw_figure(tmp_path):
    cfg = tiny_cfg(os.path.join(SYN, "dw_fcos_effnet_lite0_FPN.py"), tmp_path / "dw")
    model, _ = runs.load_model(cfg, None)
    from balanced_det.data import get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts("synthetic_tiny_val", filter_empty=False)
    d = dw.busiest_image(dicts)
    assert len(d["annotations"]) == max(len(x.get("annotations", [])) for x in dicts)
    item = dw.mapped_image(cfg, d)
    res = dw.dw_maps(model, item, ["p3", "p4"])
    assert set(res["maps"]) == {"p3", "p4"}
    assert len(res["gt_boxes"]) == len(d["annotations"])
    p3 = res["maps"]["p3"]
    assert p3["pos_weight"].shape == p3["score"].shape == p3["iou"].shape
    assert (p3["neg_weight"] >= 0).all() and (p3["neg_weight"] <= 1).all()
    assert p3["pos_weight"].max() > 0  # points inside the GT boxes get positive weight
    assert ((p3["iou"] >= 0) & (p3["iou"] <= 1)).all()
    img = np.zeros((*item["image"].shape[1:], 3), dtype=np.uint8)
    path = dw.plot_dw(res, img, str(tmp_path / "dw.png"), "t", "caption")
    assert os.path.getsize(path) > 0


def test_sampling_free_figure(tmp_path):
    cfg = tiny_cfg(os.path.join(SYN, "sampling_free_retinanet_effnet_lite0_FPN.py"),
                   tmp_path / "sf")
    model, _ = runs.load_model(cfg, None)  # dataset statistics: class-adaptive thresholds set
    theta = sampling_free.model_class_thresholds(model)
    assert theta is not None and theta.shape == (3,)
    loader, name, n = sampling_free.validation_loader(cfg, max_images=1)
    sf = sampling_free.score_statistics(model, loader, name, {"global": False, "adaptive": True},
                                        0.05, n)
    assert sf["num_images"] == 1 and sf["hist"].sum() + sf["below"] == sf["total"] > 0
    assert set(sf["ap"]) == {"global", "adaptive"}
    # restored after the global-threshold pass
    np.testing.assert_array_equal(sampling_free.model_class_thresholds(model), theta)
    bcfg = tiny_cfg(os.path.join(SYN, "retinanet_effnet_lite0_FPN.py"), tmp_path / "rn")
    bmodel, _ = runs.load_model(bcfg, None)
    bloader, _, _ = sampling_free.validation_loader(bcfg, max_images=1)
    base = sampling_free.score_statistics(bmodel, bloader, name, {"global": False}, 0.05, n)
    assert base["total"] == sf["total"]  # same anchors x classes, one score each
    md = sampling_free.threshold_table(
        [("base", "global", base, "0.05"), ("sf", "global", sf, "0.05"),
         ("sf", "adaptive", sf, "class-adaptive")], ["a", "b", "c"], theta, 0.05, "header")
    assert md.count("\n| ") >= 5 and "theta" in md
    path = sampling_free.plot_sampling_free(base, sf, "base", "sf", ["a", "b", "c"], 0.05,
                                            str(tmp_path / "sf.png"), "t", "caption")
    assert os.path.getsize(path) > 0


# ---- finished runs, curves, the command line -------------------------------------------------
def _fake_run(compare_dir, name, seed, losses, aps, final_ap, config=None):
    """A run folder as tools/compare.py leaves a finished run (``config``: the one recorded,
    default the suite's)."""
    folder = os.path.join(compare_dir, name, f"seed{seed}")
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for it, v in losses.items():
            f.write(json.dumps({"iteration": it, "total_loss": v}) + "\n")
    # every evaluation, as balanced_det.engine.do_train keeps them (iteration = iterations done)
    with open(os.path.join(folder, C.EVAL_HISTORY), "w") as f:
        json.dump([{"iteration": it + 1, "bbox": {"AP": v}} for it, v in aps.items()], f)
    with open(os.path.join(folder, "eval_results.json"), "w") as f:
        json.dump({"bbox": {"AP": final_ap}}, f)
    config = config or runs.suite_entry("synthetic", name)[1]
    with open(os.path.join(folder, "compare_run.json"), "w") as f:
        json.dump(C.run_key(config, seed, 100, []), f)
    return folder


def test_finished_runs_are_compare_runs_of_the_suite_config(tmp_path):
    cmp = str(tmp_path)
    folder = _fake_run(cmp, "dw_fcos", 0, {9: 1.0}, {}, 1.0)
    ref = runs.RunRef("synthetic", "dw_fcos", 0, cmp)
    assert ref.finished()
    with pytest.raises(runs.MissingRunError, match="model_final.pth"):
        ref.check()  # finished, but without its checkpoint
    open(os.path.join(folder, "model_final.pth"), "w").close()
    assert ref.check() is ref
    assert not runs.RunRef("synthetic", "dw_fcos", 1, cmp).finished()  # another seed
    # the same folder name trained from another config is not this run
    _fake_run(cmp, "fcos", 0, {9: 1.0}, {}, 1.0, config="configs/Synthetic/other.py")
    assert not runs.RunRef("synthetic", "fcos", 0, cmp).finished()


def test_a_run_is_read_with_the_overrides_it_was_trained_with(tmp_path):
    cmp = str(tmp_path)
    name = "sampling_free_retinanet"
    folder = _fake_run(cmp, name, 0, {9: 1.0}, {}, 1.0)
    config = runs.suite_entry("synthetic", name)[1]
    opts = ["model.guided_loss.w_cls=6.0", "train.eval_period=100"]
    with open(os.path.join(folder, "compare_run.json"), "w") as f:
        json.dump(C.run_key(config, 0, 100, opts), f)
    ref = runs.RunRef("synthetic", name, 0, cmp)
    assert ref.finished() and ref.overrides() == opts
    cfg = ref.load_config("cpu")
    assert cfg.model.guided_loss.w_cls == 6.0 and cfg.train.device == "cpu"
    # an explicit --config is taken as it is; a run without a key has no overrides
    explicit = runs.RunRef("synthetic", name, 0, cmp, config=os.path.join(runs.ROOT, config))
    assert explicit.overrides() == [] and explicit.load_config("cpu").model.guided_loss.w_cls == 1.0
    assert runs.RunRef("synthetic", name, 1, cmp).overrides() == []


def test_curves_figure_and_missing_runs(tmp_path):
    cmp = tmp_path / "cmp"
    for seed in (0, 1):
        for name, scale in (("retinanet", 1.0), ("ghm_retinanet", 0.5), ("faster_rcnn", 2.0)):
            _fake_run(str(cmp), name, seed,
                      {i: scale * (3 - i / 50) + 0.1 * seed for i in range(9, 100, 10)},
                      {49: 5.0 + seed, 99: 10.0 + seed}, 10.0 + seed)
    # unfinished: training (no eval_results.json, no compare_run.json)
    os.makedirs(cmp / "dw_fcos" / "seed0")
    (cmp / "dw_fcos" / "seed0" / "metrics.json").write_text('{"iteration": 9, "total_loss": 1}\n')
    # unfinished: evaluated, but not recorded by tools/compare.py as its run
    unrecorded = _fake_run(str(cmp), "fcos", 0, {9: 1.0}, {}, 1.0)
    os.remove(os.path.join(unrecorded, "compare_run.json"))
    crv, missing, unfinished = curves.read_curves("synthetic", str(cmp))
    assert set(crv) == {"retinanet", "ghm_retinanet", "faster_rcnn"}
    assert {"dw_fcos", "fcos"} <= set(missing)
    assert sorted(unfinished) == [os.path.join("dw_fcos", "seed0"), os.path.join("fcos", "seed0")]
    assert crv["retinanet"]["seeds"] == [0, 1] and crv["retinanet"]["family"] == "retinanet"
    assert crv["retinanet"]["final_ap"] == [10.0, 11.0]
    assert crv["retinanet"]["ap"][1] == {50: 6.0, 100: 11.0}  # AP per evaluation
    a_its, a_mean, _, _ = curves.seed_band(crv["retinanet"]["ap"])
    assert list(a_its) == [50, 100] and list(a_mean) == [5.5, 10.5]
    its, mean, lo, hi = curves.seed_band(crv["retinanet"]["loss"])
    assert len(its) == 10 and np.all(lo <= mean) and np.all(mean <= hi)
    written = main(["curves", "--suite", "synthetic", "--compare-dir", str(cmp),
                    "--out", str(tmp_path / "fig")])
    assert written == [str(tmp_path / "fig" / "synthetic_curves.png")]
    assert os.path.getsize(written[0]) > 0

    # a figure whose run is missing names the run and the command that trains it
    with pytest.raises(SystemExit, match=r"python tools/compare\.py --suite synthetic --only "
                                         r"dw_fcos --seeds 0"):
        main(["dw", "--suite", "synthetic", "--compare-dir", str(cmp), "--out",
              str(tmp_path / "fig")])
    # `all` skips the missing ones and still draws the curves
    written = main(["all", "--suite", "synthetic", "--compare-dir", str(cmp), "--out",
                    str(tmp_path / "fig2")])
    assert [os.path.basename(p) for p in written] == ["synthetic_curves.png",
                                                      "synthetic_val_annotations.png"]


def test_no_runs_at_all_names_the_comparison_command(tmp_path):
    with pytest.raises(SystemExit, match=r"python tools/compare\.py --suite trees --output"):
        main(["curves", "--suite", "trees", "--compare-dir", str(tmp_path), "--out",
              str(tmp_path / "fig")])


def test_script_entry_point(tmp_path):
    """``python tools/analysis.py`` (the README's command) runs the package's command line."""
    import subprocess

    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "analysis.py"), "curves",
                          "--suite", "synthetic", "--compare-dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=str(tmp_path),
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 1
    assert "no finished comparison runs of suite 'synthetic'" in res.stderr


def test_analysis_command_names_a_non_default_compare_dir():
    default = runs.default_compare_dir("trees")
    assert runs.analysis_command("diagnose", "trees", ["fcos", "dw_fcos"], [0, 1], default) == (
        "python tools/analysis.py diagnose --suite trees --runs fcos dw_fcos --seeds 0 1")
    other = os.path.join(ROOT, "output", "compare", "trees-conv600")
    assert runs.analysis_command("gradients", "trees", ["retinanet"], [2], other) == (
        "python tools/analysis.py gradients --suite trees --compare-dir "
        "output/compare/trees-conv600 --runs retinanet --seeds 2")


# ---- diagnose --------------------------------------------------------------------------------
def test_detection_matching_hand_values():
    from tools.analysis import diagnose

    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    # two boxes on GT 0 (IoU 1 and 0.81), none on GT 1, one false positive
    dets = torch.tensor([[0.0, 0, 10, 10], [0, 0, 9, 9], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.6, 0.3])
    m = diagnose.match_detections(dets, scores, gt)
    assert m["gt_num_matches"].tolist() == [2, 0]
    np.testing.assert_allclose(m["gt_max_iou"], [1.0, 0.0])
    np.testing.assert_allclose(m["det_max_iou"], [1.0, 0.81, 0.0])
    assert m["gt_best_score"][0] == pytest.approx(0.9) and np.isnan(m["gt_best_score"][1])
    m["scores"] = scores.numpy()
    st = diagnose.detection_statistics([m])
    assert st["dets_per_image"] == 3 and st["dup_per_gt"] == 2.0
    assert st["recall50"] == 0.5 and st["recall75"] == 0.5
    assert st["tp_score"] == pytest.approx(0.9) and st["fp_score"] == pytest.approx(0.3)
    assert np.isnan(st["score_iou_corr"])  # two matched detections: too few for a correlation
    empty = diagnose.match_detections(torch.zeros(0, 4), torch.zeros(0), gt)
    assert empty["gt_num_matches"].tolist() == [0, 0]


def test_class_aware_matching_and_top_detection_kinds_hand_values():
    from tools.analysis import diagnose

    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    gt_classes = torch.tensor([0, 1])
    # on GT 0: class 0 (IoU 1), class 0 again (0.81), class 1 (1.0: another class's object);
    # the left half of GT 1 with class 1 (IoU 0.5: a match); one on background
    dets = torch.tensor([[0.0, 0, 10, 10], [0, 0, 9, 9], [0, 0, 10, 10], [20, 20, 25, 30],
                         [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.3])
    classes = torch.tensor([0, 0, 1, 1, 0])
    m = diagnose.match_detections(dets, scores, gt, classes, gt_classes)
    np.testing.assert_allclose(m["det_max_iou"], [1.0, 0.81, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(m["det_other_class_iou"], [0.0, 0.0, 1.0, 0.0, 0.0])
    assert m["gt_num_matches"].tolist() == [2, 1]
    m.update(scores=scores.numpy(), classes=classes.numpy(), gt_classes=gt_classes.numpy())
    st = diagnose.detection_statistics([m])
    # unmatched (IoU < 0.5 with their class): the class-1 box on GT 0 and the background box
    assert st["other_class_share"] == pytest.approx(0.5)
    # class 0 has 1 GT: its top-1 (0.9) is true; class 1 has 1 GT: its top-1 is the 0.8 box on
    # GT 0 (another class's object); the lower-ranked ones are not counted
    k = diagnose.top_detection_kinds([m], num_classes=3)
    assert k["kinds"] == {"true": 0.5, "duplicate": 0.0, "other class": 0.5,
                          "localisation": 0.0, "background": 0.0}
    assert k["other_class"][:2] == [0.0, 1.0] and np.isnan(k["other_class"][2])
    # with two GTs of class 0 in a second image, class 0's top 2 are the 0.9 (true) and the
    # 0.6 box (duplicate: its GT is taken); the second image's detection ranks below them
    m2 = diagnose.match_detections(torch.tensor([[0.0, 0, 4, 10]]), torch.tensor([0.5]),
                                   torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0]),
                                   torch.tensor([0]))
    m2.update(scores=np.array([0.5]), classes=np.array([0]), gt_classes=np.array([0]))
    k = diagnose.top_detection_kinds([m, m2], num_classes=2)
    assert k["kinds"]["duplicate"] == pytest.approx(1 / 3)
    assert k["kinds"]["true"] == pytest.approx(1 / 3)
    assert k["kinds"]["other class"] == pytest.approx(1 / 3)
    # without classes every GT matches: the class-1 box on GT 0 is a match again
    agnostic = diagnose.match_detections(dets, scores, gt)
    assert agnostic["gt_num_matches"].tolist() == [3, 1]
    assert not agnostic["det_other_class_iou"].any()


def test_diagnosis_of_a_dw_model_table_and_figure(tmp_path):
    from tools.analysis import diagnose

    cfg = tiny_cfg(os.path.join(SYN, "dw_fcos_effnet_lite0_FPN.py"), tmp_path / "dw")
    run_dir = _fake_run(str(tmp_path / "cmp"), "dw_fcos", 0, {9: 2.0, 19: 1.0}, {19: 5.0}, 5.0)
    with open(os.path.join(run_dir, "eval_results.json"), "w") as f:
        json.dump({"bbox": {k: 1.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}}, f)
    st = diagnose.run_statistics(cfg, None, run_dir, score_thresh=0.0, max_images=2)
    levels = len(cfg.model.head.input_shape)
    assert len(st["fcos"]) == len(st["bag"]) == levels
    # a DW bag holds the FCOS positives' region and more (centre prior over the GT box)
    assert sum(st["bag"]) >= sum(st["fcos"]) > 0
    # mean over GTs: (sum w)^2 / sum w^2 is between 1 and the bag size for every GT
    assert 1.0 - 1e-6 <= st["effective"] <= sum(st["bag"]) and st["pos_mass"] > 0
    assert st["training"] == {}  # the fake metrics have no loss keys
    stats = {"dw_fcos": [st]}
    md = diagnose.write_table(stats, {"dw_fcos": "DW"}, str(tmp_path / "d.md"), "header")
    assert "| duplicates per matched GT |" in md and "| DW effective positives per GT |" in md
    path = diagnose.plot_diagnosis(stats, {"dw_fcos": "DW"}, str(tmp_path / "d.png"), "c")
    assert os.path.getsize(path) > 0


def test_diagnosis_from_saved_detections_equals_the_model_pass(tmp_path):
    """A run restored from its record (no checkpoint) is diagnosed from the detections its last
    evaluation saved: the same detection statistics as running its final model again."""
    from balanced_det.engine import do_train
    from tools.analysis import diagnose

    out = tmp_path / "run"
    cfg = tiny_cfg(os.path.join(SYN, "fcos_effnet_lite0_FPN.py"), out)
    do_train(cfg)
    with open(out / "eval_results.json") as f:
        assert "bbox" in json.load(f)
    kw = dict(score_thresh=0.0)
    from_model = diagnose.run_statistics(cfg, str(out / "model_final.pth"), str(out), **kw)
    from_file = diagnose.run_statistics(cfg, None, str(out), **kw,
                                        detections=str(out / "val_detections.json.gz"))
    assert from_model["dets_per_image"] > 0 and "fcos" in from_model and "fcos" not in from_file
    for key in ("dets_per_image", "recall50", "recall75", "dup_per_gt", "tp_score", "fp_score",
                "score_iou_corr", "dup_hist"):
        assert from_file[key] == pytest.approx(from_model[key], rel=1e-3, abs=1e-4, nan_ok=True), key
    # a finished run without its checkpoint is accepted only where detections will do
    _fake_run(str(tmp_path / "cmp"), "fcos", 0, {9: 1.0}, {}, 1.0)
    ref = runs.RunRef("synthetic", "fcos", 0, str(tmp_path / "cmp"))
    with pytest.raises(runs.MissingRunError):
        ref.check(detections_ok=True)  # neither checkpoint nor detections
    os.replace(out / "val_detections.json.gz", ref.detections)
    assert ref.use_detections() and ref.check(detections_ok=True) is ref
    with pytest.raises(runs.MissingRunError, match="model_final.pth"):
        ref.check()


def test_annotations_figure(tmp_path):
    from tools.analysis import annotations

    path = annotations.plot_annotations("synthetic_tiny_val", str(tmp_path / "a.png"), "caption")
    assert os.path.getsize(path) > 0


# ---- gradients -------------------------------------------------------------------------------
def _retinanet_batch(config, tmp_path):
    from balanced_det.data import get_detection_dataset_dicts

    cfg = tiny_cfg(os.path.join(SYN, config), tmp_path / "g")
    model, _ = runs.load_model(cfg, None)
    dicts = get_detection_dataset_dicts("synthetic_tiny_train", filter_empty=False)[:2]
    return model, [dw.mapped_image(cfg, d) for d in dicts]


def test_gradients_of_focal_loss_follow_its_derivative(tmp_path):
    from tools.analysis import gradients

    model, items = _retinanet_batch("retinanet_effnet_lite0_FPN.py", tmp_path)
    e = gradients.element_gradients(model, items)
    n_valid = e["g"].size
    assert n_valid > 0 and e["positive"].any() and (~e["positive"]).any()
    # |d/dx of -a_t (1 - p_t)^gamma log p_t| with 1 - p_t = g: a_t g^gamma (g - gamma (1-g) log(1-g))
    g = e["g"].astype(np.float64)
    a = np.where(e["positive"], model.focal_loss_alpha, 1 - model.focal_loss_alpha)
    gamma = model.focal_loss_gamma
    expected = a * g ** gamma * (g - gamma * (1 - g) * np.log1p(-g))
    np.testing.assert_allclose(e["grad"] / e["grad"].sum(), expected / expected.sum(),
                               rtol=2e-3, atol=1e-9)
    # the negatives of a positive anchor are the other C - 1 classes of it
    assert not (e["other_class"] & e["positive"]).any()
    assert e["other_class"].sum() == e["positive"].sum() * (model.num_classes - 1)
    s = gradients.summarise([e], len(items))
    assert sum(s["hist_pos"]) + sum(s["hist_neg"]) == n_valid
    assert sum(s["count_pos"]) * len(items) == pytest.approx(e["positive"].sum())
    assert sum(s["share_pos"]) + sum(s["share_neg"]) == pytest.approx(1.0)
    assert sum(s["grad_pos"]) == pytest.approx(sum(s["share_pos"]))


def test_gradients_of_sampling_free_are_bce_times_its_guided_ratio(tmp_path):
    """Sampling-Free's classification gradient is plain BCE's ``|p - y| / P`` times
    ``w_cls r``, ``r = w_reg L_reg / L_cls``: the value of ``w_cls r L_cls`` is
    ``w_cls w_reg L_reg`` (Eq. 6), so ``w_cls r = w_cls * loss_box_reg / L_cls`` of the
    model's own losses."""
    from tools.analysis import gradients

    model, items = _retinanet_batch("sampling_free_retinanet_effnet_lite0_FPN.py", tmp_path)
    e = gradients.element_gradients(model, items)
    g = e["g"].astype(np.float64)
    np.testing.assert_allclose(e["grad"] / e["grad"].sum(), g / g.sum(), rtol=2e-3, atol=1e-9)
    with torch.no_grad():
        images = model.preprocess_image(items)
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        logits, deltas = model._transpose_dense_predictions(model.head(feats),
                                                            [model.num_classes, 4])
        anchors = model.anchor_generator(feats)
        labels, boxes = model.label_anchors(anchors, [x["instances"] for x in items])
        with EventStorage(0):
            out = model.losses(anchors, logits, labels, deltas, boxes)
        x = torch.cat(logits, dim=1)
        lab = torch.stack(labels)
        valid = lab >= 0
        y = torch.nn.functional.one_hot(lab.clamp(min=0), model.num_classes + 1)[..., :-1]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            x, y.float(), reduction="none")[valid].sum()
    scale = model.guided_loss.w_cls * float(out["loss_box_reg"]) * float(
        model.loss_normalizer) / float(bce)
    assert 0 < scale < 1  # L_reg is far below BCE summed over every anchor
    num_pos = float((valid & (lab != model.num_classes)).sum())
    assert e["grad"].sum() == pytest.approx(scale * g.sum() / num_pos, rel=2e-3)


def test_gradients_of_a_non_retinanet_run_is_a_clear_error(tmp_path):
    from tools.analysis import gradients

    cfg = tiny_cfg(os.path.join(SYN, "fcos_effnet_lite0_FPN.py"), tmp_path / "f")
    with pytest.raises(ValueError, match="fcos seed 0 is a FCOS, not a RetinaNet"):
        gradients.gradient_statistics(cfg, None, 2, desc="fcos seed 0")


def test_gradient_summary_hand_values():
    from tools.analysis import gradients

    e = {"g": np.array([0.05, 0.5, 0.95, 0.4, 0.35, 1.0], dtype=np.float32),
         "positive": np.array([True, True, False, False, False, False]),
         "grad": np.array([1.0, 1.0, 2.0, 4.0, 2.0, 0.0], dtype=np.float32),
         "far": np.array([False, False, True, False, True, True]),
         "other_class": np.array([False, False, False, True, True, False])}
    s = gradients.summarise([e], num_images=2)
    assert s["other_class_count"] == 1.0 and s["other_class_share"] == pytest.approx(0.6)
    assert s["grad_per_image"] == pytest.approx(5.0)
    assert s["count_pos"] == [0.5, 0.0, 0.5, 0.0, 0.0]
    assert s["count_neg"] == [0.0, 0.0, 1.0, 0.0, 1.0]  # g = 1.0 is in the last range
    np.testing.assert_allclose(s["share_pos"], [0.1, 0.0, 0.1, 0.0, 0.0])
    np.testing.assert_allclose(s["share_neg"], [0.0, 0.0, 0.6, 0.0, 0.2])
    assert s["hard_neg_far"] == pytest.approx(3 / 4)  # of the negatives with g >= 0.3
    assert s["hist_neg"][28] == 1 and s["hist_neg"][29] == 1 and s["hist_neg"][12] == 1
    assert sum(s["grad_neg"]) == pytest.approx(0.8)


def test_gradients_of_ghm_c_give_every_bin_the_same_weight(tmp_path):
    from tools.analysis import gradients

    model, items = _retinanet_batch("ghm_retinanet_effnet_lite0_FPN.py", tmp_path)
    assert int(model.cls_loss.updates.sum()) == 0  # fresh EMA: the density is this batch's count
    e = gradients.element_gradients(model, items)
    assert int(model.cls_loss.updates.sum()) == 0  # eval mode: the EMA is not changed
    s = gradients.summarise([e], len(items))
    # each non-empty bin has total weight tot / n, so its gradient share is its mean g over the
    # sum of the bins' mean g (BCE: |dL/dx| = w g)
    b = np.clip(np.floor(e["g"].astype(np.float64) * gradients.BINS), 0, gradients.BINS - 1)
    means = np.array([e["g"][b == k].mean() if (b == k).any() else 0.0
                      for k in range(gradients.BINS)])
    share = np.array(s["grad_pos"]) + np.array(s["grad_neg"])
    np.testing.assert_allclose(share, means / means.sum(), rtol=1e-4, atol=1e-7)
    stats = {"retinanet": [s], "ghm_retinanet": [s]}
    descs = {"retinanet": "RetinaNet", "ghm_retinanet": "GHM"}
    md = gradients.write_table(stats, descs, str(tmp_path / "g.md"), "header")
    assert "| all positives |" in md and md.count("| negatives [") == len(gradients.RANGES)
    path = gradients.plot_gradients(stats, descs, str(tmp_path / "g.png"), "caption")
    assert os.path.getsize(path) > 0
