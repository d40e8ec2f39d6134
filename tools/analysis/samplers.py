"""``samplers``: IoU with the GT vs cross entropy of the ROIs each ROI sampler picks (PISA
paper figures 4/6), from one real training batch of a trained Faster R-CNN."""
from __future__ import annotations

import copy
import os
from typing import Dict, List, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from balanced_det.config import load_config
from balanced_det.engine import build_train_loader, training_seed
from detectron2.config import instantiate
from detectron2.structures import Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from .runs import RunRef, finish_figure, load_model, suite_config

__all__ = ["SAMPLER_RUNS", "sampler_method_configs", "sampler_variant_head", "training_batch",
           "samples_from_record", "collect_sampler_samples", "plot_samplers"]

#: sampler -> the run of the suite whose config's ROI head defines it; ``none`` (the
#: Sampling-Free head: every labelled proposal) is drawn as the candidates.
SAMPLER_RUNS = {"random": "faster_rcnn", "ohem": "ohem_faster_rcnn",
                "libra": "libra_faster_rcnn", "pisa": "pisa_faster_rcnn",
                "none": "sampling_free_faster_rcnn"}
SAMPLERS = ("random", "ohem", "libra", "pisa")
SAMPLER_TITLES = {"random": "random (detectron2)", "ohem": "OHEM", "libra": "Libra (IoU-balanced)",
                  "pisa": "PISA (ISR-P + ISR-N)", "none": "all candidates"}
POS_COLOR, NEG_COLOR = "#d62728", "#1f77b4"


def sampler_method_configs(suite: str, samplers: Sequence[str] = SAMPLERS) -> Dict[str, object]:
    """``{sampler: config}``: the suite's method config of each sampler and of ``none``
    (:data:`SAMPLER_RUNS`)."""
    return {s: load_config(suite_config(suite, SAMPLER_RUNS[s])) for s in [*samplers, "none"]}


def sampler_variant_head(cfg, model, method_cfg):
    """``model.roi_heads`` (its weights) sampling as ``method_cfg`` does: the ROI head of
    ``cfg.model`` as a ``BalancedROIHeads`` with the ``sampler`` and ``positive_weighting``
    nodes of ``method_cfg.model.roi_heads`` (where the method config has neither: detectron2's
    random sampler, no weighting). The box predictor becomes ``BalancedFastRCNNOutputLayers``
    (identical to detectron2's until an option is set) if it takes no per-sample weights."""
    from balanced_det.modeling.roi_heads import BalancedFastRCNNOutputLayers, BalancedROIHeads

    roi = copy.deepcopy(cfg.model.roi_heads)
    if not isinstance(model.roi_heads, BalancedROIHeads):
        roi._target_ = BalancedROIHeads
    if not getattr(type(model.roi_heads.box_predictor), "supports_sample_weights", False):
        roi.box_predictor._target_ = BalancedFastRCNNOutputLayers
    method_roi = method_cfg.model.roi_heads
    for part in ("sampler", "positive_weighting"):
        node = method_roi.get(part)
        if node is not None or part in roi:  # absent from both: the head's default
            roi[part] = copy.deepcopy(node)
    head = instantiate(roi)
    head.load_state_dict(model.roi_heads.state_dict())
    return head.to(model.device)


def training_batch(cfg, iteration: int = 0) -> List[dict]:
    """The batch that the training loader of ``cfg`` gives at ``iteration`` (the run's seed and
    image order, as ``train_net.py`` builds it; augmentation randomness seeded by the run's
    seed + iteration)."""
    seed = training_seed(cfg)
    cfg.dataloader.train.num_workers = 0
    seed_all_rng(seed + iteration)
    return next(iter(build_train_loader(cfg, start_iter=iteration, seed=seed)))


def samples_from_record(proposals: List[Instances], predictions, num_classes: int
                        ) -> Dict[str, np.ndarray]:
    """Arrays over the sampled ROIs of one recorded box-head forward: ``iou`` with the matched
    GT (``gt_boxes``; 0 without GTs), ``loss`` (cross entropy of the ROI's label under the
    predicted scores), ``weight`` (``cls_weights``, 1 when the sampler sets none),
    ``positive`` (foreground label)."""
    scores = predictions[0].detach().float()
    labels = torch.cat([p.gt_classes for p in proposals]) if proposals else \
        torch.zeros(0, dtype=torch.long)
    ious = [matched_pairwise_iou(p.proposal_boxes, p.gt_boxes) if p.has("gt_boxes")
            else torch.zeros(len(p), device=scores.device) for p in proposals]
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
def collect_sampler_samples(cfg, model, batch: List[dict], method_cfgs: Dict[str, object],
                            seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """Run the backbone and RPN of ``model`` (train mode) on ``batch`` once, then the ROI head
    of each sampler (:func:`sampler_variant_head` of ``method_cfgs``) on the same features,
    proposals and GTs, recording the sampled ROIs through ``BalancedROIHeads.sample_recorder``.
    Returns ``{sampler: samples_from_record(...)}``."""
    model.train()
    out = {}
    with EventStorage(0):
        images = model.preprocess_image(batch)
        gt = [x["instances"].to(model.device) for x in batch]
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, gt)
        for name, method_cfg in tqdm(method_cfgs.items(), desc="samplers", unit="sampler",
                                     leave=False):
            head = sampler_variant_head(cfg, model, method_cfg).train()
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


def add_arguments(parser) -> None:
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--iteration", type=int, default=0,
                        help="which batch of the run's training image stream (default 0)")


def run(args) -> List[str]:
    """Draw ``<suite>_samplers.png`` with the weights of ``--run`` (default ``faster_rcnn``)."""
    ref = RunRef(args.suite, args.run or "faster_rcnn", args.seed, args.compare_dir,
                 args.checkpoint, args.config).check()
    cfg = ref.load_config(args.device)
    cfg.train.seed = ref.seed  # compare.py trains seed k with train.seed=k: its image stream
    model, it = load_model(cfg, ref.checkpoint, args.device)
    if not hasattr(model, "roi_heads"):
        raise ValueError(f"{ref.config}: samplers needs a two-stage (R-CNN) model")
    method_cfgs = sampler_method_configs(args.suite, args.samplers)
    batch = training_batch(cfg, args.iteration)
    samples = collect_sampler_samples(cfg, model, batch, method_cfgs, seed=args.seed)
    fg_iou = float(model.roi_heads.proposal_matcher.thresholds[1])
    path = os.path.join(args.out, f"{args.suite}_samplers.png")
    caption = (
        f"Each panel: the ROIs one sampler picks from the same training batch ({len(batch)} "
        f"images of {args.suite}_train at iteration {args.iteration} of the run's image "
        f"stream), the same RPN proposals (+ GT boxes) and the same network weights: "
        f"{ref.checkpoint_text(it)}. x: IoU of the ROI with its matched GT (max over GTs for "
        f"negatives), y: its cross entropy under the trained box head, marker area proportional "
        f"to its classification weight (ISR-P on positives and ISR-N on negatives for PISA, 1 "
        f"otherwise); right of each panel: the share of the sampled negatives / positives per "
        f"loss bin. Grey: every labelled candidate. Dashed: the foreground IoU threshold. "
        f"Sampler and positive weighting from the suite's ohem_/libra_/pisa_ configs; the "
        f"sampler-only view (PISA's RPN proposal count and CARL are not part of it).")
    return [plot_samplers(samples, path, f"ROI samplers: IoU vs classification loss of the "
                          f"sampled ROIs ({args.suite}; weights of {ref.desc})", caption, fg_iou)]
