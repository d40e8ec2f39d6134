"""Golden values of every CPU method config: what a refactoring must not change.

For each config under ``configs/Synthetic`` and ``configs/Trees``: the model as the config
builds it (ImageNet Lite0 weights, dataset statistics where the method uses them), a fixed
batch of two images of a small seeded synthetic set with the config's class count (one image
with objects, one without), float32 on the CPU; the loss dict of two training iterations
(SGD step of the config's optimizer in between) and the top detections of one image after them.

``python tests/golden.py --record`` writes ``tests/golden_values.json`` (only when the
behaviour is meant to change; ``--record CONFIG_ID ...`` adds or updates those configs only,
e.g. ``Synthetic/usw_mask_rcnn_effnet_lite0_FPN.py``); ``tests/modeling/test_golden_values.py``
compares.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from typing import Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN_FILE = os.path.join(HERE, "golden_values.json")
NUM_DETECTIONS = 20  # detections kept per config (sorted by score)
IMAGE_SIZE = 160


def golden_config_paths() -> List[str]:
    out = []
    for sub in ("Synthetic", "Trees"):
        d = os.path.join(ROOT, "configs", sub)
        out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".py")]
    return out


def config_id(path: str) -> str:
    return os.path.relpath(path, os.path.join(ROOT, "configs"))


def _num_classes(cfg) -> int:
    m = cfg.model
    return int(m.roi_heads.num_classes if "roi_heads" in m else m.num_classes)


def golden_dataset(num_classes: int) -> str:
    """Register (once) and return the name of the golden training set for a class count."""
    from detectron2.data import DatasetCatalog

    from balanced_det.data import SyntheticSpec, register_synthetic

    name = f"golden_synthetic_c{num_classes}_train"
    if name not in DatasetCatalog.list():
        spec = SyntheticSpec(num_images=6, image_size=IMAGE_SIZE, num_classes=num_classes,
                             max_objects=12, min_size=10, max_size=48, empty_fraction=0.3,
                             clutter=4, seed=11)
        register_synthetic(name, spec, "train")
    return name


def _batch(names: str, use_masks: bool):
    import detectron2.data.transforms as T

    from balanced_det.data import DatasetMapper, get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    with_objects = next(d for d in dicts if d["annotations"])
    empty = next(d for d in dicts if not d["annotations"])
    mapper = DatasetMapper(is_train=True, image_format="RGB", use_instance_mask=use_masks,
                           augmentations=[T.ResizeShortestEdge(IMAGE_SIZE, IMAGE_SIZE * 2)])
    return [mapper(copy.deepcopy(d)) for d in (with_objects, empty)]


def run_golden_job(path: str) -> Dict:
    """The loss dicts of two training iterations and the top detections of one image, on one
    CPU thread (results of some kernels depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _golden_job(path)
    finally:
        torch.set_num_threads(threads)


def _golden_job(path: str) -> Dict:
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from balanced_det.config import load_config
    from balanced_det.engine.train_loop import build_model, cfg_get

    cfg = load_config(path)
    names = golden_dataset(_num_classes(cfg))
    cfg.dataloader.train.dataset.names = names
    cfg.train.device = "cpu"
    m = cfg.model
    if "roi_heads" in m:
        m.roi_heads.box_predictor.test_score_thresh = 0.0
    else:
        m.test_score_thresh = 0.0
    use_masks = cfg_get(cfg, "model.roi_heads.mask_head") is not None
    torch.manual_seed(0)
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batch = _batch(names, use_masks)
    model.train()
    iterations = []
    with EventStorage(0):
        for it in range(2):
            torch.manual_seed(100 + it)
            loss_dict = model(batch)
            iterations.append({k: float(v.detach()) for k, v in sorted(loss_dict.items())})
            optimizer.zero_grad()
            sum(loss_dict.values()).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        inst = model([{k: v for k, v in batch[0].items() if k != "instances"}])[0]["instances"]
    n = min(len(inst), NUM_DETECTIONS)
    thresholds = [b.tolist() for name, b in sorted(model.named_buffers())
                  if "class_score_thresh" in name]  # class-adaptive thresholds, if any
    return {
        "class_thresholds": thresholds,
        "losses": iterations,
        "num_detections": len(inst),
        "boxes": inst.pred_boxes.tensor[:n].tolist(),
        "scores": inst.scores[:n].tolist(),
        "classes": inst.pred_classes[:n].tolist(),
    }


def record(only=()) -> None:
    """Record every config's values, or only those of the config ids ``only`` (the others'
    recorded values kept: values recorded on another machine are not bit-identical here)."""
    out = {}
    if only:
        with open(GOLDEN_FILE) as f:
            out = json.load(f)
        unknown = set(only) - {config_id(p) for p in golden_config_paths()}
        if unknown:
            sys.exit(f"not CPU method configs: {sorted(unknown)}")
    for path in golden_config_paths():
        if only and config_id(path) not in only:
            continue
        out[config_id(path)] = run_golden_job(path)
        print(config_id(path), out[config_id(path)]["losses"][0], flush=True)
    with open(GOLDEN_FILE, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "projects"))
    import tempfile

    os.environ.setdefault("BALANCED_DET_CACHE", tempfile.mkdtemp(prefix="balanced_det_golden_"))
    import balanced_det  # noqa: F401

    if sys.argv[1:2] != ["--record"]:
        sys.exit("usage: python tests/golden.py --record [CONFIG_ID ...]")
    record(sys.argv[2:])
