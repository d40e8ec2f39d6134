#!/usr/bin/env python
"""Compute (or show the cached) dataset statistics of a config's model (Sampling-Free, EQL).

    python tools/dataset_stats.py --config-file configs/COCO-Detection/sampling_free_retinanet_R_50_FPN_1x.py \
        --max-images 5000 [--output stats.json] [key=value ...]

Counts foreground/valid samples with the model's own anchors, matchers and assignment rules
on the training set at training-time image sizes (no network forward, no image decoding),
with a progress bar, and the image-level class counts (EQL's class frequencies); writes the
cache entry that training reuses. ``--output`` also writes a
copy that ``train.dataset_stats.stats_file=<path>`` can point to.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects"))

import balanced_det  # noqa: E402,F401
from balanced_det.config import load_config  # noqa: E402
from balanced_det.data.cache import atomic_write_json  # noqa: E402
from balanced_det.stats import prepare_model_with_dataset_stats  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--max-images", type=int, default=None,
                        help="count a fixed random subset of this many training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the statistics to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args()
    setup_logger(name="balanced_det")
    cfg = load_config(args.config_file, args.opts)
    cfg.train.dataset_stats.max_images = args.max_images
    cfg.train.dataset_stats.seed = args.seed
    model = instantiate(cfg.model)
    stats = prepare_model_with_dataset_stats(model, cfg)
    if stats is None:
        raise SystemExit(f"{args.config_file}: this model does not use dataset statistics "
                         "(Sampling-Free and EQL models do)")
    data = stats.to_json()
    print(json.dumps({k: data[k] for k in ("num_images", "counters", "fg_fraction", "class_counts",
                                           "image_counts", "num_annotated_images")}, indent=1))
    if args.output:
        atomic_write_json(args.output, data, indent=1)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
