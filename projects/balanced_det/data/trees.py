"""Tree-crown detection data from the ``deepforest==2.1.0`` wheel, converted to COCO-format tiles.

Source (``deepforest/data/`` inside the wheel, read as files; the package is never imported):

============================================  ============  =====================  =====
image                                          size          labels                 split
============================================  ============  =====================  =====
2019_YELL_2_528000_4978000_image_crop2.png     2299 x 2472   574 Tree               train
OSBS_029.png                                   400 x 400     61 Tree                train
2019_YELL_2_541000_4977000_image_crop.png      1249 x 1035   279 Tree               val
SOAP_061.png                                   400 x 400     28 Dead + 9 Alive      val
============================================  ============  =====================  =====

The split keeps whole source images apart (no tile of a val image is seen in training) and
puts one image of each site family on each side. Every box is a tree crown: the dataset has
one category, ``Tree``; SOAP_061's ``Dead``/``Alive`` label is kept per annotation as
``source_label``.

Tiling rule (documented, deterministic): a source image is cut into a grid of near-equal,
non-overlapping tiles, ``n = max(1, round(L / tile_size))`` along each side of length ``L``.
Each source box belongs to exactly one tile, the one containing its centre, and is clipped to
that tile. The parts of a box that reach into neighbouring tiles (at least 2 px wide and high)
are written there as ``iscrowd=1`` regions: COCO evaluation ignores detections on them and
detectron2's training mapper drops them, so a half-visible crown is neither a false positive
nor a background example. Hence: non-crowd annotations per source image == source boxes.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .cache import atomic_write_json, build_dir_atomically, cache_dir

__all__ = [
    "TREE_SOURCES",
    "TREES_CATEGORIES",
    "trees_source_dir",
    "read_voc_boxes",
    "tile_edges",
    "convert_trees",
]

logger = logging.getLogger(__name__)

# (file stem, split); labels are the VOC XML files next to the images.
TREE_SOURCES: Tuple[Tuple[str, str], ...] = (
    ("2019_YELL_2_528000_4978000_image_crop2", "train"),
    ("OSBS_029", "train"),
    ("2019_YELL_2_541000_4977000_image_crop", "val"),
    ("SOAP_061", "val"),
)
TREES_CATEGORIES = [{"id": 1, "name": "Tree"}]
TILE_SIZE = 400
MIN_CROWD_FRAGMENT = 2.0  # px, both sides
_FORMAT_VERSION = 1


def trees_source_dir() -> Path:
    """The folder holding the tree-crown images and labels.

    ``$BALANCED_DET_TREES_SOURCE`` if set, else ``deepforest/data`` of the installed
    ``deepforest`` distribution (located through its metadata, without importing it).
    """
    override = os.environ.get("BALANCED_DET_TREES_SOURCE")
    if override:
        folder = Path(override)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"BALANCED_DET_TREES_SOURCE={override!r} is not a directory; it should hold "
                + ", ".join(f"{s}.png/.xml" for s, _ in TREE_SOURCES)
            )
        return folder
    try:
        dist = importlib.metadata.distribution("deepforest")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "The tree-crown data ships inside the deepforest==2.1.0 wheel, which is not installed "
            "in this environment. Run `make setup` (it installs it with --no-deps), or "
            "`pip install --no-deps deepforest==2.1.0`, or set BALANCED_DET_TREES_SOURCE to a "
            "folder holding the images and their VOC XML labels."
        ) from None
    return Path(dist.locate_file("deepforest/data"))


def read_voc_boxes(xml_path: Path) -> Tuple[np.ndarray, List[str], Tuple[int, int]]:
    """Boxes (XYXY, float64, absolute pixels), labels and (width, height) of a VOC XML file."""
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    width, height = int(size.find("width").text), int(size.find("height").text)
    boxes, labels = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(obj.find("name").text.strip())
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels, (width, height)


def tile_edges(length: int, tile_size: int = TILE_SIZE) -> np.ndarray:
    """Edges of ``max(1, round(length / tile_size))`` near-equal tiles covering ``[0, length]``."""
    n = max(1, int(round(length / tile_size)))
    return np.round(np.linspace(0, length, n + 1)).astype(np.int64)


def _source_digest(src: Path) -> str:
    h = hashlib.sha256()
    for stem, split in TREE_SOURCES:
        for ext in (".png", ".xml"):
            h.update((src / f"{stem}{ext}").read_bytes())
        h.update(split.encode())
    h.update(f"v{_FORMAT_VERSION} tile={TILE_SIZE} crowd={MIN_CROWD_FRAGMENT}".encode())
    return h.hexdigest()[:16]


def _convert_into(src: Path, out: Path) -> None:
    (out / "images").mkdir()
    splits: Dict[str, dict] = {
        split: {"images": [], "annotations": [], "categories": TREES_CATEGORIES}
        for split in ("train", "val")
    }
    image_id = ann_id = 0
    summary = {}
    for stem, split in TREE_SOURCES:
        boxes, labels, (w, h) = read_voc_boxes(src / f"{stem}.xml")
        image = Image.open(src / f"{stem}.png").convert("RGB")
        if image.size != (w, h):
            raise ValueError(f"{stem}.png is {image.size}, its XML says {(w, h)}")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            raise ValueError(f"{stem}.xml has degenerate boxes at rows {np.nonzero(bad)[0]}")
        boxes = boxes.clip(0, [w, h, w, h])
        xs, ys = tile_edges(w), tile_edges(h)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        # Tile index of each box centre; a centre on an inner edge goes to the later tile.
        col = np.searchsorted(xs[1:-1], centres[:, 0], side="right")
        row = np.searchsorted(ys[1:-1], centres[:, 1], side="right")
        n_owned = 0
        for r in range(len(ys) - 1):
            for c in range(len(xs) - 1):
                x0, y0, x1, y1 = int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])
                image_id += 1
                file_name = f"{stem}_r{r}_c{c}.png"
                image.crop((x0, y0, x1, y1)).save(out / "images" / file_name, optimize=False)
                ds = splits[split]
                ds["images"].append({
                    "id": image_id, "file_name": file_name, "width": x1 - x0, "height": y1 - y0,
                    "source_image": f"{stem}.png", "tile_xyxy": [x0, y0, x1, y1],
                })
                clipped = boxes.clip([x0, y0, x0, y0], [x1, y1, x1, y1]) - [x0, y0, x0, y0]
                cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
                owned = (row == r) & (col == c)
                fragment = ~owned & (cw >= MIN_CROWD_FRAGMENT) & (ch >= MIN_CROWD_FRAGMENT)
                for i in np.nonzero(owned | fragment)[0]:
                    ann_id += 1
                    bx, by = float(clipped[i, 0]), float(clipped[i, 1])
                    bw, bh = float(cw[i]), float(ch[i])
                    ds["annotations"].append({
                        "id": ann_id, "image_id": image_id, "category_id": 1,
                        "bbox": [bx, by, bw, bh], "area": bw * bh,
                        "iscrowd": 0 if owned[i] else 1,
                        "source_label": labels[i], "source_index": int(i),
                    })
                n_owned += int(owned.sum())
        assert n_owned == len(boxes), (stem, n_owned, len(boxes))
        summary[stem] = {"split": split, "boxes": len(boxes), "tiles": (len(xs) - 1) * (len(ys) - 1)}
    for split, ds in splits.items():
        atomic_write_json(out / f"trees_{split}.json", ds)
    atomic_write_json(out / "summary.json", summary, indent=2)


def convert_trees(source_dir: Path | None = None) -> Path:
    """Convert the tree-crown data once into ``$BALANCED_DET_CACHE/datasets/trees-<digest>``.

    Returns that folder (``images/``, ``trees_train.json``, ``trees_val.json``,
    ``summary.json``). The digest covers the source files and the tiling parameters, so a
    different source or rule gets its own folder and an existing one is reused as is.
    """
    src = Path(source_dir) if source_dir is not None else trees_source_dir()
    missing = [f"{s}{e}" for s, _ in TREE_SOURCES for e in (".png", ".xml")
               if not (src / f"{s}{e}").exists()]
    if missing:
        raise FileNotFoundError(f"tree-crown source folder {src} lacks {missing}")
    final = cache_dir("datasets") / f"trees-{_source_digest(src)}"
    if not (final / "DONE").exists():
        logger.info(f"Converting tree-crown data from {src} to {final} ...")
    return build_dir_atomically(final, lambda tmp: _convert_into(src, tmp))


def load_summary(folder: Path) -> dict:
    return json.loads((Path(folder) / "summary.json").read_text())
