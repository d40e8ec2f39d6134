"""``diagnose``: why a method scores below (or above) its baseline, from finished comparison
runs: what the detections look like on the validation split, how many training positives
each ground-truth box gets per pyramid level (FCOS-family models), and the training curves'
end values (Markdown table + figure).

Per run (averaged over the seeds given):

- detections per image (score >= ``--score-thresh``, after the model's own NMS);
- recall at IoU 0.5 / 0.75 (GTs with some detection at that IoU);
- duplicates per GT: detections with IoU >= 0.5 with a GT, per GT that has one (1 is ideal;
  a detector that keeps several boxes per object pays for them as false positives);
- the score of each GT's best-scoring match (IoU >= 0.5) and of the unmatched detections
  (IoU < 0.5 with every GT): how far apart true and false positives sit;
- score–IoU correlation over detections with IoU >= 0.5 (Pearson; DW's claim is a score that
  ranks by localisation quality);
- the share of unmatched detections that lie on an object of another class (IoU >= 0.5);
- what each class's N highest-scoring detections are, N its number of GTs (all saved
  detections, whatever their score: the ranking AP sees), matched greedily in score order as
  COCO does: true positive, duplicate, another class's object, poor localisation (IoU 0.1–0.5
  with its class) or background — pooled over classes, and the other-class share per class;
- FCOS family: FCOS positives per GT (FCOS's own assignment) by level, and for DW-FCOS the
  candidate-bag size, the positive-weight mass ``sum w_pos`` and the effective number of
  positives ``(sum w)^2 / sum w^2`` per GT;
- from ``metrics.json``: the median over the last fifth of training of each loss and of the
  gradient norm (before clipping).

A detection matches a GT of its own class only (COCO's rule; one-class data is unaffected).
A run without its checkpoint (restored from ``tools/compare.py --records``) is diagnosed from
the detections its last evaluation saved (``val_detections.json.gz``): the detection rows and
the training tail, not the positives per GT (they need the model).
"""
from __future__ import annotations

import json
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from detectron2.config import instantiate
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from .dw import mapped_image
from .runs import (RunRef, analysis_command, check_runs, finish_figure, load_model, relpath,
                   write_markdown)

__all__ = ["match_detections", "top_detection_kinds", "detection_statistics", "positives_per_gt",
           "training_tail", "run_statistics", "diagnose_runs", "write_table", "plot_diagnosis"]

MATCH_IOU = 0.5


def match_detections(boxes: torch.Tensor, scores: torch.Tensor, gt_boxes: torch.Tensor,
                     classes: Optional[torch.Tensor] = None,
                     gt_classes: Optional[torch.Tensor] = None) -> Dict[str, np.ndarray]:
    """One image: ``iou`` (D, G) between detections and the GTs of their class (0 for a GT of
    another class; every pair without ``classes``) and per-detection / per-GT summaries:
    ``det_max_iou`` (D,), ``det_other_class_iou`` (D,) best IoU with a GT of another class,
    ``gt_max_iou`` (G,), ``gt_num_matches`` (G,) detections with IoU >= 0.5,
    ``gt_best_score`` (G,) score of the best-scoring such detection (NaN without one)."""
    d, g = boxes.shape[0], gt_boxes.shape[0]
    iou = (pairwise_iou(Boxes(boxes), Boxes(gt_boxes)) if d and g
           else torch.zeros(d, g))
    other = torch.zeros(d)
    if classes is not None and gt_classes is not None:
        same = classes.reshape(-1, 1) == gt_classes.reshape(1, -1)
        if d and g:
            other = torch.where(same, 0.0, iou).amax(dim=1)
        iou = torch.where(same, iou, 0.0)
    match = iou >= MATCH_IOU
    best = torch.where(match, scores[:, None].expand(d, g), torch.full_like(iou, -1.0))
    best = best.amax(dim=0) if d else torch.full((g,), -1.0)
    return {
        "iou": iou.numpy(),
        "det_max_iou": (iou.amax(dim=1) if g else torch.zeros(d)).numpy(),
        "det_other_class_iou": other.numpy(),
        "gt_max_iou": (iou.amax(dim=0) if d else torch.zeros(g)).numpy(),
        "gt_num_matches": match.sum(dim=0).numpy(),
        "gt_best_score": torch.where(best >= 0, best, torch.full_like(best, float("nan"))).numpy(),
    }


DETECTION_KINDS = ("true", "duplicate", "other class", "localisation", "background")


def top_detection_kinds(per_image: Sequence[dict], num_classes: int) -> Dict[str, object]:
    """What each class's N highest-scoring detections are (N: the class's GT count), from
    ``[{"scores", "classes" (D,), "gt_classes" (G,), **match_detections(...)}]`` of all
    detections. Detections of a class are matched in descending score over the whole split,
    each to its unmatched same-class GT of highest IoU >= 0.5 (COCO's greedy rule); a
    detection is then a ``true`` positive, a ``duplicate`` (its GTs are taken), on ``other
    class``'s object (IoU >= 0.5), a poor ``localisation`` (IoU 0.1–0.5 with its class) or
    ``background``. Returns ``{"kinds": {kind: share of all top-N detections}, "other_class":
    [share of class c's top N] per class (NaN for a class without GTs or detections)}``."""
    counts = np.zeros((num_classes, len(DETECTION_KINDS)))
    num_gt = np.bincount(np.concatenate([np.asarray(m["gt_classes"], dtype=np.int64)
                                         for m in per_image] or [np.zeros(0, np.int64)]),
                         minlength=num_classes)
    rows = [(float(s), int(c), k, j) for k, m in enumerate(per_image)
            for j, (s, c) in enumerate(zip(m["scores"], m["classes"]))]
    rows.sort(key=lambda r: -r[0])
    taken = [np.zeros(len(m["gt_classes"]), dtype=bool) for m in per_image]
    seen = np.zeros(num_classes, dtype=np.int64)
    for _, c, k, j in rows:
        if seen[c] >= num_gt[c]:
            continue
        seen[c] += 1
        iou = per_image[k]["iou"][j]
        free = np.where((iou >= MATCH_IOU) & ~taken[k], iou, -1.0)
        if free.size and free.max() >= 0:
            taken[k][int(free.argmax())] = True
            kind = 0
        elif iou.size and iou.max() >= MATCH_IOU:
            kind = 1
        elif per_image[k]["det_other_class_iou"][j] >= MATCH_IOU:
            kind = 2
        elif iou.size and iou.max() >= 0.1:
            kind = 3
        else:
            kind = 4
        counts[c, kind] += 1
    total = counts.sum()
    per_class = counts.sum(axis=1)
    return {
        "kinds": {kind: float(counts[:, i].sum() / total) if total else float("nan")
                  for i, kind in enumerate(DETECTION_KINDS)},
        "other_class": [float(counts[c, 2] / per_class[c]) if per_class[c] else float("nan")
                        for c in range(num_classes)],
    }


def _mean(values) -> float:
    values = [float(v) for v in values if v == v]
    return statistics.mean(values) if values else float("nan")


def detection_statistics(per_image: Sequence[dict]) -> Dict[str, float]:
    """The detection rows of the table from ``[{"scores": (D,), **match_detections(...)}]``."""
    gt_max = np.concatenate([m["gt_max_iou"] for m in per_image])
    n_match = np.concatenate([m["gt_num_matches"] for m in per_image])
    best = np.concatenate([m["gt_best_score"] for m in per_image])
    scores = np.concatenate([m["scores"] for m in per_image])
    det_iou = np.concatenate([m["det_max_iou"] for m in per_image])
    other = np.concatenate([m["det_other_class_iou"] for m in per_image])
    tp = det_iou >= MATCH_IOU
    corr = (float(np.corrcoef(scores[tp], det_iou[tp])[0, 1])
            if tp.sum() > 2 and scores[tp].std() > 0 and det_iou[tp].std() > 0 else float("nan"))
    return {
        "dets_per_image": len(scores) / max(len(per_image), 1),
        "recall50": float((gt_max >= 0.5).mean()) if len(gt_max) else float("nan"),
        "recall75": float((gt_max >= 0.75).mean()) if len(gt_max) else float("nan"),
        "dup_per_gt": float(n_match[n_match > 0].mean()) if (n_match > 0).any() else float("nan"),
        "tp_score": _mean(best),
        "fp_score": float(scores[~tp].mean()) if (~tp).any() else float("nan"),
        "score_iou_corr": corr,
        "other_class_share": (float((other[~tp] >= MATCH_IOU).mean()) if (~tp).any()
                              else float("nan")),
    }


@torch.no_grad()
def positives_per_gt(model, item: dict) -> Dict[str, np.ndarray]:
    """Training positives per GT of one image of an FCOS-family model (eval-mode
    predictions): ``fcos`` (G, L) FCOS-assignment positives per level; for a ``DWFCOS`` also
    ``bag`` (G, L) candidate-bag points, ``pos_mass`` (G,) ``sum w_pos`` and ``effective``
    (G,) ``(sum w)^2 / sum w^2``. Empty dict for other models."""
    from balanced_det.modeling.meta_arch.fcos import DensePointDetector, decode_ltrb
    from balanced_det.ops.points import fcos_assign, fcos_scale_ranges

    if not isinstance(model, DensePointDetector):
        return {}
    model.eval()
    images = model.preprocess_image([item])
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    points, strides, counts = model.points(feats)
    inst = item["instances"].to(model.device)
    gt = inst.gt_boxes.tensor.float()
    g, levels = gt.shape[0], len(counts)
    level_of = torch.repeat_interleave(torch.arange(levels, device=points.device),
                                       torch.tensor(counts, device=points.device))
    lower, upper = fcos_scale_ranges(strides, counts)
    radius = getattr(model, "center_sampling_radius", 1.5)
    idx = fcos_assign(points, strides, lower, upper, gt, radius)
    fcos = torch.zeros(g, levels, dtype=torch.long, device=points.device)
    pos = idx >= 0
    fcos.index_put_((idx[pos], level_of[pos]), torch.ones_like(idx[pos]), accumulate=True)
    out = {"fcos": fcos.cpu().numpy()}
    if hasattr(model, "center_prior_sigma") and g:
        from balanced_det.ops.dw import dw_image_weights

        preds = model.head(feats)
        scores = model.scores(preds)[0]
        boxes = decode_ltrb(points, model.box_distances(preds, strides))[0]
        w = dw_image_weights(scores, boxes, points, strides, gt, inst.gt_classes.long(),
                             sigma=model.center_prior_sigma)
        bag = torch.zeros(g, levels, dtype=torch.long, device=points.device)
        bag.index_put_((w.gt_idx, level_of[w.point_idx]), torch.ones_like(w.gt_idx),
                       accumulate=True)
        s1 = torch.zeros(g, device=points.device).index_add_(0, w.gt_idx, w.pos)
        s2 = torch.zeros(g, device=points.device).index_add_(0, w.gt_idx, w.pos ** 2)
        out.update(bag=bag.cpu().numpy(), pos_mass=s1.cpu().numpy(),
                   effective=(s1 ** 2 / s2.clamp(min=1e-12)).cpu().numpy())
    return out


def training_tail(run_dir: str, fraction: float = 0.2) -> Dict[str, float]:
    """Median over the last ``fraction`` of the logged training rows of ``metrics.json`` of
    every ``loss*`` key and of ``grad_norm``."""
    rows = []
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "total_loss" in row:
                rows.append(row)
    tail = rows[int(len(rows) * (1 - fraction)):] or rows
    keys = sorted({k for r in tail for k in r if k.startswith("loss") or k == "grad_norm"})
    return {k: statistics.median(r[k] for r in tail if k in r) for k in keys}


def _gt_boxes(d: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """(G, 4) XYXY boxes and (G,) contiguous classes of a dataset dict's non-crowd
    annotations."""
    anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
    boxes = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                          for a in anns], dtype=torch.float32).reshape(-1, 4)
    return boxes, torch.tensor([a["category_id"] for a in anns], dtype=torch.long)


def _matched(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
             gt: Tuple[torch.Tensor, torch.Tensor], score_thresh: float
             ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """The image's matches of the detections with score >= ``score_thresh`` and of all of
    them (for :func:`top_detection_kinds`)."""
    out = []
    for keep in (scores >= score_thresh, torch.ones_like(scores, dtype=torch.bool)):
        m = match_detections(boxes[keep], scores[keep], gt[0], classes[keep], gt[1])
        m.update(scores=scores[keep].numpy(), classes=classes[keep].numpy(),
                 gt_classes=gt[1].numpy())
        out.append(m)
    return out[0], out[1]


def run_statistics(cfg, checkpoint: Optional[str], run_dir: str, score_thresh: float = 0.05,
                   device: str = "cpu", max_images: Optional[int] = None,
                   desc: str = "run", detections: Optional[str] = None) -> Dict[str, object]:
    """Every statistic of one run: the model of ``cfg`` with ``checkpoint`` (None: its
    initialisation) over ``cfg``'s validation split, ``run_dir``'s metrics.json and
    eval_results.json. ``detections``: the run's saved final detections
    (``val_detections.json.gz``) instead of a model — the detection statistics only (no
    positives per GT, which need the model)."""
    from balanced_det.data import get_detection_dataset_dicts  # noqa: F401 (registers data)
    from balanced_det.evaluation.coco import read_detections
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = cfg.dataloader.test.dataset.names
    name = names if isinstance(names, str) else list(names)[0]
    gts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    meta = MetadataCatalog.get(name)
    per_image, ranked, points = [], [], []
    if detections is not None:
        saved = read_detections(detections)
        to_contiguous = getattr(meta, "thing_dataset_id_to_contiguous_id", None) or {}
        ids = list(gts)[:max_images]
        for image_id in tqdm(ids, desc=desc, unit="image", leave=False):
            rows = saved.get(image_id, [])
            boxes = torch.tensor([r["bbox"] for r in rows], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
            scores = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
            classes = torch.tensor([to_contiguous.get(r["category_id"], r["category_id"])
                                    for r in rows], dtype=torch.long)
            m, m_all = _matched(boxes, scores, classes, _gt_boxes(gts[image_id]), score_thresh)
            per_image.append(m)
            ranked.append(m_all)
    else:
        model, _ = load_model(cfg, checkpoint, device)
        model.eval()
        loader = instantiate(cfg.dataloader.test)
        for k, batch in enumerate(tqdm(loader, desc=desc, unit="image", leave=False)):
            if max_images is not None and k >= max_images:
                break
            with torch.no_grad():
                inst = model(batch)[0]["instances"].to("cpu")
            d = gts[batch[0]["image_id"]]
            gt = _gt_boxes(d)
            m, m_all = _matched(inst.pred_boxes.tensor, inst.scores, inst.pred_classes, gt,
                                score_thresh)
            per_image.append(m)
            ranked.append(m_all)
            if len(gt[0]):
                points.append(positives_per_gt(model, mapped_image(cfg, d)))
    stats = detection_statistics(per_image)
    stats.update(top_detection_kinds(ranked, len(meta.thing_classes)),
                 class_names=list(meta.thing_classes))
    stats["dup_hist"] = np.bincount(np.concatenate([m["gt_num_matches"] for m in per_image]),
                                    minlength=6)[:6].tolist()
    stats["tp_scores"] = np.concatenate([m["gt_best_score"] for m in per_image]).tolist()
    stats["fp_scores"] = np.concatenate([m["scores"][m["det_max_iou"] < MATCH_IOU]
                                         for m in per_image]).tolist()
    if points and points[0]:
        for key in points[0]:
            stats[key] = np.concatenate([p[key] for p in points]).mean(axis=0).tolist()
    stats["training"] = training_tail(run_dir)
    with open(os.path.join(run_dir, "eval_results.json")) as f:
        stats["AP"] = {k: float(v) for k, v in json.load(f)["bbox"].items()
                       if k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    return stats


def diagnose_runs(refs: Sequence[RunRef], score_thresh: float = 0.05, device: str = "cpu",
                  max_images: Optional[int] = None) -> Dict[str, List[Dict[str, object]]]:
    """``{run name: [statistics per seed]}`` of finished runs."""
    check_runs(refs, detections_ok=True)
    out: Dict[str, List[Dict[str, object]]] = {}
    for ref in tqdm(refs, desc="runs", unit="run"):
        cfg = ref.load_config(device)
        out.setdefault(ref.name, []).append(run_statistics(
            cfg, ref.checkpoint, ref.run_dir, score_thresh, device, max_images,
            desc=f"{ref.name} seed {ref.seed}",
            detections=ref.detections if ref.use_detections() else None))
    return out


ROWS = (("AP (box)", lambda s: s["AP"]["AP"], "{:.1f}"),
        ("AP75", lambda s: s["AP"]["AP75"], "{:.1f}"),
        ("APs / APm", lambda s: (s["AP"]["APs"], s["AP"]["APm"]), "{:.1f} / {:.1f}"),
        ("detections per image", lambda s: s["dets_per_image"], "{:.0f}"),
        ("recall IoU 0.5 / 0.75", lambda s: (100 * s["recall50"], 100 * s["recall75"]),
         "{:.0f} % / {:.0f} %"),
        ("duplicates per matched GT", lambda s: s["dup_per_gt"], "{:.2f}"),
        ("score of the best match per GT", lambda s: s["tp_score"], "{:.3f}"),
        ("score of unmatched detections", lambda s: s["fp_score"], "{:.3f}"),
        ("score-IoU correlation (IoU >= 0.5)", lambda s: s["score_iou_corr"], "{:.2f}"),
        ("unmatched detections on another class's object", lambda s: 100 * s["other_class_share"],
         "{:.0f} %"),
        ("top-N detections per class: " + " / ".join(DETECTION_KINDS),
         lambda s: tuple(100 * s["kinds"][k] for k in DETECTION_KINDS),
         " / ".join(["{:.0f}"] * len(DETECTION_KINDS)) + " %"))


def _cell(values: List[object], fmt: str) -> str:
    if isinstance(values[0], tuple):
        return fmt.format(*[_mean(v[i] for v in values) for i in range(len(values[0]))])
    return fmt.format(_mean(values))


def write_table(stats: Dict[str, List[Dict[str, object]]], descs: Dict[str, str], path: str,
                header: str) -> str:
    """Markdown table, one column per run (means over seeds), written to ``path``."""
    names = list(stats)
    lines = [header, "", "| | " + " | ".join(descs[n] for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, get, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell([get(s) for s in stats[n]], fmt)
                                                  for n in names) + " |")
    classes = next((s[0]["class_names"] for s in stats.values() if "class_names" in s[0]), [])
    if len(classes) > 1:
        lines.append(f"| top-N detections on another class's object: {' / '.join(classes)} | "
                     + " | ".join(" / ".join(
                         f"{100 * _mean(s['other_class'][c] for s in stats[n]):.0f}"
                         for c in range(len(classes))) + " %" if "other_class" in stats[n][0]
                         else "-" for n in names) + " |")
    levels = max((len(s[0].get("fcos", [])) for s in stats.values()), default=0)
    for key, label in (("fcos", "FCOS positives per GT, P3..P7"),
                       ("bag", "DW candidate-bag points per GT, P3..P7")):
        if any(key in s[0] for s in stats.values()):
            lines.append(f"| {label} | " + " | ".join(
                " / ".join(f"{_mean(s[key][lv] for s in stats[n]):.1f}" for lv in range(levels))
                if key in stats[n][0] else "-" for n in names) + " |")
    for key, label in (("pos_mass", "DW positive-weight mass per GT"),
                       ("effective", "DW effective positives per GT")):
        if any(key in s[0] for s in stats.values()):
            lines.append(f"| {label} | " + " | ".join(
                f"{_mean(np.mean(s[key]) for s in stats[n]):.2f}" if key in stats[n][0]
                else "-" for n in names) + " |")
    keys = sorted({k for n in names for s in stats[n] for k in s["training"]})
    for k in keys:
        lines.append(f"| training, last fifth: {k} | " + " | ".join(
            f"{_mean(s['training'][k] for s in stats[n]):.3f}"
            if all(k in s["training"] for s in stats[n]) else "-" for n in names) + " |")
    return write_markdown(lines, path)


def plot_diagnosis(stats: Dict[str, List[Dict[str, object]]], descs: Dict[str, str], path: str,
                   caption: str) -> str:
    """Left: GTs by number of matching detections (0..5, all seeds); right: score
    histograms of the best match per GT and of the unmatched detections."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    names = list(stats)
    width = 0.8 / len(names)
    bins = np.linspace(0, 1, 26)
    for k, n in enumerate(names):
        hist = np.sum([s["dup_hist"] for s in stats[n]], axis=0)
        ax1.bar(np.arange(6) + (k - (len(names) - 1) / 2) * width, hist / max(hist.sum(), 1),
                width, label=descs[n])
        colour = f"C{k}"
        tp = np.concatenate([np.asarray(s["tp_scores"], dtype=float) for s in stats[n]])
        fp = np.concatenate([np.asarray(s["fp_scores"], dtype=float) for s in stats[n]])
        for values, style, what in ((tp[tp == tp], "-", "best match per GT"),
                                    (fp, "--", "unmatched")):
            if len(values):  # a density of no values is undefined
                ax2.hist(values, bins, histtype="step", color=colour, linestyle=style,
                         density=True, label=f"{descs[n]}: {what}")
    ax1.set_xlabel("detections with IoU >= 0.5 per GT")
    ax1.set_ylabel("fraction of GTs")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("score")
    ax2.set_ylabel("density")
    ax2.legend(fontsize=7)
    return finish_figure(fig, caption, path)


def add_arguments(parser) -> None:
    parser.add_argument("--runs", nargs="+", default=["fcos", "dw_fcos", "dw_fcos_refine"],
                        help="run names of the suite, the baseline first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--max-images", type=int, help="first N validation images")


def run(args) -> List[str]:
    refs = [RunRef(args.suite, name, seed, args.compare_dir) for name in args.runs
            for seed in args.seeds]
    stats = diagnose_runs(refs, args.score_thresh, args.device, args.max_images)
    descs = {r.name: r.desc for r in refs}
    stem = os.path.join(args.out, f"{args.suite}_diagnosis_{'_'.join(args.runs[1:] or args.runs)}")
    command = analysis_command("diagnose", args.suite, args.runs, args.seeds, args.compare_dir)
    header = (f"Diagnosis on the {args.suite} validation split, mean over seeds "
              f"{', '.join(map(str, args.seeds))} (runs in {relpath(args.compare_dir)}; "
              f"detections with score >= {args.score_thresh}). `{command}`")
    for name, per_seed in stats.items():
        for ref, s in zip([r for r in refs if r.name == name], per_seed):
            with open(os.path.join(ref.run_dir, "diagnosis.json"), "w") as f:
                json.dump({k: v for k, v in s.items() if k not in ("tp_scores", "fp_scores")},
                          f, indent=1)
    md = write_table(stats, descs, stem + ".md", header)
    print(md)
    fig = plot_diagnosis(stats, descs, stem + ".png",
                         f"Left: validation GTs by the number of detections (score >= "
                         f"{args.score_thresh}) that overlap them with IoU >= 0.5. Right: "
                         f"scores of each GT's best-scoring match (solid) and of detections "
                         f"that match no GT (dashed). Seeds {args.seeds}. {command}")
    return [stem + ".md", fig]
