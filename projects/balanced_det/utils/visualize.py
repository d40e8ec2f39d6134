"""Pictures of predictions next to ground truth."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["draw_gt_vs_predictions", "predict_and_draw", "pick_busiest_image"]


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    bar = Image.new("RGB", (panel.shape[1], 22), (255, 255, 255))
    ImageDraw.Draw(bar).text((6, 5), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(bar), panel], axis=0)


def draw_gt_vs_predictions(dataset_dict: dict, instances, metadata,
                           score_thresh: Optional[float] = None) -> np.ndarray:
    """RGB array: the image with ground truth (left) and predictions (right): those with
    score >= ``score_thresh``, or (``None``) the highest-scoring ones, as many as there are
    ground-truth boxes (scores of different detectors are not on one scale; the top-N view
    compares them fairly). ``instances`` are detectron2 ``Instances`` in the image's size."""
    img = read_image(dataset_dict["file_name"], format="RGB")
    gt = Visualizer(img, metadata, instance_mode=ColorMode.SEGMENTATION)
    annos = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    left = gt.overlay_instances(
        boxes=np.array(boxes) if boxes else None,
        assigned_colors=[(0.1, 0.8, 0.1)] * len(annos),
    ).get_image()
    inst = instances.to("cpu")
    if score_thresh is None:
        inst = inst[inst.scores.argsort(descending=True)[: len(annos)]]
        what = f"the {len(inst)} highest-scoring predictions (as many as ground-truth boxes)"
    else:
        inst = inst[inst.scores >= score_thresh]
        what = f"predictions with score >= {score_thresh}: {len(inst)}"
    pred = Visualizer(img, metadata, instance_mode=ColorMode.SEGMENTATION)
    right = pred.overlay_instances(
        boxes=inst.pred_boxes.tensor.numpy() if len(inst) else None,
        assigned_colors=[(0.9, 0.1, 0.1)] * len(inst),
    ).get_image()
    left = _titled(left, f"ground truth: {len(annos)} boxes")
    right = _titled(right, what)
    gap = np.full((left.shape[0], 8, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def pick_busiest_image(dataset_name: str) -> int:
    """Index of the image with the most non-crowd annotations (a telling example)."""
    dicts = DatasetCatalog.get(dataset_name)
    counts = [sum(1 for a in d.get("annotations", []) if not a.get("iscrowd", 0)) for d in dicts]
    return int(np.argmax(counts))


@torch.no_grad()
def predict_and_draw(cfg, model: Optional[torch.nn.Module], dataset_name: str, out_path: str,
                     index: Optional[int] = None, score_thresh: Optional[float] = None) -> str:
    """Run ``model`` (built from ``cfg`` if None) on one image of ``dataset_name`` through the
    config's test mapper and save the comparison picture to ``out_path``."""
    if model is None:
        model = instantiate(cfg.model).to(cfg.train.device)
    model.eval()
    dicts = DatasetCatalog.get(dataset_name)
    if index is None:
        index = pick_busiest_image(dataset_name)
    if not 0 <= index < len(dicts):
        raise IndexError(f"image index {index} out of range: {dataset_name} has {len(dicts)} images")
    mapper = instantiate(cfg.dataloader.test.mapper)
    d = dicts[index]
    inputs = mapper(dict(d))
    outputs = model([inputs])[0]["instances"]
    picture = draw_gt_vs_predictions(d, outputs, MetadataCatalog.get(dataset_name), score_thresh)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    Image.fromarray(picture).save(out_path)
    return out_path
