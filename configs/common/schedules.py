"""Learning-rate multipliers. fvcore schedulers are scale-invariant: milestones are relative
to the last one, so overriding ``train.max_iter`` keeps the shape of the schedule."""
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def multistep(milestones=(8, 11, 12), warmup_fraction=1000 / 90000, warmup_factor=0.001):
    """Step decay x0.1 at milestones[0] and milestones[1] (of milestones[2]) after a linear
    warm-up over ``warmup_fraction`` of training."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=list(milestones)),
        warmup_length=warmup_fraction,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


# COCO "1x": 90k iterations at 16 images, steps at 60k and 80k, 1k warm-up iterations.
lr_multiplier_1x = multistep(milestones=(60000, 80000, 90000))
