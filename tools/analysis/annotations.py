"""``annotations``: the ground-truth boxes of one validation image (default: the one with most
boxes), drawn over it: what the benchmark's labels look like."""
from __future__ import annotations

import os
from typing import List

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
from PIL import Image

from balanced_det.data import get_detection_dataset_dicts
from detectron2.structures import BoxMode

from .dw import busiest_image
from .runs import finish_figure

__all__ = ["plot_annotations"]

DATASETS = {"trees": "trees_val", "synthetic": "synthetic_val"}


def plot_annotations(dataset_name: str, path: str, caption: str) -> str:
    """The busiest image of ``dataset_name`` with its GT boxes in red."""
    d = busiest_image(get_detection_dataset_dicts(dataset_name, filter_empty=False))
    image = Image.open(d["file_name"]).convert("RGB")
    fig, ax = plt.subplots(figsize=(7, 6 * image.height / max(image.width, 1)))
    ax.imshow(image)
    for a in d["annotations"]:
        x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1))
    ax.set_axis_off()
    ax.set_title(f"{dataset_name}: the {len(d['annotations'])} GT boxes of "
                 f"{os.path.basename(d['file_name'])}")
    return finish_figure(fig, caption, path)


def add_arguments(parser) -> None:
    parser.add_argument("--caption", default="GT boxes as the dataset has them (red).")


def run(args) -> List[str]:
    path = os.path.join(args.out, f"{args.suite}_val_annotations.png")
    return [plot_annotations(DATASETS[args.suite], path, args.caption)]
