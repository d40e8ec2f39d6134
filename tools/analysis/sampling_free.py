"""``sampling_free``: score distribution of every (anchor, class) candidate of RetinaNet vs
Sampling-Free RetinaNet, with the global and the class-adaptive thresholds and their AP
(figure + Markdown table)."""
from __future__ import annotations

import contextlib
import io
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from balanced_det.data import get_detection_dataset_dicts
from balanced_det.evaluation import COCOEvaluator
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.postprocessing import detector_postprocess

from .runs import (RunRef, check_runs, finish_figure, load_model, relpath,
                   validation_dataset_name)

__all__ = ["LOG_BINS", "dense_candidate_scores", "model_class_thresholds", "score_statistics",
           "global_threshold", "threshold_table", "plot_sampling_free", "validation_loader"]

LOG_BINS = np.logspace(-6, 0, 121)


def dense_candidate_scores(model, predictions) -> torch.Tensor:
    """(N, R, C) scores of every (anchor/point, class) candidate before any threshold: the
    score the model's inference thresholds (FCOS family: ``model.scores``; RetinaNet: sigmoid
    of the logits)."""
    if hasattr(model, "scores") and callable(model.scores):
        return model.scores(predictions).float()
    if hasattr(model, "anchor_generator") and isinstance(predictions, (list, tuple)):
        logits = [permute_to_N_HWA_K(x, model.num_classes) for x in predictions[0]]
        return torch.cat(logits, dim=1).float().sigmoid()
    raise ValueError(f"{type(model).__name__} is not a dense detector (RetinaNet or FCOS family)")


def model_class_thresholds(model) -> Optional[np.ndarray]:
    """The class-adaptive thresholds of a Sampling-Free dense model
    (``class_score_thresholds.values``), else ``None``."""
    thresholds = getattr(model, "class_score_thresholds", None)
    return None if thresholds is None else thresholds.values.detach().cpu().numpy().astype(float)


@contextlib.contextmanager
def global_threshold(model):
    """Inference of ``model`` with its global ``test_score_thresh``: the class-adaptive
    thresholds, if any, are taken off for the duration."""
    thresholds = getattr(model, "class_score_thresholds", None)
    if thresholds is None:
        yield model
        return
    model.class_score_thresholds = None
    try:
        yield model
    finally:
        model.class_score_thresholds = thresholds


@torch.no_grad()
def score_statistics(model, loader: Iterable[List[dict]], dataset_name: str,
                     variants: Dict[str, bool], global_thresh: float,
                     num_images: Optional[int] = None) -> Dict[str, object]:
    """One pass over ``loader`` with ``model`` (eval mode): the histogram (``LOG_BINS``) of
    every candidate score and, per variant ``{name: use_class_adaptive_thresholds}``, the
    model's own inference (``forward_inference``) with that threshold setting, evaluated
    COCO-style (``balanced_det.evaluation.COCOEvaluator``), the candidates above the
    threshold and the detections kept, per image."""
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
            # a copy: detectron2's RetinaNet inference applies sigmoid_ in place
            p = ({k: [t.clone() for t in x] for k, x in preds.items()}
                 if isinstance(preds, dict) else [[t.clone() for t in x] for x in preds])
            with contextlib.nullcontext() if adaptive else global_threshold(model):
                results = model.forward_inference(images, feats, p)
            outputs = []
            for r, x, size in zip(results, inputs, images.image_sizes):
                kept[v] += len(r)
                outputs.append({"instances": detector_postprocess(
                    r, x.get("height", size[0]), x.get("width", size[1]))})
            evaluators[v].process(inputs, outputs)
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
    """Left: the candidate score histograms with the thresholds; right: AP / AP50 of each
    (model, threshold) variant with its candidates and detections per image."""
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


def validation_loader(cfg, max_images: Optional[int]):
    """``(loader, dataset name, number of images)`` over the first ``max_images`` (default:
    all) images of the test dataset of ``cfg``, with its test mapper, one image per batch."""
    name = validation_dataset_name(cfg)
    dicts = get_detection_dataset_dicts(name, filter_empty=False)
    if max_images:
        dicts = dicts[:max_images]
    loader = build_detection_test_loader(
        dataset=dicts, mapper=instantiate(cfg.dataloader.test.mapper), num_workers=0)
    return loader, name, len(dicts)


def add_arguments(parser) -> None:
    parser.add_argument("--baseline-run", help="default: retinanet")
    parser.add_argument("--baseline-checkpoint")
    parser.add_argument("--baseline-config")
    parser.add_argument("--max-images", type=int,
                        help="first N validation images (default: all)")
    parser.add_argument("--score-thresh", type=float, help="global threshold (default: the "
                        "model's test_score_thresh, 0.05)")


def run(args) -> List[str]:
    """Draw ``<suite>_sampling_free.png`` and write ``<suite>_sampling_free.md``: ``--run``
    (default ``sampling_free_retinanet``) against ``--baseline-run`` (``retinanet``)."""
    sf_ref = RunRef(args.suite, args.run or "sampling_free_retinanet", args.seed,
                    args.compare_dir, args.checkpoint, args.config)
    base_ref = RunRef(args.suite, args.baseline_run or "retinanet", args.seed, args.compare_dir,
                      args.baseline_checkpoint, args.baseline_config)
    check_runs([base_ref, sf_ref])
    cfg = sf_ref.load_config(args.device)
    model, it = load_model(cfg, sf_ref.checkpoint, args.device)
    if model_class_thresholds(model) is None:
        raise ValueError(f"{sf_ref.config}: the Sampling-Free model has no class-adaptive "
                         "thresholds (class_adaptive_thresholds=False)")
    thr = float(args.score_thresh if args.score_thresh is not None else model.test_score_thresh)
    loader, name, n = validation_loader(cfg, args.max_images)
    sf = score_statistics(model, loader, name, {"global": False, "adaptive": True}, thr, n)
    del model
    bcfg = base_ref.load_config(args.device)
    bmodel, bit = load_model(bcfg, base_ref.checkpoint, args.device)
    bloader, bname, _ = validation_loader(bcfg, args.max_images)
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
    os.makedirs(args.out, exist_ok=True)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)
    caption = (
        f"Left: distribution of the scores of every candidate (anchor x class) of "
        f"{base_ref.desc} ({base_ref.checkpoint_text(bit)}) and {sf_ref.desc} "
        f"({sf_ref.checkpoint_text(it)}) over {n} images of {name}; dashed: the global test "
        f"threshold, dotted: the Sampling-Free model's class-adaptive thresholds. Right: COCO "
        f"box AP / AP50 of each model's own inference with the global threshold and of the "
        f"Sampling-Free model with its class-adaptive thresholds; above the bars the "
        f"candidates above threshold and the detections kept per image. Table: "
        f"{relpath(stem + '.md')}.")
    path = plot_sampling_free(base, sf, base_ref.desc, sf_ref.desc, classes, thr, stem + ".png",
                              f"Sampling-Free: confidence shifting and class-adaptive "
                              f"thresholds ({args.suite})", caption)
    return [path, stem + ".md"]
