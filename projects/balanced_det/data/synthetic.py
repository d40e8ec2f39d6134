"""A deterministic, seeded generator of a COCO-format multi-class detection dataset.

Small coloured shapes (the classes) on a textured background with clutter (lines, blobs
and shapes that belong to no class), many objects per image, long-tailed class frequencies
(class k drawn with probability proportional to 1/(k+1)) and a fraction of images without
any object. Every object has a polygon segmentation, so Mask R-CNN trains on it too.

Long-tail option (``class_image_fractions``, :data:`LONG_TAIL_FRACTIONS`): class k may appear
only in a random fraction ``a_k`` of the images (drawn per image); the objects of an image are
drawn among its allowed classes with the same 1/(k+1) weights. So the image frequency of class
k is about ``(1 - empty_fraction) a_k`` however many objects an image holds, and the rarest
classes can be made to occur in a few percent of the images (what Equalization Loss is for).
:meth:`SyntheticSpec.frequency_groups` tags the classes r/c/f from ``a_k`` as LVIS tags its
categories from their training image counts.

The same :class:`SyntheticSpec` always produces byte-identical JSON and images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .cache import atomic_write_json, build_dir_atomically, cache_dir

__all__ = ["SHAPES", "SyntheticSpec", "LONG_TAIL_FRACTIONS", "generate_synthetic",
           "coco_like_gt_boxes",
           "shape_polygon"]

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "star", "hexagon")
_FORMAT_VERSION = 1
#: ``class_image_fractions`` of the long-tailed synthetic datasets: classes 0-1 frequent,
#: 2-3 common, 4-5 rare (in about 4 % and 2 % of the images)
LONG_TAIL_FRACTIONS = (1.0, 0.6, 0.25, 0.12, 0.045, 0.022)
#: r/c/f boundaries on ``a_k`` (:meth:`SyntheticSpec.frequency_groups`)
RARE_BELOW, COMMON_BELOW = 0.05, 0.3


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    num_images: int = 200
    image_size: int = 256
    num_classes: int = 6
    max_objects: int = 24
    min_size: float = 8.0
    max_size: float = 40.0
    empty_fraction: float = 0.1
    clutter: int = 12
    seed: int = 0
    #: per class, the probability that an image may contain it (None: every class everywhere)
    class_image_fractions: Optional[Tuple[float, ...]] = None

    def __post_init__(self):
        if not 1 <= self.num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [1, {len(SHAPES)}], got {self.num_classes}")
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if not 0 < self.min_size <= self.max_size < self.image_size:
            raise ValueError(
                f"need 0 < min_size <= max_size < image_size, got {self.min_size}, "
                f"{self.max_size}, {self.image_size}"
            )
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        a = self.class_image_fractions
        if a is not None and (len(a) != self.num_classes or not all(0 < x <= 1 for x in a)):
            raise ValueError(f"class_image_fractions={a!r} is not valid; expected "
                             f"{self.num_classes} numbers in (0, 1]")

    def digest(self) -> str:
        fields = dataclasses.asdict(self)
        if fields["class_image_fractions"] is None:  # the digest of the datasets made before
            del fields["class_image_fractions"]
        text = json.dumps(fields, sort_keys=True) + f"v{_FORMAT_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def categories(self) -> List[dict]:
        return [{"id": k + 1, "name": SHAPES[k]} for k in range(self.num_classes)]

    def frequency_groups(self) -> Optional[List[str]]:
        """LVIS-style tag per class: ``"r"`` if ``a_k < 0.05``, ``"c"`` if ``a_k < 0.3``,
        else ``"f"`` (None without ``class_image_fractions``)."""
        if self.class_image_fractions is None:
            return None
        return ["r" if a < RARE_BELOW else "c" if a < COMMON_BELOW else "f"
                for a in self.class_image_fractions]


def shape_polygon(shape: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) of a shape of diameter ``size`` centred at (cx, cy), rotated by ``angle``."""
    r = size / 2
    if shape == "circle":
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
        angle = 0.0
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * r * 0.75
    elif shape == "triangle":
        t = np.array([-90, 30, 150]) * math.pi / 180
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == "cross":
        a, b = 1.0, 0.35
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]]) * r
    elif shape == "star":
        t = np.arange(10) * math.pi / 5 - math.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1) * r
    elif shape == "hexagon":
        t = np.arange(6) * math.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts + np.array([cx, cy])


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(60, 190, size=3)
    noise = rng.normal(0, 18, size=(size // 8 + 1, size // 8 + 1, 3))
    coarse = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    img = coarse.resize((size, size), Image.BILINEAR)
    fine = rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + fine, 0, 255).astype(np.uint8))


def _random_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-9)


def _render_image(spec: SyntheticSpec, split_seed: int, index: int):
    rng = np.random.default_rng([spec.seed, split_seed, index])
    size = spec.image_size
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    # Clutter under the objects: lines and irregular blobs that belong to no class.
    for _ in range(int(rng.integers(0, spec.clutter + 1))):
        if rng.random() < 0.5:
            p = rng.uniform(0, size, size=4)
            draw.line([tuple(p[:2]), tuple(p[2:])], fill=_random_colour(rng),
                      width=int(rng.integers(1, 4)))
        else:
            c = rng.uniform(0, size, size=2)
            k = int(rng.integers(5, 9))
            t = np.sort(rng.uniform(0, 2 * math.pi, size=k))
            rad = rng.uniform(spec.min_size / 3, spec.max_size / 2, size=k)
            pts = np.stack([c[0] + np.cos(t) * rad, c[1] + np.sin(t) * rad], 1)
            draw.polygon([tuple(v) for v in pts], fill=_random_colour(rng))
    probs = 1.0 / np.arange(1, spec.num_classes + 1)
    n = 0 if rng.random() < spec.empty_fraction else int(rng.integers(1, spec.max_objects + 1))
    if spec.class_image_fractions is not None:
        fractions = np.asarray(spec.class_image_fractions)
        allowed = rng.random(spec.num_classes) < fractions
        allowed[int(np.argmax(fractions))] = True
        probs = probs * allowed
    probs /= probs.sum()
    placed: List[np.ndarray] = []
    annotations = []
    for _ in range(n):
        for _attempt in range(10):
            obj_size = float(np.exp(rng.uniform(math.log(spec.min_size), math.log(spec.max_size))))
            cx, cy = rng.uniform(obj_size / 2, size - obj_size / 2, size=2)
            cls = int(rng.choice(spec.num_classes, p=probs))
            poly = shape_polygon(SHAPES[cls], cx, cy, obj_size, float(rng.uniform(0, 2 * math.pi)))
            poly = poly.clip(0, size)
            box = np.concatenate([poly.min(0), poly.max(0)])
            if all(_iou(box, other) < 0.3 for other in placed):
                break
        else:
            continue
        placed.append(box)
        draw.polygon([tuple(v) for v in poly], fill=_random_colour(rng),
                     outline=_random_colour(rng) if rng.random() < 0.5 else None)
        x0, y0, x1, y1 = (float(v) for v in box)
        annotations.append({
            "category_id": cls + 1,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": float(0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], 1))
                                    - np.dot(poly[:, 1], np.roll(poly[:, 0], 1)))),
            "iscrowd": 0,
            "segmentation": [[round(float(v), 2) for v in poly.reshape(-1)]],
        })
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    return img, annotations


def _generate_into(spec: SyntheticSpec, split: str, split_seed: int, out: Path) -> None:
    (out / "images").mkdir()
    ds = {"images": [], "annotations": [], "categories": spec.categories(),
          "info": {"spec": dataclasses.asdict(spec), "split": split}}
    ann_id = 0
    for i in range(spec.num_images):
        img, anns = _render_image(spec, split_seed, i)
        file_name = f"{split}_{i:05d}.png"
        img.save(out / "images" / file_name)
        ds["images"].append({"id": i + 1, "file_name": file_name,
                             "width": spec.image_size, "height": spec.image_size})
        for a in anns:
            ann_id += 1
            ds["annotations"].append({"id": ann_id, "image_id": i + 1, **a})
    atomic_write_json(out / "annotations.json", ds)


def generate_synthetic(spec: SyntheticSpec, split: str) -> Path:
    """Generate (once) and return the folder with ``annotations.json`` and ``images/``."""
    split_seed = {"train": 1, "val": 2}.get(split)
    if split_seed is None:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    final = cache_dir("datasets") / f"synthetic-{spec.digest()}-{split}"
    return build_dir_atomically(final, lambda tmp: _generate_into(spec, split, split_seed, tmp))


def coco_like_gt_boxes(size: Tuple[int, int], num_gt: int, num_classes: int,
                       generator: "torch.Generator"):
    """Random GT boxes of COCO-like sizes for benchmarks: sqrt(area) log-uniform in
    [16, min(512, 0.9 * short side)] px, aspect ratio log-uniform in [1/2, 2], inside the
    ``(h, w)`` image. Returns (boxes (num_gt, 4) XYXY float32, classes (num_gt,) int64)."""
    import torch

    h, w = size
    hi = min(512.0, 0.9 * min(h, w))
    side = 16 * (hi / 16) ** torch.rand(num_gt, generator=generator)
    ratio = 2 ** (2 * torch.rand(num_gt, generator=generator) - 1)
    wh = torch.stack([side * ratio.sqrt(), side / ratio.sqrt()], 1)
    wh = torch.minimum(wh, torch.tensor([w - 1.0, h - 1.0]))
    xy = torch.rand(num_gt, 2, generator=generator) * (torch.tensor([w, h]) - wh)
    boxes = torch.cat([xy, xy + wh], 1)
    return boxes, torch.randint(0, num_classes, (num_gt,), generator=generator)
