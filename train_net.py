#!/usr/bin/env python
"""Train or evaluate a balanced_det model from a LazyConfig file.

    python train_net.py --config-file configs/Trees/fcos_effnet_lite0_FPN.py
    python train_net.py --config-file configs/COCO-Detection/pisa_faster_rcnn_R_50_FPN_1x.py \
        --num-gpus 8 train.amp.enabled=True
    python train_net.py --config-file <cfg> --eval-only train.init_checkpoint=output/model_final.pth
    python train_net.py --config-file <cfg> --resume          # continue from output_dir

Overrides are ``key=value`` pairs after the options (``train.max_iter=100``,
``train.device=cpu``, ``dataloader.train.total_batch_size=4``, ...).
"""
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "projects"))

import balanced_det  # noqa: E402,F401  (compat shims and registrations come first)
from balanced_det.config import load_config  # noqa: E402
from balanced_det.engine import (  # noqa: E402
    Checkpointer,
    build_model,
    create_ddp_model,
    do_test,
    do_train,
    launch,
)
from balanced_det.engine.train_loop import cfg_get  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402

logger = logging.getLogger("balanced_det")


def main(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    logger.info("balanced_det environment: %s", balanced_det.compat.describe())
    if args.eval_only:
        # Weights, and Sampling-Free thresholds (persistent buffers), come from the checkpoint.
        model = build_model(cfg, with_dataset_stats=False)
        model = create_ddp_model(model)
        ckpt = Checkpointer(model, cfg.train.output_dir)
        if args.resume and ckpt.has_checkpoint():
            ckpt.resume_or_load("", resume=True)
        else:
            if not cfg_get(cfg, "train.init_checkpoint", ""):
                raise SystemExit("--eval-only needs train.init_checkpoint=<path> (or --resume "
                                 "with a checkpoint in train.output_dir)")
            ckpt.load(cfg.train.init_checkpoint, strict=True)
        return do_test(cfg, model)
    return do_train(cfg, resume=args.resume)


def cli(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--dist-backend", choices=["nccl", "gloo"], default=None,
                        help="default: nccl with CUDA; gloo CPU processes without (--num-gpus "
                             "then counts CPU processes)")
    args = parser.parse_args(argv)
    if not args.config_file:
        raise SystemExit("--config-file is required (e.g. configs/Trees/fcos_effnet_lite0_FPN.py)")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=args.dist_backend,
    )


if __name__ == "__main__":
    cli()
