"""``gradients``: where a trained RetinaNet-family model's classification loss puts its
gradient, by the gradient norm ``g = |sigmoid(x) - y|`` of each (anchor, class) element (GHM's
binning), for positives and negatives apart.

Per run, over the training split (test-time resizing, no flip, batches of the training batch
size, the model in eval mode so GHM-C's EMA is read but not changed):

- elements per image by ``g`` range, positives and negatives apart;
- the share of the classification gradient ``sum |dL/dx|`` (autograd of the model's own
  ``cls_loss`` on the batch divided by its positives, GHM-C with the trained EMA of its
  checkpoint, Sampling-Free's loss times its guided ratio ``w_cls r``) that each range of
  positives and negatives receives, and the gradient's size: ``sum |dL/dx|`` per image;
- of the negatives with ``g >= 0.3``, the share whose anchor overlaps no labelled box
  (IoU < 0.1): score mass on background, or on unlabelled objects;
- the negatives on another class's positive anchor (the anchor is matched to a GT of class
  k, the element is class c != k): per image, and their share of the gradient, which is what
  trains the classes apart (none on one-class data).

GHM-C gives every non-empty bin the same total weight, so a bin's gradient share is its mean
``g`` over the sum of the bins' means, whatever the bin holds; focal loss scales each element by
``(1 - p_t)^gamma`` instead. The table says which elements each loss trains on.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from balanced_det.modeling.losses import ClassificationLoss, FocalLoss, call_loss
from balanced_det.utils.events import take_tensor_scalars
from detectron2.layers import cat
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from .dw import mapped_image
from .runs import (RunRef, analysis_command, check_runs, finish_figure, load_model, relpath,
                   write_markdown)

__all__ = ["RANGES", "BINS", "classification_loss", "guided_loss_scale", "element_gradients",
           "gradient_statistics", "summarise", "write_table", "plot_gradients"]

BINS = 30  # GHM-C's bins (the histograms of the figure)
RANGES = ((0.0, 0.1), (0.1, 0.3), (0.3, 0.7), (0.7, 0.9), (0.9, 1.0))
HARD_G = 0.3  # negatives at or above it are the "hard" ones of the table
FAR_IOU = 0.1  # an anchor below this IoU with every GT overlaps no labelled box


def classification_loss(model) -> ClassificationLoss:
    """The model's ``cls_loss`` plug-in; detectron2's ``RetinaNet``: its focal loss."""
    if getattr(model, "cls_loss", None) is not None:
        return model.cls_loss
    return FocalLoss(model.focal_loss_alpha, model.focal_loss_gamma)


@torch.no_grad()
def guided_loss_scale(model, anchors, logits, labels, deltas, gt_boxes) -> float:
    """``w_cls * r`` of a Sampling-Free model's guided loss on this batch (the ratio
    ``r = w_reg L_reg / L_cls`` as the model's own ``losses`` computes it, which does not depend
    on the normaliser); 1 for a model without one."""
    guided = getattr(model, "guided_loss", None)
    if guided is None:
        return 1.0
    take_tensor_scalars()
    model.losses(anchors, logits, labels, deltas, gt_boxes)
    return guided.w_cls * float(take_tensor_scalars()["guided_loss_ratio"])


def element_gradients(model, items: Sequence[dict]) -> Dict[str, np.ndarray]:
    """One batch of mapped images through a trained RetinaNet (detectron2's or
    ``BalancedRetinaNet``; eval mode): per valid
    (anchor, class) element its ``g`` (float), ``positive`` (bool target 1), ``grad``
    ``|dL/dx|`` of the model's ``cls_loss`` on the batch, ``far`` (bool: the anchor's IoU
    with every GT of its image < 0.1) and ``other_class`` (bool: the anchor is a positive of
    another class)."""
    model.eval()
    c = model.num_classes
    with torch.no_grad():
        images = model.preprocess_image(list(items))
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        logits, deltas = model._transpose_dense_predictions(model.head(feats), [c, 4])
        anchors = model.anchor_generator(feats)
        gt = [x["instances"].to(model.device) for x in items]
        labels, gt_boxes = model.label_anchors(anchors, gt)
        all_anchors = Boxes.cat(anchors)
        far = torch.stack([
            (pairwise_iou(g.gt_boxes, all_anchors).amax(dim=0) < FAR_IOU) if len(g)
            else torch.ones(len(all_anchors), dtype=torch.bool, device=model.device)
            for g in gt])
    labels = torch.stack(labels)  # N x R in {-1, 0..C-1, C}
    valid = labels >= 0
    x = cat(list(logits), dim=1).float().detach().requires_grad_(True)  # N x R x C
    targets = F.one_hot(torch.where(valid, labels, torch.full_like(labels, c)),
                        c + 1)[..., :c].to(x.dtype)
    normalizer = max(float((valid & (labels != c)).sum()), 1.0)
    with EventStorage(0):  # the losses log scalars
        loss = call_loss(classification_loss(model), [l.shape[1] for l in logits], x, targets,
                         valid.to(x.dtype)[..., None], normalizer=normalizer)
        loss = loss * guided_loss_scale(model, anchors, logits, labels, deltas, gt_boxes)
    (grad,) = torch.autograd.grad(loss, x)
    v = valid[..., None].expand_as(x)
    foreground = (valid & (labels != c))[..., None]
    other_class = foreground & (labels[..., None] != torch.arange(c, device=labels.device))
    return {"g": (x.detach().sigmoid() - targets).abs()[v].numpy(),
            "positive": (targets > 0.5)[v].numpy(),
            "grad": grad.abs()[v].numpy(),
            "far": far[..., None].expand_as(x)[v].numpy(),
            "other_class": other_class[v].numpy()}


def summarise(elements: Sequence[Dict[str, np.ndarray]], num_images: int) -> Dict[str, object]:
    """The table's and figure's numbers from :func:`element_gradients` of every batch: per
    range of ``RANGES`` and per side (``pos`` / ``neg``) the elements per image and the share
    of the total gradient; ``hard_neg_far``; 30-bin histograms ``hist_<side>`` and
    ``grad_<side>`` (gradient share per bin); ``other_class_count`` (per image) and
    ``other_class_share`` of the negatives on another class's positive anchor;
    ``grad_per_image``: the gradient's ``sum |dL/dx|`` per image."""
    g = np.concatenate([e["g"] for e in elements])
    pos = np.concatenate([e["positive"] for e in elements])
    grad = np.concatenate([e["grad"] for e in elements]).astype(np.float64)
    far = np.concatenate([e["far"] for e in elements])
    total = grad.sum() or 1.0  # no gradient at all: every share 0
    out: Dict[str, object] = {"images": num_images, "ranges": [list(r) for r in RANGES]}
    for side, mask in (("pos", pos), ("neg", ~pos)):
        counts, shares = [], []
        for k, (lo, hi) in enumerate(RANGES):
            in_range = mask & (g >= lo) & ((g < hi) if k < len(RANGES) - 1 else (g <= hi))
            counts.append(float(in_range.sum()) / max(num_images, 1))
            shares.append(float(grad[in_range].sum() / total))
        out[f"count_{side}"], out[f"share_{side}"] = counts, shares
        b = np.clip((g[mask] * BINS).astype(np.int64), 0, BINS - 1)
        out[f"hist_{side}"] = np.bincount(b, minlength=BINS).tolist()
        out[f"grad_{side}"] = (np.bincount(b, weights=grad[mask], minlength=BINS) / total).tolist()
    hard = ~pos & (g >= HARD_G)
    out["hard_neg_far"] = float(far[hard].mean()) if hard.any() else float("nan")
    other = np.concatenate([e["other_class"] for e in elements])
    out["other_class_count"] = float(other.sum()) / max(num_images, 1)
    out["other_class_share"] = float(grad[other].sum() / total)
    out["grad_per_image"] = float(grad.sum()) / max(num_images, 1)
    return out


def gradient_statistics(cfg, checkpoint: Optional[str], max_images: Optional[int] = None,
                        device: str = "cpu", desc: str = "run") -> Dict[str, object]:
    """:func:`summarise` of the model of ``cfg`` with ``checkpoint`` (None: its initialisation)
    over ``cfg``'s training split, in batches of the training batch size."""
    from balanced_det.data import get_detection_dataset_dicts

    from detectron2.modeling.meta_arch.retinanet import RetinaNet

    model, _ = load_model(cfg, checkpoint, device)
    if not isinstance(model, RetinaNet):
        raise ValueError(
            f"gradients: {desc} is a {type(model).__name__}, not a RetinaNet: the analysis "
            "reads anchors and a RetinaNet head; pass RetinaNet-family runs, e.g. "
            "--runs retinanet ghm_retinanet")
    names = cfg.dataloader.train.dataset.names
    dicts = get_detection_dataset_dicts(names, filter_empty=False)[:max_images]
    batch = int(cfg.dataloader.train.total_batch_size)
    elements = []
    for start in tqdm(range(0, len(dicts), batch), desc=desc, unit="batch", leave=False):
        items = [mapped_image(cfg, d) for d in dicts[start:start + batch]]
        elements.append(element_gradients(model, items))
    return summarise(elements, len(dicts))


def _range_label(k: int) -> str:
    lo, hi = RANGES[k]
    return f"[{lo:g}, {hi:g}{']' if k == len(RANGES) - 1 else ')'}"


def _percent(values: Sequence[float]) -> str:
    """Mean of the defined values in percent; "-" when none is (no hard negatives)."""
    values = [v for v in values if v == v]
    return f"{100 * float(np.mean(values)):.0f} %" if values else "-"


def write_table(stats: Dict[str, List[Dict[str, object]]], descs: Dict[str, str], path: str,
                header: str) -> str:
    """Markdown: per ``g`` range, elements per image and gradient share (%) of each run, for
    positives and negatives (means over seeds)."""
    names = list(stats)
    mean = lambda key, n, k: float(np.mean([s[key][k] for s in stats[n]]))  # noqa: E731
    lines = [header, "", "| g = \\|p − y\\| | " + " | ".join(
        f"{descs[n]}: elements / image | {descs[n]}: gradient share" for n in names) + " |",
        "|---|" + "---:|---:|" * len(names)]
    for side, what in (("pos", "positives"), ("neg", "negatives")):
        for k in range(len(RANGES)):
            lines.append(f"| {what} {_range_label(k)} | " + " | ".join(
                f"{mean('count_' + side, n, k):.1f} | {100 * mean('share_' + side, n, k):.1f} %"
                for n in names) + " |")
    lines.append("| all positives | " + " | ".join(
        f"{sum(mean('count_pos', n, k) for k in range(len(RANGES))):.1f} | "
        f"{100 * sum(mean('share_pos', n, k) for k in range(len(RANGES))):.1f} %"
        for n in names) + " |")
    lines.append("| gradient size: sum \\|dL/dx\\| per image | " + " | ".join(
        f"- | {float(np.mean([s['grad_per_image'] for s in stats[n]])):.3f}" for n in names)
        + " |")
    lines.append("| negatives on another class's positive anchor | " + " | ".join(
        f"{float(np.mean([s['other_class_count'] for s in stats[n]])):.1f} | "
        f"{100 * float(np.mean([s['other_class_share'] for s in stats[n]])):.1f} %"
        for n in names) + " |")
    lines.append(f"| negatives with g ≥ {HARD_G}: share whose anchor overlaps no labelled box "
                 f"(IoU < {FAR_IOU}) | " + " | ".join(
                     f"- | {_percent([s['hard_neg_far'] for s in stats[n]])}" for n in names)
                 + " |")
    return write_markdown(lines, path)


def plot_gradients(stats: Dict[str, List[Dict[str, object]]], descs: Dict[str, str], path: str,
                   caption: str) -> str:
    """Left: elements per 1/30 bin of ``g`` (log scale); right: gradient share per bin; solid
    positives, dashed negatives, one colour per run (sums over seeds)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    centres = (np.arange(BINS) + 0.5) / BINS
    for k, n in enumerate(stats):
        for side, style, what in (("pos", "-", "positives"), ("neg", "--", "negatives")):
            hist = np.sum([s["hist_" + side] for s in stats[n]], axis=0)
            share = np.mean([s["grad_" + side] for s in stats[n]], axis=0)
            label = f"{descs[n]}: {what}"
            ax1.step(centres, np.maximum(hist, 0.5), where="mid", color=f"C{k}", linestyle=style,
                     label=label)
            ax2.step(centres, 100 * share, where="mid", color=f"C{k}", linestyle=style,
                     label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("g = |sigmoid(x) - y|")
    ax1.set_ylabel("elements (training split)")
    ax2.set_xlabel("g = |sigmoid(x) - y|")
    ax2.set_ylabel("share of the classification gradient (%)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return finish_figure(fig, caption, path)


def add_arguments(parser) -> None:
    parser.add_argument("--runs", nargs="+", default=["retinanet", "ghm_retinanet"],
                        help="RetinaNet-family run names of the suite, the baseline first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-images", type=int, help="first N training images")


def run(args) -> List[str]:
    refs = [RunRef(args.suite, name, seed, args.compare_dir) for name in args.runs
            for seed in args.seeds]
    check_runs(refs)
    stats: Dict[str, List[Dict[str, object]]] = {}
    for ref in tqdm(refs, desc="runs", unit="run"):
        cfg = ref.load_config(args.device)
        s = gradient_statistics(cfg, ref.checkpoint, args.max_images, args.device,
                                desc=f"{ref.name} seed {ref.seed}")
        with open(os.path.join(ref.run_dir, "gradients.json"), "w") as f:
            json.dump(s, f, indent=1)
        stats.setdefault(ref.name, []).append(s)
    descs = {r.name: r.desc for r in refs}
    stem = os.path.join(args.out, f"{args.suite}_gradients_{'_'.join(args.runs)}")
    command = analysis_command("gradients", args.suite, args.runs, args.seeds, args.compare_dir)
    header = (f"Classification gradient by g = |p − y| on the {args.suite} training split "
              f"(test-time size, model in eval mode, each model's own loss), mean over seeds "
              f"{', '.join(map(str, args.seeds))} (runs in {relpath(args.compare_dir)}). "
              f"`{command}`")
    md = write_table(stats, descs, stem + ".md", header)
    print(md)
    fig = plot_gradients(stats, descs, stem + ".png",
                         f"Valid (anchor, class) elements of the training split by their "
                         f"gradient norm g (GHM-C's {BINS} bins; left, log scale) and the share "
                         f"of the classification-loss gradient each bin receives (right); solid: "
                         f"positives, dashed: negatives. Seeds {args.seeds}. {command}")
    return [stem + ".md", fig]
