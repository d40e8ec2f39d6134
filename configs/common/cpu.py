"""The shared training schedule of the small CPU configs (configs/Trees, configs/Synthetic).

Every method config of a dataset imports its baseline, which calls :func:`cpu_schedule`, so
all methods of a comparison train with the same schedule, learning rate, clipping and seed.
"""
from .schedules import multistep


def cpu_schedule(train, optimizer, max_iter=300, output_dir=None):
    """SGD LR 0.01 at 4 images per batch, ``max_iter`` iterations, warm-up over the first 10 %,
    x0.1 at 8/12 and 11/12 of training, evaluation at the end, seed 0. Returns the LR
    multiplier config.

    Gradients are clipped at norm 10 for every method: batch 4 at LR 0.01 is 4x the COCO
    recipes' per-image LR, and early in training some losses (DW's negative term, whose
    normaliser sum(1 - P_neg) starts near 1; focal/BCE terms on 1-6 classes) give gradient
    spikes of norm 15-30 against ~5 otherwise; an unclipped DW-FCOS run collapsed (all scores
    -> 0) and unclipped FCOS runs varied widely between seeds.
    """
    optimizer.lr = 0.01
    train.max_iter = max_iter
    train.checkpointer.period = 100
    train.eval_period = max_iter
    train.log_period = 10
    train.seed = 0
    train.clip_grad_norm = 10.0
    if output_dir:
        train.output_dir = output_dir
    return multistep(milestones=(8, 11, 12), warmup_fraction=0.1)
