"""``dw``: DW weight maps (DW paper figure 5) over the points of one validation image, from
a trained DW-FCOS."""
from __future__ import annotations

import copy
import os
from typing import Dict, List, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from balanced_det.data import get_detection_dataset_dicts
from balanced_det.modeling.meta_arch.fcos import decode_ltrb
from balanced_det.ops.dw import dw_image_weights
from detectron2.config import instantiate
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.structures import Boxes, pairwise_iou

from .runs import RunRef, finish_figure, load_model, validation_dataset_name

__all__ = ["busiest_image", "mapped_image", "dw_maps", "plot_dw"]

# (key, title, colour map, value range (None: 0 to the max over the levels), hide values where)
DW_PANELS = (("pos_weight", "positive weight (max over GTs)", "plasma", None,
              lambda m: m <= 0),
             ("neg_weight", "negative weight of the GT class", "viridis", (0.0, 1.0),
              lambda m: m >= 1.0 - 1e-6),
             ("score", "joint score (max over classes)", "plasma", (0.0, 1.0),
              lambda m: m < 0.05),
             ("iou", "IoU of the predicted box with the best GT", "viridis", (0.0, 1.0),
              lambda m: m < 0.01))


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
    predictions in eval mode, computed as in training
    (:func:`balanced_det.ops.dw.dw_image_weights`). Returns ``{"maps": {level: {name: (H, W)
    array}}, "strides": {level: stride}, "gt_boxes": (G, 4), "gt_classes": (G,)}`` with the
    maps ``pos_weight`` (max over GTs of w_pos), ``neg_weight`` (P_neg of the GT class: the
    minimum over the image's GT classes, 1 outside every bag), ``score`` (max over classes of
    sigmoid(cls) sigmoid(obj)) and ``iou`` (max over GTs of the predicted box's IoU)."""
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
    P = scores.shape[0]
    if gtb.shape[0]:
        w = dw_image_weights(scores, boxes, points, strides, gtb, gtl,
                             sigma=model.center_prior_sigma)
        pos_map = torch.zeros(P, device=scores.device).scatter_reduce(
            0, w.point_idx, w.pos, reduce="amax")
        neg_map = w.dense_neg()[:, torch.unique(gtl)].amin(dim=1)
        iou_map = pairwise_iou(Boxes(boxes), Boxes(gtb)).amax(dim=1)
    else:
        pos_map = torch.zeros(P, device=scores.device)
        neg_map = torch.ones(P, device=scores.device)
        iou_map = torch.zeros(P, device=scores.device)
    score_map = scores.amax(dim=1)
    out_maps, out_strides = {}, {}
    start = 0
    for name, f, n, s in zip(model.head_in_features, feats, counts, model.strides):
        if name in levels:
            h, w_ = f.shape[-2:]
            out_maps[name] = {k: v[start:start + n].reshape(h, w_).cpu().numpy() for k, v in
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


def add_arguments(parser) -> None:
    parser.add_argument("--image-id", type=int, help="validation image_id (default: most boxes)")
    parser.add_argument("--levels", nargs="+", default=["p3", "p4"])


def run(args) -> List[str]:
    """Draw ``<suite>_dw_maps.png`` with the model of ``--run`` (default ``dw_fcos``)."""
    ref = RunRef(args.suite, args.run or "dw_fcos", args.seed, args.compare_dir,
                 args.checkpoint, args.config).check()
    cfg = ref.load_config(args.device)
    model, it = load_model(cfg, ref.checkpoint, args.device)
    if not hasattr(model, "center_prior_sigma"):
        raise ValueError(f"{ref.config}: dw needs a DW-FCOS model (balanced_det DWFCOS)")
    name = validation_dataset_name(cfg)
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
        f"image at its test size, from {ref.checkpoint_text(it)}. Positive weight: the detached "
        f"w_pos of training (centre prior x exp(5v) v, v = p_cls p_loc); negative weight: "
        f"P_neg of the GT class (1 = pure background); joint score sigmoid(cls) sigmoid(obj); "
        f"IoU of each point's predicted box with its best GT; uninformative values (w_pos 0, "
        f"P_neg 1, score < 0.05 (the test threshold), IoU < 0.01) are left transparent, the "
        f"positive-weight scale is shared by the levels. Computed with balanced_det.ops.dw on "
        f"the model's predictions (eval mode), w_pos normalised over all levels as in "
        f"training.")
    return [plot_dw(result, img, path, f"{ref.desc}: dual weights, score and IoU over the "
                    f"points of one validation image ({args.suite})", caption)]
