"""The ``train`` section read by train_net.py (balanced_det.engine.do_train)."""
import torch

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=90000,
    # Mixed precision: dtype "auto" = float16 (+ GradScaler) on CUDA, bfloat16 on CPU.
    amp=dict(enabled=False, dtype="auto"),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=5000,  # and at the end; <= 0: never evaluate
    log_period=20,
    device="cuda" if torch.cuda.is_available() else "cpu",
    seed=-1,  # < 0: random
    clip_grad_norm=None,
    # What to do when a loss becomes NaN/inf: "raise" (save model_last_good.pth, stop) or
    # "skip" (drop that update and go on).
    nonfinite="raise",
    cudnn_benchmark=False,
    # Sampling-Free statistics (balanced_det.stats): count a random subset of max_images
    # training images (None: all), or read a precomputed file (tools/dataset_stats.py).
    dataset_stats=dict(max_images=None, seed=0, stats_file=None),
)
