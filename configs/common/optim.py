import torch

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from balanced_det.engine.optim import CombinedOptimizer, split_param_groups

# params.model is set to the model object by train_net before instantiation.
SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)


def with_part_optimizer(optimizer, part, pattern, type="torch.optim.Adam", **kwargs):
    """``optimizer`` (a config node of a plain torch optimizer whose ``params`` are
    ``get_default_optimizer_params``) -> a ``CombinedOptimizer`` config: the parameters whose
    name matches ``pattern`` train with ``type(**kwargs)`` as part ``part``, every other one
    with ``optimizer`` unchanged (its arguments stay at the top level: ``optimizer.lr`` is
    still its LR). Both follow the config's ``lr_multiplier`` and ``train.clip_grad_norm``."""
    base = {k: v for k, v in optimizer.items() if k not in ("_target_", "params")}
    params = {k: v for k, v in optimizer.params.items() if k not in ("_target_", "model")}
    cls = optimizer._target_
    if not isinstance(cls, str):
        cls = f"{cls.__module__}.{cls.__qualname__}"
    return L(CombinedOptimizer)(
        params=L(split_param_groups)(parts={part: pattern}, **params),
        optimizer=cls,
        parts={part: dict(type=type, **kwargs)},
        **base,
    )
