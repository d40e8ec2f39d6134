"""Dataset statistics for Sampling-Free (docs/methods/sampling_free.md), computed before training without a network
forward, with the detector's own matchers, and cached as JSON.

What is counted, per *counter* (a detector part with its own assignment rule):

* ``num_fg`` (N_f): samples assigned to a foreground class,
* ``num_valid`` (N): foreground + background samples (ignored ones excluded),

summed over the training images (or a fixed random subset of ``max_images`` of them) at the
sizes the training mapper produces (its augmentations applied to the geometry only: no image
is decoded), plus ``class_counts`` (N_j, non-crowd training instances per class), and, over
all training images, ``image_counts`` (images with a non-crowd instance of class j) and
``num_annotated_images`` (images with any), whose ratio is the class frequency f_j of
Equalization Loss (docs/methods/eql.md).

Every model part that wants statistics is a :class:`DatasetStatsPart` (a counter, a key,
``apply_dataset_stats(fg_fraction, class_counts)``); a model lists them in
``dataset_stats_parts()``; a part that needs only the class frequencies f_j is a
:class:`ClassFrequencyPart` (no counter, no key).
:func:`prepare_model_with_dataset_stats` is called by
``balanced_det.engine.build_model`` for every model, before any checkpoint is loaded.

Cache: ``$BALANCED_DET_CACHE/stats/<dataset>-<key hash>.json``. The file records the full key
(dataset names and a fingerprint of their annotations, counter settings, augmentations,
``max_images``, seed) and is verified when read: a file made for another dataset or matcher
is never used silently. A corrupt cache file is recomputed; an explicitly given
``stats_file`` that does not match raises :class:`DatasetStatsMismatchError`.
"""
from __future__ import annotations

import copy
import dataclasses
from abc import ABCMeta, abstractmethod
import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from .data.cache import atomic_write_json, cache_dir, locked
from .data.datasets import get_detection_dataset_dicts

__all__ = [
    "ForegroundStats",
    "DatasetStatsMismatchError",
    "DatasetStatsSpec",
    "compute_dataset_stats",
    "prepare_model_with_dataset_stats",
    "DatasetStatsPart",
    "ClassFrequencyPart",
    "dataset_stats_parts",
    "AnchorCache",
    "count_matched_anchors",
    "anchor_stats_counter",
    "anchor_generator_key",
    "matcher_key",
    "dummy_feature_maps",
]

logger = logging.getLogger(__name__)
_FORMAT_VERSION = 1

# (padded image size (h, w), boxes (G, 4) XYXY after augmentation, classes (G,)) -> (N_f, N)
Counter = Callable[[Tuple[int, int], torch.Tensor, torch.Tensor], Tuple[int, int]]


class DatasetStatsMismatchError(ValueError):
    """A statistics file that was made for another dataset, matcher or setting."""


@dataclasses.dataclass
class ForegroundStats:
    num_fg: int
    num_valid: int

    @property
    def fg_fraction(self) -> float:
        """N_f / N."""
        if self.num_valid <= 0:
            raise ValueError("no valid samples were counted (empty dataset?)")
        return self.num_fg / self.num_valid


@dataclasses.dataclass
class DatasetStats:
    counters: Dict[str, ForegroundStats]
    class_counts: List[int]
    num_images: int
    key: Dict[str, Any]
    image_counts: Optional[List[int]] = None
    num_annotated_images: Optional[int] = None

    @property
    def class_frequencies(self) -> List[float]:
        """f_j = images containing class j / images with annotations."""
        if self.image_counts is None or not self.num_annotated_images:
            raise ValueError("no image-level class counts were counted (empty dataset, or "
                             "statistics written before they were counted)")
        return [c / self.num_annotated_images for c in self.image_counts]

    def __getitem__(self, name: str) -> ForegroundStats:
        if name not in self.counters:
            raise KeyError(f"no statistics for {name!r}; have {sorted(self.counters)}")
        return self.counters[name]

    def to_json(self) -> Dict[str, Any]:
        return {
            "format": _FORMAT_VERSION,
            "key": self.key,
            "num_images": self.num_images,
            "class_counts": self.class_counts,
            "counters": {k: dataclasses.asdict(v) for k, v in self.counters.items()},
            "fg_fraction": {k: v.fg_fraction for k, v in self.counters.items() if v.num_valid},
            "image_counts": self.image_counts,
            "num_annotated_images": self.num_annotated_images,
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "DatasetStats":
        if data.get("format") != _FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT_VERSION}")
        return cls(
            counters={k: ForegroundStats(int(v["num_fg"]), int(v["num_valid"]))
                      for k, v in data["counters"].items()},
            class_counts=[int(c) for c in data["class_counts"]],
            num_images=int(data["num_images"]),
            key=data["key"],
            image_counts=(None if data.get("image_counts") is None
                          else [int(c) for c in data["image_counts"]]),
            num_annotated_images=(None if data.get("num_annotated_images") is None
                                  else int(data["num_annotated_images"])),
        )


class DatasetStatsPart(metaclass=ABCMeta):
    """A model part that initialises itself from dataset statistics (Sampling-Free's optimal
    bias and class-adaptive thresholds). Meta-architectures list their parts in
    ``dataset_stats_parts() -> {name: part}``; :func:`prepare_model_with_dataset_stats` counts
    and applies."""

    @property
    @abstractmethod
    def needs_dataset_stats(self) -> bool:
        """Whether this part uses statistics (no counting when no part does)."""

    @abstractmethod
    def dataset_stats_counter(self) -> Counter:
        """``(image_size, gt_boxes, gt_classes) -> (N_f, N)`` of one training image with the
        part's own assignment rule (no network forward)."""

    @abstractmethod
    def dataset_stats_key(self) -> Dict[str, Any]:
        """The settings the counts depend on (anchors, matcher, ...): part of the cache key."""

    @abstractmethod
    def apply_dataset_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> None:
        """Initialise from ``N_f / N`` and the per-class instance counts ``N_j``."""


class ClassFrequencyPart(metaclass=ABCMeta):
    """A model part that initialises itself from the class frequencies
    ``f_j = images containing class j / images with annotations`` of the training set
    (Equalization Loss). Listed in ``dataset_stats_parts()`` like a :class:`DatasetStatsPart`;
    it needs no counter and adds nothing to the cache key."""

    @property
    @abstractmethod
    def needs_class_frequencies(self) -> bool:
        """Whether this part uses the class frequencies."""

    @abstractmethod
    def apply_class_frequencies(self, frequencies: Sequence[float]) -> None:
        """Initialise from f_j (C values in [0, 1])."""


@dataclasses.dataclass
class DatasetStatsSpec:
    """Which images to count (the training set as the training loader sees it)."""

    dataset_names: Sequence[str]
    augmentations: Sequence[Any] = ()  # instantiated detectron2 Augmentations
    size_divisibility: int = 0
    filter_empty: bool = True
    max_images: Optional[int] = None
    seed: int = 0
    stats_file: Optional[str] = None


def dummy_feature_maps(image_size: Tuple[int, int], strides: Sequence[int]) -> List[torch.Tensor]:
    """Zero-channel tensors with each level's spatial size, to drive detectron2 anchor
    generators without running a network (they only read the shapes)."""
    h, w = image_size
    return [torch.empty(1, 0, -(-h // s), -(-w // s)) for s in strides]


class AnchorCache:
    """``image_size -> Boxes`` of all anchors of a detectron2 anchor generator (no network
    forward; the last 64 sizes are kept)."""

    def __init__(self, anchor_generator):
        self.anchor_generator = anchor_generator
        self.strides = list(anchor_generator.strides)
        self._cache: Dict[Tuple[int, int], Boxes] = {}

    def __call__(self, image_size) -> Boxes:
        key = tuple(int(x) for x in image_size)
        if key not in self._cache:
            with torch.no_grad():
                maps = dummy_feature_maps(key, self.strides)
                self._cache[key] = Boxes.cat(self.anchor_generator(maps))
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]


def count_matched_anchors(anchors: Boxes, matcher, gt_boxes: torch.Tensor) -> Tuple[int, int]:
    """(N_f, N) over ``anchors`` with a detectron2 ``Matcher`` (labels 1 = foreground, 0 =
    background, -1 = ignored); without GTs every anchor gets the matcher's first label."""
    if gt_boxes.shape[0] == 0:
        first = int(matcher.labels[0])
        return (len(anchors) if first == 1 else 0), (len(anchors) if first >= 0 else 0)
    _, labels = matcher(pairwise_iou(Boxes(gt_boxes), anchors))
    return int((labels == 1).sum()), int((labels >= 0).sum())


def anchor_stats_counter(anchor_generator, matcher) -> Counter:
    """Counter of :func:`count_matched_anchors` over an anchor generator's anchors."""
    anchors = AnchorCache(anchor_generator)
    device = next(iter(anchor_generator.cell_anchors)).device

    def counter(image_size, gt_boxes, gt_classes):
        return count_matched_anchors(anchors(image_size), matcher,
                                     gt_boxes.float().reshape(-1, 4).to(device))

    return counter


def anchor_generator_key(anchor_generator) -> Dict[str, Any]:
    """What a detectron2 anchor generator's anchors depend on (a statistics cache key)."""
    cells = getattr(anchor_generator, "cell_anchors", None)
    return {
        "type": type(anchor_generator).__name__,
        "cell_anchors": [[round(float(v), 4) for v in c.flatten().tolist()] for c in cells]
        if cells is not None else None,
        "strides": [int(s) for s in getattr(anchor_generator, "strides", [])],
        "offset": float(getattr(anchor_generator, "offset", 0.0)),
    }


def matcher_key(matcher) -> Dict[str, Any]:
    """What a detectron2 ``Matcher``'s labels depend on (a statistics cache key)."""
    return {"thresholds": [float(x) for x in matcher.thresholds[1:-1]],
            "labels": [int(x) for x in matcher.labels],
            "allow_low_quality_matches": bool(matcher.allow_low_quality_matches)}


def _describe_aug(aug) -> Any:
    """A JSON-able description of an augmentation (its class and constructor values)."""
    fields = {k: v for k, v in sorted(vars(aug).items()) if not k.startswith("_")}
    return {"type": type(aug).__name__, **{k: _jsonable(v) for k, v in fields.items()}}


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    return repr(v)


def _dataset_fingerprint(dicts: List[dict]) -> str:
    h = hashlib.sha256()
    for d in dicts:
        h.update(f"{d.get('file_name')}|{d.get('height')}|{d.get('width')}|".encode())
        for a in d.get("annotations", []):
            h.update(f"{a.get('category_id')},{a.get('iscrowd', 0)},"
                     f"{','.join(f'{x:.2f}' for x in a['bbox'])};".encode())
    return h.hexdigest()[:20]


def _image_geometry(d: dict, augs: Sequence[Any]) -> Tuple[Tuple[int, int], np.ndarray, np.ndarray]:
    """Training-time size of an image and its non-crowd boxes (XYXY) and classes after the
    augmentations, computed on a 1-channel blank image (no file is read)."""
    annos = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
                     dtype=np.float64).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
    blank = np.zeros((d["height"], d["width"], 1), dtype=np.uint8)
    aug_input = T.AugInput(blank, boxes=boxes)
    T.AugmentationList(list(augs))(aug_input)
    h, w = aug_input.image.shape[:2]
    return (h, w), aug_input.boxes, classes


def compute_dataset_stats(spec: DatasetStatsSpec, counters: Dict[str, Counter],
                          counter_key: Dict[str, Any], num_classes: int,
                          need_image_counts: bool = False) -> DatasetStats:
    """Count N_f / N for every counter, N_j per class and the image-level class counts, or
    read them from the cache (a cached file without image-level counts is recomputed when
    ``need_image_counts``)."""
    names = [spec.dataset_names] if isinstance(spec.dataset_names, str) else list(spec.dataset_names)
    dicts = get_detection_dataset_dicts(names, filter_empty=spec.filter_empty)
    key = {
        "format": _FORMAT_VERSION,
        "datasets": names,
        "dataset_fingerprint": _dataset_fingerprint(dicts),
        "num_dataset_images": len(dicts),
        "filter_empty": spec.filter_empty,
        "augmentations": [_describe_aug(a) for a in spec.augmentations],
        "size_divisibility": spec.size_divisibility,
        "max_images": spec.max_images,
        "seed": spec.seed,
        "num_classes": num_classes,
        "counters": _jsonable(counter_key),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    if spec.stats_file:
        stats = _read(spec.stats_file)
        if stats is None:
            raise DatasetStatsMismatchError(
                f"stats_file {spec.stats_file} is missing or unreadable; remove the setting to "
                "compute the statistics, or run tools/dataset_stats.py to write it")
        if need_image_counts and stats.image_counts is None:
            raise DatasetStatsMismatchError(
                f"stats_file {spec.stats_file} has no image-level class counts; recompute it "
                "with tools/dataset_stats.py")
        if stats.key != key:
            diff = sorted(k for k in set(key) | set(stats.key) if key.get(k) != stats.key.get(k))
            raise DatasetStatsMismatchError(
                f"stats_file {spec.stats_file} was made for other settings (differs in: "
                f"{', '.join(diff)}); remove it or recompute with tools/dataset_stats.py")
        return stats

    path = cache_dir("stats") / f"{'+'.join(names)}-{digest}.json"
    # One process computes (others wait on the lock, or on the barrier in distributed runs).
    if comm.get_world_size() > 1 and not comm.is_main_process():
        comm.synchronize()
        stats = _read(path)
        if stats is None or stats.key != key:
            raise DatasetStatsMismatchError(f"{path}: rank 0 did not write matching statistics")
        return stats
    with locked(path):
        stats = _read(path)
        if stats is not None and stats.key != key:
            logger.warning("%s holds statistics for other settings; recomputing", path)
            stats = None
        if stats is not None and need_image_counts and stats.image_counts is None:
            logger.info("%s has no image-level class counts; recomputing", path)
            stats = None
        if stats is None:
            stats = _count(dicts, spec, counters, key, num_classes)
            atomic_write_json(path, stats.to_json(), indent=1)
            logger.info("Dataset statistics written to %s: %s", path,
                        {k: f"{v.fg_fraction:.3e}" for k, v in stats.counters.items()})
        else:
            logger.info("Dataset statistics read from %s", path)
    if comm.get_world_size() > 1:
        comm.synchronize()
    return stats


def _read(path) -> Optional[DatasetStats]:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return DatasetStats.from_json(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
        logger.warning("Ignoring unreadable statistics file %s (%s)", path, e)
        return None


def _count(dicts, spec: DatasetStatsSpec, counters: Dict[str, Counter], key, num_classes) -> DatasetStats:
    rng = np.random.default_rng(spec.seed)
    order = np.arange(len(dicts))
    if spec.max_images is not None and spec.max_images < len(dicts):
        order = np.sort(rng.choice(len(dicts), size=spec.max_images, replace=False))
    totals = {name: [0, 0] for name in counters}
    class_counts = np.zeros(num_classes, dtype=np.int64)
    image_counts, num_annotated = _image_class_counts(dicts, num_classes)
    # Augmentations draw from numpy's global RNG: seed it for repeatable sizes, then restore.
    state = np.random.get_state()
    np.random.seed(spec.seed)
    try:
        for i in tqdm(order, desc=f"dataset statistics ({'+'.join(key['datasets'])})",
                      unit="img", mininterval=2.0):
            if not counters:  # class counts only: no geometry
                class_counts += np.bincount(_instance_classes(dicts[i]),
                                            minlength=num_classes)[:num_classes]
                continue
            (h, w), boxes, classes = _image_geometry(dicts[i], spec.augmentations)
            if spec.size_divisibility > 1:
                s = spec.size_divisibility
                h, w = -(-h // s) * s, -(-w // s) * s
            class_counts += np.bincount(classes, minlength=num_classes)[:num_classes]
            boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            classes_t = torch.as_tensor(classes, dtype=torch.long)
            for name, counter in counters.items():
                fg, valid = counter((h, w), boxes_t, classes_t)
                totals[name][0] += int(fg)
                totals[name][1] += int(valid)
    finally:
        np.random.set_state(state)
    return DatasetStats(
        counters={k: ForegroundStats(*v) for k, v in totals.items()},
        class_counts=class_counts.tolist(), num_images=int(len(order)), key=key,
        image_counts=image_counts.tolist(), num_annotated_images=num_annotated)


def _instance_classes(d: dict) -> np.ndarray:
    """Classes of an image's non-crowd instances."""
    return np.array([a["category_id"] for a in d.get("annotations", []) if not a.get("iscrowd", 0)],
                    dtype=np.int64)


def _image_class_counts(dicts: List[dict], num_classes: int) -> Tuple[np.ndarray, int]:
    """(images containing a non-crowd instance of class j (C,), images with any)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    annotated = 0
    for d in dicts:
        classes = np.unique(_instance_classes(d))
        classes = classes[classes < num_classes]
        if classes.size:
            annotated += 1
            counts[classes] += 1
    return counts, annotated


def stats_spec_from_config(cfg) -> DatasetStatsSpec:
    """The training set as ``cfg.dataloader.train`` sees it, plus ``cfg.train.dataset_stats``
    options (``max_images``, ``seed``, ``stats_file``)."""
    from detectron2.config import instantiate

    train = cfg.dataloader.train
    ds = train.dataset
    names = ds.names
    augs = [instantiate(copy.deepcopy(a)) for a in (train.mapper.get("augmentations") or [])]
    opts = (cfg.train.get("dataset_stats") or {}) if "train" in cfg else {}
    return DatasetStatsSpec(
        dataset_names=[names] if isinstance(names, str) else list(names),
        augmentations=augs,
        filter_empty=bool(ds.get("filter_empty", True)),
        max_images=opts.get("max_images"),
        seed=int(opts.get("seed", 0) or 0),
        stats_file=opts.get("stats_file"),
    )


def dataset_stats_parts(model) -> Dict[str, DatasetStatsPart]:
    """The parts of ``model`` that use dataset statistics (``{}`` when none does)."""
    get = getattr(model, "dataset_stats_parts", None)
    parts = get() if callable(get) else {}
    return {name: part for name, part in parts.items()
            if (part.needs_class_frequencies if isinstance(part, ClassFrequencyPart)
                else part.needs_dataset_stats)}


def prepare_model_with_dataset_stats(model, cfg) -> Optional[DatasetStats]:
    """Compute (or load) the statistics of ``cfg``'s training set for the parts of ``model``
    that use them, and apply them (bias initialisation, thresholds)."""
    parts = dataset_stats_parts(model)
    if not parts:
        return None
    spec = stats_spec_from_config(cfg)
    spec.size_divisibility = int(getattr(model.backbone, "size_divisibility", 0) or 0)
    meta = MetadataCatalog.get(spec.dataset_names[0])
    num_classes = len(getattr(meta, "thing_classes", []) or []) or _num_classes(model)
    sample_parts = {n: p for n, p in parts.items() if not isinstance(p, ClassFrequencyPart)}
    counters = {name: part.dataset_stats_counter() for name, part in sample_parts.items()}
    key = {name: part.dataset_stats_key() for name, part in sample_parts.items()}
    with torch.no_grad():
        stats = compute_dataset_stats(spec, counters, key, num_classes,
                                      need_image_counts=len(sample_parts) < len(parts))
    for name, part in parts.items():
        if isinstance(part, ClassFrequencyPart):
            part.apply_class_frequencies(stats.class_frequencies)
        else:
            part.apply_dataset_stats(stats[name].fg_fraction, stats.class_counts)
    return stats


def _num_classes(model) -> int:
    for obj in (model, getattr(model, "roi_heads", None)):
        n = getattr(obj, "num_classes", None)
        if isinstance(n, int):
            return n
    raise ValueError("cannot tell the number of classes of the model")
