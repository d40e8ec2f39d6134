#!/usr/bin/env python
"""Analysis figures (PNG) of the comparison runs of ``tools/compare.py``.

    python tools/analysis.py all --suite trees                 # every figure of a suite
    python tools/analysis.py samplers --suite synthetic        # IoU vs loss per ROI sampler
    python tools/analysis.py dw --suite trees --image-id 3     # DW weight maps of one image
    python tools/analysis.py sampling_free --suite trees       # confidence shifting + thresholds
    python tools/analysis.py curves --suite synthetic          # training curves of all runs

The figures read the runs that ``python tools/compare.py --suite <suite>`` writes to
``output/compare/<suite>/<name>/seed<k>/`` (``--compare-dir`` for another folder; ``--seed``
picks the run of the single-model figures, default 0) and go to ``--out``
(default ``docs/figures/``) as ``<suite>_<figure>.png``; the paths are printed. Each figure
has a title, labelled axes and a caption line saying what it shows and from which run and
checkpoint. A figure whose run is missing fails (``all``: is skipped) with the command that
trains it.

==================  ==========================================================================
``samplers``        PISA paper figures 4/6: IoU with the GT (x) vs cross entropy (y) of the
                    ROIs each sampler (random / OHEM / Libra / PISA) picks from one real
                    training batch of a trained Faster R-CNN (default: the ``faster_rcnn`` run):
                    same images, proposals and network weights for every sampler, marker area
                    proportional to the sample's weight (ISR-P / ISR-N for PISA, 1 otherwise).
                    Each sampler is the project's ``BalancedROIHeads`` built with the sampler
                    knobs of the suite's method config, recorded with its ``sample_recorder``
                    hook.
``dw``              DW paper figure 5: over the points of P3 and P4 of one validation image
                    (default: the one with most boxes) and a trained DW-FCOS (default:
                    ``dw_fcos``): positive weight (max over GTs), negative weight of the GT
                    class, joint score (max over classes), IoU of the predicted box with the
                    best GT; computed with ``balanced_det.ops.dw`` on the model's predictions.
``sampling_free``   Score distribution of every (anchor, class) candidate before thresholding,
                    on the validation split, of RetinaNet (focal) vs Sampling-Free RetinaNet,
                    with the global 0.05 and the class-adaptive thresholds; AP of the
                    Sampling-Free model with either threshold and the detections each keeps
                    (figure + Markdown table).
``curves``          total loss vs iteration (mean over seeds, min-max band) of every run, one
                    panel per detector family; AP vs iteration when runs evaluated more than
                    once, final AP (mean ± std) in the legend.
``all``             all of the above, skipping (with the reason) figures whose runs are missing.
==================  ==========================================================================
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import sys
import textwrap
from types import SimpleNamespace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
for _p in (os.path.join(ROOT, "projects"), TOOLS):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import balanced_det  # noqa: E402,F401  (compat shims and registrations first)
from balanced_det.config import load_config  # noqa: E402
from compare import SUITES, family  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import convert_image_to_rgb  # noqa: E402
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.structures.boxes import matched_pairwise_iou  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

__all__ = [
    "MissingRunError", "RunRef", "load_model",
    "sampler_knobs", "training_batch", "collect_sampler_samples", "plot_samplers",
    "busiest_image", "mapped_image", "dw_maps", "plot_dw",
    "dense_candidate_scores", "score_statistics", "plot_sampling_free", "threshold_table",
    "read_curves", "plot_curves",
]

SAMPLER_RUNS = (("random", "faster_rcnn"), ("ohem", "ohem_faster_rcnn"),
                ("libra", "libra_faster_rcnn"), ("pisa", "pisa_faster_rcnn"))
SAMPLER_TITLES = {"random": "random (detectron2)", "ohem": "OHEM", "libra": "Libra (IoU-balanced)",
                  "pisa": "PISA (ISR-P + ISR-N)", "none": "all candidates"}
# BalancedROIHeads arguments that define how ROIs are sampled and weighted.
SAMPLER_KNOBS = ("sampler", "isr_p", "isr_p_gamma", "isr_p_beta", "isr_n", "isr_n_gamma",
                 "isr_n_beta", "isr_n_score_thresh", "isr_n_iou_thresh", "libra_floor_thr",
                 "libra_floor_fraction", "libra_num_bins", "ohem_nms_thresh")
FAMILY_ORDER = ("fcos", "retinanet", "faster_rcnn", "mask_rcnn")
FAMILY_TITLES = {"fcos": "FCOS family", "retinanet": "RetinaNet family",
                 "faster_rcnn": "Faster R-CNN family", "mask_rcnn": "Mask R-CNN family"}
POS_COLOR, NEG_COLOR = "#d62728", "#1f77b4"


# ---------------------------------------------------------------------------------------------
# runs, configs and checkpoints
# ---------------------------------------------------------------------------------------------
class MissingRunError(FileNotFoundError):
    """A run or checkpoint a figure needs does not exist; the message names the command."""

    def __str__(self):
        return str(self.args[0])


def _rel(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def default_compare_dir(suite: str) -> str:
    return os.path.join(ROOT, "output", "compare", suite)


def compare_command(suite: str, names: Sequence[str], seeds: Sequence[int], compare_dir: str
                    ) -> str:
    cmd = (f"python tools/compare.py --suite {suite} --only {' '.join(names)} "
           f"--seeds {' '.join(map(str, seeds))}")
    if os.path.abspath(compare_dir) != os.path.abspath(default_compare_dir(suite)):
        cmd += f" --output {_rel(compare_dir)}"
    return cmd


def suite_entry(suite: str, name: str) -> Tuple[str, str, str]:
    for entry in SUITES.get(suite, []):
        if entry[0] == name:
            return entry
    names = [e[0] for e in SUITES.get(suite, [])]
    raise ValueError(f"run {name!r} is not in suite {suite!r} of tools/compare.py (runs: {names})")


class RunRef:
    """One trained run of the comparison: its config file, checkpoint and description.

    ``checkpoint``/``config`` override the suite's run folder and config (``--checkpoint``,
    ``--config``)."""

    def __init__(self, suite: str, name: str, seed: int, compare_dir: str,
                 checkpoint: Optional[str] = None, config: Optional[str] = None):
        self.suite, self.name, self.seed, self.compare_dir = suite, name, seed, compare_dir
        _, suite_cfg, self.desc = suite_entry(suite, name)
        self.config = config or os.path.join(ROOT, suite_cfg)
        self.run_dir = os.path.join(compare_dir, name, f"seed{seed}")
        self.checkpoint = checkpoint or os.path.join(self.run_dir, "model_final.pth")
        self.explicit_checkpoint = checkpoint is not None

    def check(self) -> "RunRef":
        if not os.path.isfile(self.config):
            raise MissingRunError(f"config {self.config} not found (--config)")
        if not os.path.isfile(self.checkpoint):
            if self.explicit_checkpoint:
                raise MissingRunError(f"checkpoint {self.checkpoint} not found (--checkpoint)")
            raise MissingRunError(
                f"missing run {self.name!r} (seed {self.seed}) of suite {self.suite!r}: "
                f"{_rel(self.checkpoint)} does not exist. Train it with: "
                f"{compare_command(self.suite, [self.name], [self.seed], self.compare_dir)}")
        return self

    def describe(self) -> str:
        return f"{self.desc} ({_rel(self.checkpoint)})"


def check_runs(refs: Sequence[RunRef]) -> None:
    """:meth:`RunRef.check` of each; several missing runs of the suite are named in one error
    with one command that trains them all."""
    errors, absent = [], []
    for r in refs:
        try:
            r.check()
        except MissingRunError as e:
            errors.append(str(e))
            if not r.explicit_checkpoint and os.path.isfile(r.config):
                absent.append(r)
    if len(absent) > 1 and len(absent) == len(errors):
        names = [r.name for r in absent]
        raise MissingRunError(
            f"missing runs {names} (seed {absent[0].seed}) of suite {absent[0].suite!r}: "
            f"{', '.join(_rel(r.checkpoint) for r in absent)} do not exist. Train them with: "
            f"{compare_command(absent[0].suite, names, [absent[0].seed], absent[0].compare_dir)}")
    if errors:
        raise MissingRunError("; ".join(errors))


def load_model(cfg, checkpoint: Optional[str], device: str = "cpu"):
    """The model of ``cfg`` with the weights (and buffers: class thresholds, EMA normalisers)
    of ``checkpoint`` (strict: a checkpoint of another architecture is an error). Without a
    checkpoint: ``balanced_det.engine.build_model`` (random init + dataset statistics).
    Returns ``(model, iteration)`` (``None`` when the checkpoint does not say)."""
    from balanced_det.engine import Checkpointer, build_model

    if checkpoint is None:
        cfg.train.device = device
        return build_model(cfg), None
    model = instantiate(cfg.model)
    model.to(device)
    extra = Checkpointer(model).load(checkpoint, strict=True) or {}
    return model, extra.get("iteration")


def _config(path: str, device: str):
    cfg = load_config(path)
    cfg.train.device = device
    return cfg


def _ckpt_text(ref: RunRef, iteration) -> str:
    return _rel(ref.checkpoint) + (f" (iteration {iteration})" if iteration is not None else "")


# ---------------------------------------------------------------------------------------------
# figure helpers
# ---------------------------------------------------------------------------------------------
def finish_figure(fig, caption: str, path: str) -> str:
    """Add the caption under the figure, save ``path`` (PNG), close the figure."""
    width_chars = int(fig.get_figwidth() * 15)
    fig.text(0.5, -0.01, textwrap.fill(caption, width=width_chars), ha="center", va="top",
             fontsize=9, style="italic", color="#333333")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------------
def sampler_knobs(suite: Optional[str],
                  samplers: Sequence[str] = ("random", "ohem", "libra", "pisa")) -> Dict[str, dict]:
    """``BalancedROIHeads`` sampler arguments per sampler, read from the suite's method
    config (``ohem_faster_rcnn`` for OHEM, ...); plus ``"none"`` (every labelled proposal,
    drawn as the candidates). A sampler without a config in the suite uses the class defaults."""
    runs = dict(SAMPLER_RUNS)
    out: Dict[str, dict] = {}
    for s in list(samplers) + ["none"]:
        knobs = {"sampler": s}
        name = runs.get(s)
        if suite in SUITES and name and any(e[0] == name for e in SUITES[suite]):
            roi = load_config(os.path.join(ROOT, suite_entry(suite, name)[1])).model.roi_heads
            knobs.update({k: roi[k] for k in SAMPLER_KNOBS if k in roi})
            knobs["sampler"] = s
        out[s] = knobs
    return out


def training_batch(cfg, iteration: int = 0) -> List[dict]:
    """The batch that the training loader of ``cfg`` gives at ``iteration`` (the run's seed
    and image order, as ``train_net.py`` builds it; augmentation randomness seeded by the
    run's seed + iteration)."""
    from balanced_det.engine.train_loop import _TrainLoaderFromPosition, cfg_get

    seed = cfg_get(cfg, "train.seed", 0)
    seed = seed if seed is not None and seed >= 0 else 0
    cfg.dataloader.train.num_workers = 0
    seed_all_rng(seed + iteration)
    loader = _TrainLoaderFromPosition(cfg.dataloader.train,
                                      lambda: SimpleNamespace(iter=iteration), seed=seed)
    return next(iter(loader))


def _sampler_head(cfg, model, knobs: dict):
    """A ``BalancedROIHeads`` from ``cfg.model.roi_heads`` (detectron2's predictor swapped for
    ``BalancedFastRCNNOutputLayers``, identical until a knob is set) with ``knobs`` as its
    sampler arguments and the weights of ``model.roi_heads``."""
    from balanced_det.modeling.roi_heads import BalancedFastRCNNOutputLayers, BalancedROIHeads

    mcfg = copy.deepcopy(cfg.model)
    roi = mcfg.roi_heads
    roi._target_ = BalancedROIHeads
    if not getattr(type(model.roi_heads.box_predictor), "supports_sample_weights", False):
        roi.box_predictor._target_ = BalancedFastRCNNOutputLayers
    for k in SAMPLER_KNOBS:
        roi.pop(k, None)
    roi.update(knobs)
    head = instantiate(roi)
    head.load_state_dict(model.roi_heads.state_dict())
    return head.to(model.device)


def samples_from_record(proposals: List[Instances], predictions, num_classes: int
                        ) -> Dict[str, np.ndarray]:
    """Arrays over the sampled ROIs of one recorded ``_forward_box``: ``iou`` with the
    matched GT (max IoU over the image's GTs; 0 without GTs), ``loss`` (cross entropy of the
    ROI's label under the predicted scores), ``weight`` (``cls_weights``, 1 when the sampler
    sets none), ``positive`` (foreground label)."""
    scores = predictions[0].detach().float()
    labels = torch.cat([p.gt_classes for p in proposals]) if proposals else \
        torch.zeros(0, dtype=torch.long)
    ious = []
    for p in proposals:
        if p.has("gt_boxes"):
            ious.append(matched_pairwise_iou(p.proposal_boxes, p.gt_boxes))
        else:
            ious.append(torch.zeros(len(p), device=scores.device))
    iou = torch.cat(ious) if ious else torch.zeros(0)
    loss = F.cross_entropy(scores, labels, reduction="none") if labels.numel() else torch.zeros(0)
    if proposals and all(p.has("cls_weights") for p in proposals):
        weight = torch.cat([p.cls_weights for p in proposals]).float()
    else:
        weight = torch.ones_like(loss)
    positive = (labels >= 0) & (labels < num_classes)
    return {k: v.detach().cpu().numpy() for k, v in
            (("iou", iou), ("loss", loss), ("weight", weight), ("positive", positive))}


@torch.no_grad()
def collect_sampler_samples(cfg, model, batch: List[dict], knobs: Dict[str, dict], seed: int = 0
                            ) -> Dict[str, Dict[str, np.ndarray]]:
    """Run one training iteration's backbone and RPN of ``model`` (train mode) on ``batch``
    once, then each sampler's ROI head (:func:`_sampler_head`) on the same features,
    proposals and GTs, recording the sampled ROIs through ``BalancedROIHeads.sample_recorder``.
    Returns ``{sampler: samples_from_record(...)}``."""
    model.train()
    out = {}
    with EventStorage(0):
        images = model.preprocess_image(batch)
        gt = [x["instances"].to(model.device) for x in batch]
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, gt)
        for name, kn in tqdm(knobs.items(), desc="samplers", unit="sampler", leave=False):
            head = _sampler_head(cfg, model, kn).train()
            records = []
            head.sample_recorder = lambda props, preds: records.append((props, preds))
            torch.manual_seed(seed)
            head(images, features, proposals, gt)
            head.sample_recorder = None
            if len(records) != 1:
                raise RuntimeError(f"sampler {name!r}: expected one recorded box-head forward, "
                                   f"got {len(records)}")
            out[name] = samples_from_record(*records[0], num_classes=head.num_classes)
    return out


def plot_samplers(samples: Dict[str, Dict[str, np.ndarray]], path: str, title: str, caption: str,
                  fg_iou: float = 0.5) -> str:
    """One panel per sampler: sampled negatives / positives (marker area ~ weight) over the
    grey candidates, and on the right of each panel the distribution of the sampled ROIs'
    losses (where the points overlap, e.g. the many negatives at IoU 0)."""
    names = [n for n in samples if n != "none"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.0 * len(names), 4.8), sharey=True,
                             squeeze=False, layout="constrained")
    allv = np.concatenate([s["loss"] for s in samples.values()]) if samples else np.ones(1)
    nz = allv[allv > 0]
    ymin = max(float(nz.min()) if nz.size else 1e-6, 1e-6) / 1.5
    ymax = float(allv.max()) * 2.0 if allv.size else 10.0
    bins = np.logspace(np.log10(ymin), np.log10(ymax), 40)
    cand = samples.get("none")
    for ax, name in zip(axes[0], names):
        s = samples[name]
        if cand is not None:
            ax.scatter(cand["iou"], np.maximum(cand["loss"], ymin), s=3, c="#aaaaaa", alpha=0.5,
                       linewidths=0, label="all candidates", rasterized=True)
        groups = ((~s["positive"], NEG_COLOR, "sampled negatives"),
                  (s["positive"], POS_COLOR, "sampled positives"))
        for mask, color, lab in groups:
            ax.scatter(s["iou"][mask], np.maximum(s["loss"][mask], ymin),
                       s=np.clip(10.0 * s["weight"][mask], 0.2, 200), c=color, alpha=0.5,
                       linewidths=0, label=lab, rasterized=True)
        ax.axvline(fg_iou, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylim(ymin, ymax)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("IoU with the matched ground truth")
        # marginal: loss distribution of the sampled negatives / positives
        mx = ax.inset_axes([1.01, 0.0, 0.2, 1.0], sharey=ax)
        for mask, color, _ in groups:
            if mask.any():
                mx.hist(np.maximum(s["loss"][mask], ymin), bins=bins, orientation="horizontal",
                        color=color, alpha=0.45, density=False,
                        weights=np.full(int(mask.sum()), 1.0 / mask.sum()))
        mx.tick_params(labelleft=False, labelsize=7)
        mx.set_xlabel("fraction", fontsize=7)
        npos, nneg = int(s["positive"].sum()), int((~s["positive"]).sum())
        mpos = float(s["loss"][s["positive"]].mean()) if npos else float("nan")
        mneg = float(s["loss"][~s["positive"]].mean()) if nneg else float("nan")
        wtxt = ""
        if not np.allclose(s["weight"], 1.0):
            w = s["weight"]
            wtxt = f"\nweights {w.min():.2f}-{w.max():.2f}"
        ax.set_title(SAMPLER_TITLES.get(name, name))
        ax.text(0.97, 0.03, f"{npos} pos, mean CE {mpos:.2f}\n{nneg} neg, mean CE {mneg:.3f}"
                + wtxt, transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                bbox=dict(boxstyle="round", fc="white", ec="#999999", alpha=0.85))
    axes[0][0].set_ylabel("classification loss (cross entropy of the ROI's label)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    leg = fig.legend(handles, labels, loc="outside upper right", ncol=3, fontsize=9,
                     frameon=False)
    for h in getattr(leg, "legend_handles", None) or leg.legendHandles:  # the legend's copies
        h.set_sizes([25])
        h.set_alpha(0.8)
    fig.suptitle(title, fontsize=12, x=0.02, ha="left")
    return finish_figure(fig, caption, path)


def cmd_samplers(args) -> List[str]:
    ref = RunRef(args.suite, args.run or "faster_rcnn", args.seed, args.compare_dir,
                 args.checkpoint, args.config).check()
    cfg = _config(ref.config, args.device)
    cfg.train.seed = ref.seed  # compare.py trains seed k with train.seed=k: its image stream
    model, it = load_model(cfg, ref.checkpoint, args.device)
    if not hasattr(model, "roi_heads"):
        raise ValueError(f"{ref.config}: samplers needs a two-stage (R-CNN) model")
    knobs = sampler_knobs(args.suite, args.samplers)
    batch = training_batch(cfg, args.iteration)
    samples = collect_sampler_samples(cfg, model, batch, knobs, seed=args.seed)
    fg_iou = float(model.roi_heads.proposal_matcher.thresholds[1])
    n_img = len(batch)
    path = os.path.join(args.out, f"{args.suite}_samplers.png")
    caption = (
        f"Each panel: the ROIs one sampler picks from the same training batch ({n_img} images "
        f"of {args.suite}_train at iteration {args.iteration} of the run's image stream), the "
        f"same RPN proposals (+ GT boxes) and the same network weights: {_ckpt_text(ref, it)}. "
        f"x: IoU of the ROI with its matched GT (max over GTs for negatives), y: its cross "
        f"entropy under the trained box head, marker area proportional to its classification "
        f"weight (ISR-P on positives and ISR-N on negatives for PISA, 1 otherwise); right of each "
        f"panel: the share of the sampled negatives / positives per loss bin. Grey: "
        f"every labelled candidate. Dashed: the foreground IoU threshold. Sampler knobs from "
        f"the suite's ohem_/libra_/pisa_ configs; the sampler-only view (PISA's RPN proposal "
        f"count and CARL are not part of it).")
    return [plot_samplers(samples, path, f"ROI samplers: IoU vs classification loss of the "
                          f"sampled ROIs ({args.suite}; weights of {ref.desc})", caption, fg_iou)]


# ---------------------------------------------------------------------------------------------
# DW maps
# ---------------------------------------------------------------------------------------------
def _test_dataset_name(cfg) -> str:
    names = cfg.dataloader.test.dataset.names
    return names if isinstance(names, str) else list(names)[0]


def busiest_image(dataset_dicts: Sequence[dict]) -> dict:
    """The image with most (non-crowd) boxes; the first of them on ties."""
    if not dataset_dicts:
        raise ValueError("the validation split is empty")
    return max(dataset_dicts, key=lambda d: sum(not a.get("iscrowd", 0)
                                                 for a in d.get("annotations", [])))


def mapped_image(cfg, dataset_dict: dict) -> dict:
    """``dataset_dict`` through the test mapper of ``cfg`` (its resizing), keeping the boxes
    as ``instances`` (the test mapper drops annotations)."""
    mapper = instantiate(cfg.dataloader.test.mapper)
    mapper.is_train = True  # keep the annotations; the augmentations stay the test ones
    return mapper(copy.deepcopy(dataset_dict))


@torch.no_grad()
def dw_maps(model, item: dict, levels: Sequence[str] = ("p3", "p4")) -> Dict[str, object]:
    """DW quantities of every point of ``item``'s image, from ``model``'s (a ``DWFCOS``)
    predictions in eval mode, with the formulas of :mod:`balanced_det.ops.dw` (as
    ``dw_image_terms`` computes them in training). Returns ``{"maps": {level: {name: (H, W)
    array}}, "strides": {level: stride}, "gt_boxes": (G, 4), "gt_classes": (G,)}`` with the
    maps ``pos_weight`` (max over GTs of w_pos), ``neg_weight`` (P_neg of the GT class:
    the minimum over the image's GT classes, 1 outside every bag), ``score`` (max over
    classes of sigmoid(cls) sigmoid(obj)) and ``iou`` (max over GTs of the predicted box's
    IoU)."""
    from balanced_det.modeling.meta_arch.fcos import decode_ltrb
    from balanced_det.ops.dw import (dw_candidate_bag, dw_center_prior, dw_negative_weights,
                                     dw_pairwise_iou_giou, dw_positive_weights)

    model.eval()
    images = model.preprocess_image([item])
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    preds = model.head(feats)
    points, strides, counts = model.points(feats)
    scores = model.scores(preds)[0]
    boxes = decode_ltrb(points, model.box_distances(preds, strides))[0]
    inst = item["instances"].to(model.device)
    gtb, gtl = inst.gt_boxes.tensor.float(), inst.gt_classes.long()
    P, C = scores.shape
    if gtb.shape[0]:
        bag = dw_candidate_bag(points, gtb)
        prior = dw_center_prior(points, strides, gtb, gtl, model.center_prior_sigma, bag)
        iou, giou_loss = dw_pairwise_iou_giou(boxes, gtb)
        w_pos = dw_positive_weights(scores[:, gtl], torch.exp(-5.0 * giou_loss), prior, bag)
        p_neg = dw_negative_weights(iou, bag, gtl, C)
        pos_map = w_pos.amax(dim=1)
        neg_map = p_neg[:, torch.unique(gtl)].amin(dim=1)
        iou_map = iou.amax(dim=1)
    else:
        pos_map = torch.zeros(P, device=scores.device)
        neg_map = torch.ones(P, device=scores.device)
        iou_map = torch.zeros(P, device=scores.device)
    score_map = scores.amax(dim=1)
    out_maps, out_strides = {}, {}
    start = 0
    for name, f, n, s in zip(model.head_in_features, feats, counts, model.strides):
        if name in levels:
            h, w = f.shape[-2:]
            out_maps[name] = {k: v[start:start + n].reshape(h, w).cpu().numpy() for k, v in
                              (("pos_weight", pos_map), ("neg_weight", neg_map),
                               ("score", score_map), ("iou", iou_map))}
            out_strides[name] = int(s)
        start += n
    missing = [lv for lv in levels if lv not in out_maps]
    if missing:
        raise ValueError(f"levels {missing} are not head inputs of the model "
                         f"({list(model.head_in_features)})")
    return {"maps": out_maps, "strides": out_strides, "gt_boxes": gtb.cpu().numpy(),
            "gt_classes": gtl.cpu().numpy()}


# (key, title, colour map, value range (None: 0 to the max over the levels), hide values where)
DW_PANELS = (("pos_weight", "positive weight (max over GTs)", "plasma", None,
              lambda m: m <= 0),
             ("neg_weight", "negative weight of the GT class", "viridis", (0.0, 1.0),
              lambda m: m >= 1.0 - 1e-6),
             ("score", "joint score (max over classes)", "plasma", (0.0, 1.0),
              lambda m: m < 0.05),
             ("iou", "IoU of the predicted box with the best GT", "viridis", (0.0, 1.0),
              lambda m: m < 0.01))


def plot_dw(result: Dict[str, object], image_rgb: np.ndarray, path: str, title: str,
            caption: str) -> str:
    """One row per level, one column per DW quantity; the map (values that carry no
    information hidden: 0 positive weight, negative weight 1, score < 0.05, IoU < 0.01) over the
    grey image, GT boxes in white."""
    levels = list(result["maps"])
    h, w = image_rgb.shape[:2]
    grey = image_rgb.astype(np.float32).mean(axis=2)
    fig, axes = plt.subplots(len(levels), len(DW_PANELS),
                             figsize=(3.7 * len(DW_PANELS),
                                      3.3 * len(levels) * h / max(w, 1) + 0.9),
                             squeeze=False, layout="constrained")
    for c, (key, label, cmap, rng, hide) in enumerate(DW_PANELS):
        if rng is None:  # one scale for all levels: the levels' shares stay comparable
            rng = (0.0, max([float(result["maps"][lv][key].max()) for lv in levels] + [1e-6]))
        for r, lv in enumerate(levels):
            s = result["strides"][lv]
            ax = axes[r][c]
            m = result["maps"][lv][key]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255 * 1.4, interpolation="nearest")
            im = ax.imshow(np.ma.masked_where(hide(m), m), cmap=cmap, vmin=rng[0], vmax=rng[1],
                           alpha=0.85, extent=(0, m.shape[1] * s, m.shape[0] * s, 0),
                           interpolation="nearest")
            for b in result["gt_boxes"]:
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                       ec="white", lw=0.9))
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{lv.upper()} (stride {s})", fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=12)
    return finish_figure(fig, caption, path)


def cmd_dw(args) -> List[str]:
    from balanced_det.data import get_detection_dataset_dicts

    ref = RunRef(args.suite, args.run or "dw_fcos", args.seed, args.compare_dir,
                 args.checkpoint, args.config).check()
    cfg = _config(ref.config, args.device)
    model, it = load_model(cfg, ref.checkpoint, args.device)
    if not hasattr(model, "center_prior_sigma"):
        raise ValueError(f"{ref.config}: dw needs a DW-FCOS model (balanced_det DWFCOS)")
    name = _test_dataset_name(cfg)
    dicts = get_detection_dataset_dicts(name, filter_empty=False)
    if args.image_id is not None:
        match = [d for d in dicts if d.get("image_id") == args.image_id]
        if not match:
            raise ValueError(f"--image-id {args.image_id} is not in {name}")
        d = match[0]
    else:
        d = busiest_image(dicts)
    item = mapped_image(cfg, d)
    result = dw_maps(model, item, args.levels)
    fmt = cfg.dataloader.test.mapper.get("image_format", "BGR")
    img = convert_image_to_rgb(item["image"].permute(1, 2, 0).numpy(), fmt)
    path = os.path.join(args.out, f"{args.suite}_dw_maps.png")
    caption = (
        f"DW quantities over the points of {', '.join(lv.upper() for lv in args.levels)} of "
        f"validation image {os.path.basename(d['file_name'])} (image_id {d.get('image_id')}, "
        f"{len(result['gt_boxes'])} GT boxes in white, "
        f"{'the one with most boxes' if args.image_id is None else 'chosen'}), overlaid on the "
        f"image at its test size, from {_ckpt_text(ref, it)}. Positive weight: the detached "
        f"w_pos of training (centre prior x exp(5v) v, v = p_cls p_loc); negative weight: "
        f"P_neg of the GT class (1 = pure background); joint score sigmoid(cls) sigmoid(obj); "
        f"IoU of each point's predicted box with its best GT; uninformative values (w_pos 0, "
        f"P_neg 1, score < 0.05 (the test threshold), IoU < 0.01) are left transparent, the "
        f"positive-weight scale is shared by the levels. Computed with balanced_det.ops.dw on "
        f"the model's predictions (eval mode), w_pos normalised over all levels as in "
        f"training.")
    return [plot_dw(result, img, path, f"{ref.desc}: dual weights, score and IoU over the "
                    f"points of one validation image ({args.suite})", caption)]


# ---------------------------------------------------------------------------------------------
# Sampling-Free: confidence shifting and class-adaptive thresholds
# ---------------------------------------------------------------------------------------------
def dense_candidate_scores(model, predictions) -> torch.Tensor:
    """(N, R, C) scores of every (anchor/point, class) candidate before any threshold: the
    score the model's inference thresholds (FCOS family: ``model.scores``; RetinaNet: sigmoid
    of the logits)."""
    if hasattr(model, "scores") and callable(model.scores):
        return model.scores(predictions).float()
    if hasattr(model, "_transpose_dense_predictions"):
        logits, _ = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
        return torch.cat(logits, dim=1).float().sigmoid()
    raise ValueError(f"{type(model).__name__} is not a dense detector (RetinaNet or FCOS family)")


def model_class_thresholds(model) -> Optional[np.ndarray]:
    """The class-adaptive thresholds of a Sampling-Free dense model, else ``None``."""
    if getattr(model, "class_adaptive_thresholds", False):
        return model.class_score_thresholds.detach().cpu().numpy().astype(float)
    return None


LOG_BINS = np.logspace(-6, 0, 121)


@torch.no_grad()
def score_statistics(model, loader: Iterable[List[dict]], dataset_name: str,
                     variants: Dict[str, bool], global_thresh: float,
                     num_images: Optional[int] = None) -> Dict[str, object]:
    """One pass over ``loader`` with ``model`` (eval mode): the histogram (``LOG_BINS``) of
    every candidate score and, per variant ``{name: use_class_adaptive_thresholds}``, the
    model's own inference (``forward_inference``) with that threshold setting, evaluated
    COCO-style (``balanced_det.evaluation.COCOEvaluator``), the candidates above the
    threshold and the detections kept, per image."""
    from balanced_det.evaluation import COCOEvaluator

    model.eval()
    hist = np.zeros(len(LOG_BINS) - 1, dtype=np.int64)
    below = 0
    total = 0
    theta = model_class_thresholds(model)
    evaluators = {v: COCOEvaluator(dataset_name, tasks=("bbox",), distributed=False)
                  for v in variants}
    for e in evaluators.values():
        e.reset()
    above = {v: 0 for v in variants}
    kept = {v: 0 for v in variants}
    n_img = 0
    img_ids = []
    saved = getattr(model, "class_adaptive_thresholds", False)
    try:
        for inputs in tqdm(loader, total=num_images, desc="validation images", unit="img",
                           leave=False):
            images = model.preprocess_image(inputs)
            feats = model.backbone(images.tensor)
            feats = [feats[f] for f in model.head_in_features]
            preds = model.head(feats)
            scores = dense_candidate_scores(model, preds)
            flat = scores.reshape(-1).cpu().numpy()
            hist += np.histogram(np.clip(flat, LOG_BINS[0], 1.0), LOG_BINS)[0]
            below += int((flat < LOG_BINS[0]).sum())
            total += flat.size
            n_img += len(inputs)
            img_ids += [x["image_id"] for x in inputs]
            for v, adaptive in variants.items():
                if adaptive and theta is None:
                    raise ValueError("variant with class-adaptive thresholds on a model "
                                     "without them")
                thr = (scores.new_tensor(theta) if adaptive
                       else scores.new_full((scores.shape[-1],), global_thresh))
                above[v] += int((scores > thr).sum())
                if hasattr(model, "class_adaptive_thresholds"):
                    model.class_adaptive_thresholds = adaptive
                # a copy: detectron2's RetinaNet inference applies sigmoid_ in place
                p = ({k: [t.clone() for t in x] for k, x in preds.items()}
                     if isinstance(preds, dict) else [[t.clone() for t in x] for x in preds])
                results = model.forward_inference(images, feats, p)
                outputs = []
                for r, x, size in zip(results, inputs, images.image_sizes):
                    kept[v] += len(r)
                    outputs.append({"instances": detector_postprocess(
                        r, x.get("height", size[0]), x.get("width", size[1]))})
                evaluators[v].process(inputs, outputs)
    finally:
        if hasattr(model, "class_adaptive_thresholds"):
            model.class_adaptive_thresholds = saved
    ap = {}
    for v, e in evaluators.items():
        with contextlib.redirect_stdout(io.StringIO()):
            res = e.evaluate(img_ids=img_ids)
        ap[v] = {k: float(x) for k, x in (res or {}).get("bbox", {}).items()
                 if k in ("AP", "AP50", "AP75")}
    return {"hist": hist, "below": below, "total": total, "num_images": n_img,
            "thresholds": theta, "ap": ap,
            "above_per_image": {v: above[v] / max(n_img, 1) for v in variants},
            "kept_per_image": {v: kept[v] / max(n_img, 1) for v in variants}}


def threshold_table(rows: List[Tuple[str, str, dict, str]], class_names: Sequence[str],
                    theta: Optional[np.ndarray], global_thresh: float, header: str) -> str:
    """Markdown: one row per (model, variant) and the class-adaptive thresholds."""
    lines = [header, "",
             "| model | score threshold | candidates above threshold / image | "
             "detections / image (after NMS) | AP | AP50 | AP75 |",
             "|---|---|---|---|---|---|---|"]
    for model_desc, variant, stats, thr_text in rows:
        ap = stats["ap"].get(variant, {})
        cells = [f"{ap[k]:.1f}" if k in ap and ap[k] == ap[k] else "n/a"
                 for k in ("AP", "AP50", "AP75")]
        lines.append(f"| {model_desc} | {thr_text} | {stats['above_per_image'][variant]:.1f} | "
                     f"{stats['kept_per_image'][variant]:.1f} | " + " | ".join(cells) + " |")
    if theta is not None:
        lines += ["", "Class-adaptive thresholds theta_j = (N_f / N) N_j / sum_k N_k of the "
                  f"Sampling-Free model (global threshold {global_thresh:g}):", "",
                  "| class | " + " | ".join(class_names) + " |",
                  "|---|" + "---|" * len(class_names),
                  "| theta | " + " | ".join(f"{t:.2e}" for t in theta) + " |"]
    return "\n".join(lines) + "\n"


def plot_sampling_free(base: Optional[dict], sf: dict, base_label: str, sf_label: str,
                       class_names: Sequence[str], global_thresh: float, path: str, title: str,
                       caption: str) -> str:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.0), width_ratios=(1.6, 1.0),
                                 layout="constrained")
    centers = np.sqrt(LOG_BINS[:-1] * LOG_BINS[1:])
    for stats, label, color in ((base, base_label, "#7f7f7f"), (sf, sf_label, "#2ca02c")):
        if stats is None:
            continue
        frac = stats["hist"] / max(stats["total"], 1)
        ax.step(centers, np.where(frac > 0, frac, np.nan), where="mid", color=color, lw=1.6,
                label=label)
    ax.axvline(global_thresh, color="k", ls="--", lw=1.2,
               label=f"global threshold {global_thresh:g}")
    theta = sf["thresholds"]
    if theta is not None:
        cmap = plt.get_cmap("tab10")
        for j, t in enumerate(theta):
            ax.axvline(t, color=cmap(j % 10), ls=":", lw=1.3,
                       label=f"class-adaptive: {class_names[j] if j < len(class_names) else j}"
                             f" ({t:.1e})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(LOG_BINS[0], 1.0)
    ax.set_xlabel("candidate score (every anchor/point x class, before thresholding)")
    ax.set_ylabel("fraction of candidates per bin")
    ax.set_title("score distribution (confidence shifting)")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False,
              ncol=3)

    variants = []
    if base is not None:
        variants.append((f"{base_label}\nglobal {global_thresh:g}", base, "global", "#7f7f7f"))
    variants.append((f"{sf_label}\nglobal {global_thresh:g}", sf, "global", "#98df8a"))
    if theta is not None:
        variants.append((f"{sf_label}\nclass-adaptive", sf, "adaptive", "#2ca02c"))
    x = np.arange(len(variants))
    aps = [v[1]["ap"].get(v[2], {}).get("AP", float("nan")) for v in variants]
    ap50 = [v[1]["ap"].get(v[2], {}).get("AP50", float("nan")) for v in variants]
    bx.bar(x - 0.2, aps, 0.4, color=[v[3] for v in variants], edgecolor="k", label="AP")
    bx.bar(x + 0.2, ap50, 0.4, color=[v[3] for v in variants], edgecolor="k", hatch="//",
           label="AP50")
    top = max([a for a in aps + ap50 if a == a] + [1.0])
    for i, v in enumerate(variants):
        st = v[1]
        bx.text(i, top * 1.04, f"{st['above_per_image'][v[2]]:.0f} cand./img\n"
                f"{st['kept_per_image'][v[2]]:.1f} dets/img", ha="center", va="bottom",
                fontsize=8)
    bx.set_ylim(0, top * 1.5)
    bx.set_xticks(x, [v[0] for v in variants], fontsize=8)
    bx.set_ylabel("COCO box AP (%)")
    bx.set_title("effect of the thresholds (validation)")
    bx.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle(title, fontsize=12)
    return finish_figure(fig, caption, path)


def _val_loader(cfg, max_images: Optional[int]):
    from balanced_det.data import get_detection_dataset_dicts
    from detectron2.data import build_detection_test_loader

    name = _test_dataset_name(cfg)
    dicts = get_detection_dataset_dicts(name, filter_empty=False)
    if max_images:
        dicts = dicts[:max_images]
    loader = build_detection_test_loader(
        dataset=dicts, mapper=instantiate(cfg.dataloader.test.mapper), num_workers=0)
    return loader, name, len(dicts)


def cmd_sampling_free(args) -> List[str]:
    sf_ref = RunRef(args.suite, args.run or "sampling_free_retinanet", args.seed,
                    args.compare_dir, args.checkpoint, args.config)
    base_ref = RunRef(args.suite, args.baseline_run or "retinanet", args.seed, args.compare_dir,
                      args.baseline_checkpoint, args.baseline_config)
    check_runs([base_ref, sf_ref])
    cfg = _config(sf_ref.config, args.device)
    model, it = load_model(cfg, sf_ref.checkpoint, args.device)
    if model_class_thresholds(model) is None:
        raise ValueError(f"{sf_ref.config}: the Sampling-Free model has no class-adaptive "
                         "thresholds (class_adaptive_thresholds=False)")
    thr = float(args.score_thresh if args.score_thresh is not None else model.test_score_thresh)
    loader, name, n = _val_loader(cfg, args.max_images)
    sf = score_statistics(model, loader, name, {"global": False, "adaptive": True}, thr, n)
    del model
    bcfg = _config(base_ref.config, args.device)
    bmodel, bit = load_model(bcfg, base_ref.checkpoint, args.device)
    bloader, bname, _ = _val_loader(bcfg, args.max_images)
    if bname != name:
        raise ValueError(f"baseline evaluates on {bname}, the Sampling-Free model on {name}")
    base = score_statistics(bmodel, bloader, name, {"global": False}, thr, n)
    classes = list(MetadataCatalog.get(name).get("thing_classes", []))
    stem = os.path.join(args.out, f"{args.suite}_sampling_free")
    header = (f"Sampling-Free thresholds on {name} ({n} images): {base_ref.describe()} vs "
              f"{sf_ref.describe()}. Candidates: (anchor, class) scores above the threshold "
              f"before top-k and NMS; detections: after class-wise NMS and the "
              f"max-detections cap.")
    md = threshold_table([(base_ref.desc, "global", base, f"{thr:g}"),
                          (sf_ref.desc, "global", sf, f"{thr:g}"),
                          (sf_ref.desc, "adaptive", sf, "class-adaptive")],
                         classes, sf["thresholds"], thr, header)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)
    caption = (
        f"Left: distribution of the scores of every candidate (anchor x class) of "
        f"{base_ref.desc} ({_ckpt_text(base_ref, bit)}) and {sf_ref.desc} "
        f"({_ckpt_text(sf_ref, it)}) over {n} images of {name}; dashed: the global test "
        f"threshold, dotted: the Sampling-Free model's class-adaptive thresholds. Right: COCO "
        f"box AP / AP50 of each model's own inference with the global threshold and of the "
        f"Sampling-Free model with its class-adaptive thresholds; above the bars the "
        f"candidates above threshold and the detections kept per image. Table: "
        f"{_rel(stem + '.md')}.")
    path = plot_sampling_free(base, sf, base_ref.desc, sf_ref.desc, classes, thr, stem + ".png",
                              f"Sampling-Free: confidence shifting and class-adaptive "
                              f"thresholds ({args.suite})", caption)
    return [path, stem + ".md"]


# ---------------------------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------------------------
def read_metrics(run_dir: str) -> Dict[str, Dict[int, float]]:
    """``{"loss": {iteration: total_loss}, "ap": {iteration: bbox/AP}}`` of a run's
    metrics.json (detectron2's JSONWriter: one JSON object per line)."""
    loss, ap = {}, {}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            it = row.get("iteration")
            if it is None:
                continue
            if "total_loss" in row and math.isfinite(row["total_loss"]):
                loss[int(it)] = float(row["total_loss"])
            if "bbox/AP" in row and row["bbox/AP"] == row["bbox/AP"]:
                ap[int(it)] = float(row["bbox/AP"])
    return {"loss": loss, "ap": ap}


def read_curves(suite: str, compare_dir: str) -> Tuple[Dict[str, dict], List[str], List[str]]:
    """Per run name of the suite with at least one finished seed (``eval_results.json``
    written, as ``tools/compare.py`` counts a run done): ``{"desc", "family", "seeds",
    "loss": {seed: {it: v}}, "ap": {seed: {it: v}}, "final_ap": [per seed]}``; the names
    without a finished run; and the unfinished run folders (training, crashed), not drawn."""
    curves, missing, unfinished = {}, [], []
    for name, _, desc in tqdm(SUITES[suite], desc="runs", unit="run", leave=False):
        folder = os.path.join(compare_dir, name)
        seeds = []
        for d in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            run = os.path.join(folder, d)
            if not (d.startswith("seed") and d[4:].isdigit()):
                continue
            if os.path.isfile(os.path.join(run, "eval_results.json")) and \
                    os.path.isfile(os.path.join(run, "metrics.json")):
                seeds.append(int(d[4:]))
            else:
                unfinished.append(os.path.join(name, d))
        if not seeds:
            missing.append(name)
            continue
        seeds.sort()
        entry = {"desc": desc, "family": family(name), "seeds": seeds, "loss": {}, "ap": {},
                 "final_ap": []}
        for s in seeds:
            run = os.path.join(folder, f"seed{s}")
            m = read_metrics(run)
            entry["loss"][s], entry["ap"][s] = m["loss"], m["ap"]
            with open(os.path.join(run, "eval_results.json")) as f:
                entry["final_ap"].append(float(json.load(f)["bbox"]["AP"]))
        curves[name] = entry
    return curves, missing, unfinished


def _band(per_seed: Dict[int, Dict[int, float]]):
    """Iterations logged by every seed, and mean / min / max over seeds there."""
    its = sorted(set.intersection(*[set(v) for v in per_seed.values()])) if per_seed else []
    vals = np.array([[per_seed[s][i] for i in its] for s in per_seed], dtype=float)
    if not its:
        return np.array([]), np.array([]), np.array([]), np.array([])
    return np.array(its), vals.mean(0), vals.min(0), vals.max(0)


def plot_curves(curves: Dict[str, dict], path: str, title: str, caption: str) -> str:
    fams = [f for f in FAMILY_ORDER if any(c["family"] == f for c in curves.values())]
    fams += sorted({c["family"] for c in curves.values()} - set(fams))
    with_ap = any(len(v) >= 2 for c in curves.values() for v in c["ap"].values())
    rows = 2 if with_ap else 1
    fig, axes = plt.subplots(rows, len(fams), figsize=(5.4 * len(fams), 4.2 * rows),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("tab10")
    for col, fam in enumerate(fams):
        ax = axes[0][col]
        members = [(n, c) for n, c in curves.items() if c["family"] == fam]
        lo, hi = math.inf, 0.0
        for k, (name, c) in enumerate(members):
            its, mean, mn, mx = _band(c["loss"])
            if not its.size:
                continue
            color = cmap(k % 10)
            fa = c["final_ap"]
            ap_txt = (f", AP {np.mean(fa):.1f}" + (f" ± {np.std(fa, ddof=1):.1f}" if len(fa) > 1
                                                   else "") if fa else "")
            label = f"{c['desc']} (n={len(c['seeds'])}{ap_txt})"
            ax.plot(its, mean, color=color, lw=1.6, label=label)
            if len(c["seeds"]) > 1:
                ax.fill_between(its, mn, mx, color=color, alpha=0.2, lw=0)
            lo, hi = min(lo, float(mn.min())), max(hi, float(mx.max()))
            if with_ap:
                a_its, a_mean, a_mn, a_mx = _band(c["ap"])
                if a_its.size:
                    bx = axes[1][col]
                    bx.plot(a_its, a_mean, "o-", color=color, lw=1.6, ms=4, label=c["desc"])
                    if len(c["seeds"]) > 1:
                        bx.fill_between(a_its, a_mn, a_mx, color=color, alpha=0.2, lw=0)
        if hi > 0 and lo > 0 and hi / lo > 8:
            ax.set_yscale("log")
        ax.set_title(FAMILY_TITLES.get(fam, fam))
        ax.set_xlabel("iteration")
        ax.set_ylabel("total training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper right")
        if with_ap:
            bx = axes[1][col]
            bx.set_xlabel("iteration")
            bx.set_ylabel("validation box AP (%)")
            bx.set_title(f"{FAMILY_TITLES.get(fam, fam)}: AP at the evaluation points")
            bx.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    return finish_figure(fig, caption, path)


def cmd_curves(args) -> List[str]:
    curves, missing, unfinished = read_curves(args.suite, args.compare_dir)
    if unfinished:
        print(f"curves: unfinished runs (no eval_results.json; training or failed), not drawn: "
              f"{', '.join(unfinished)}")
    if not curves:
        names = [e[0] for e in SUITES[args.suite]]
        cmd = f"python tools/compare.py --suite {args.suite}"
        if os.path.abspath(args.compare_dir) != os.path.abspath(default_compare_dir(args.suite)):
            cmd += f" --output {_rel(args.compare_dir)}"
        raise MissingRunError(
            f"no comparison runs of suite {args.suite!r} in {_rel(args.compare_dir)} (no "
            f"finished <name>/seed<k>/ with metrics.json and eval_results.json). Train them "
            f"with: {cmd} (runs: {', '.join(names)})")
    if missing:
        print(f"curves: no runs of {', '.join(missing)} in {_rel(args.compare_dir)} (not drawn)")
    seeds = sorted({s for c in curves.values() for s in c["seeds"]})
    path = os.path.join(args.out, f"{args.suite}_curves.png")
    caption = (
        f"Total training loss (detectron2's metrics.json, median over its 20-iteration window) "
        f"of the comparison runs in {_rel(args.compare_dir)}: mean over seeds "
        f"{', '.join(map(str, seeds))} (n per method in the legend), band = min to max over "
        f"seeds; legend: final validation AP (mean ± std). Losses of different methods are "
        f"different functions (focal / BCE / GHM / DW / ISR-weighted), so compare their shapes "
        f"and stability, not their levels; compare methods by AP.")
    return [plot_curves(curves, path, f"Training curves of the comparison runs ({args.suite})",
                        caption)]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def cmd_all(args) -> List[str]:
    written, skipped = [], []
    steps = (("samplers", cmd_samplers), ("dw", cmd_dw), ("sampling_free", cmd_sampling_free),
             ("curves", cmd_curves))
    for name, fn in tqdm(steps, desc="figures", unit="figure"):
        try:
            written += fn(args)
        except MissingRunError as e:
            skipped.append(name)
            tqdm.write(f"skipped {name}: {e}")
    if skipped:
        print(f"skipped: {', '.join(skipped)} (missing runs, see above)")
    if not written:
        raise SystemExit("no figure written: every figure's runs are missing (see above)")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--suite", choices=sorted(SUITES), default="trees")
    common.add_argument("--compare-dir", help="runs of tools/compare.py (default: "
                        "output/compare/<suite>)")
    common.add_argument("--out", default=os.path.join(ROOT, "docs", "figures"),
                        help="folder of the PNG files (default: docs/figures)")
    common.add_argument("--seed", type=int, default=0, help="seed of the run to load (single-"
                        "model figures; default 0)")
    common.add_argument("--device", default="cpu")
    model_opts = argparse.ArgumentParser(add_help=False)
    model_opts.add_argument("--run", help="run name of the suite (default: see the figure)")
    model_opts.add_argument("--checkpoint", help="a checkpoint instead of the run's "
                            "model_final.pth")
    model_opts.add_argument("--config", help="the config of --checkpoint (default: the run's "
                            "config in tools/compare.py)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("samplers", parents=[common, model_opts],
                       help="IoU vs classification loss of the ROIs per sampler")
    p.add_argument("--samplers", nargs="+", default=["random", "ohem", "libra", "pisa"],
                   choices=["random", "ohem", "libra", "pisa"])
    p.add_argument("--iteration", type=int, default=0,
                   help="which batch of the run's training image stream (default 0)")

    p = sub.add_parser("dw", parents=[common, model_opts], help="DW weight maps of one image")
    p.add_argument("--image-id", type=int, help="validation image_id (default: most boxes)")
    p.add_argument("--levels", nargs="+", default=["p3", "p4"])

    p = sub.add_parser("sampling_free", parents=[common, model_opts],
                       help="score distribution and class-adaptive thresholds")
    p.add_argument("--baseline-run", help="default: retinanet")
    p.add_argument("--baseline-checkpoint")
    p.add_argument("--baseline-config")
    p.add_argument("--max-images", type=int, help="first N validation images (default: all)")
    p.add_argument("--score-thresh", type=float, help="global threshold (default: the model's "
                   "test_score_thresh, 0.05)")

    sub.add_parser("curves", parents=[common], help="training curves of the comparison runs")

    p = sub.add_parser("all", parents=[common], help="every figure of a suite")
    p.add_argument("--iteration", type=int, default=0)
    p.add_argument("--max-images", type=int)
    return parser


_ALL_DEFAULTS = dict(run=None, checkpoint=None, config=None, samplers=["random", "ohem", "libra",
                     "pisa"], image_id=None, levels=["p3", "p4"], baseline_run=None,
                     baseline_checkpoint=None, baseline_config=None, score_thresh=None,
                     iteration=0, max_images=None)


def main(argv=None) -> List[str]:
    args = build_parser().parse_args(argv)
    for k, v in _ALL_DEFAULTS.items():
        if not hasattr(args, k):
            setattr(args, k, v)
    args.compare_dir = args.compare_dir or default_compare_dir(args.suite)
    commands: Dict[str, Callable] = {"samplers": cmd_samplers, "dw": cmd_dw,
                                     "sampling_free": cmd_sampling_free, "curves": cmd_curves,
                                     "all": cmd_all}
    try:
        written = commands[args.command](args)
    except MissingRunError as e:
        raise SystemExit(f"error: {e}")
    for p in written:
        print(_rel(p))
    return written


if __name__ == "__main__":
    main()
