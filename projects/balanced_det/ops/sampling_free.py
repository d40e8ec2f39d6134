"""Sampling-Free (Chen et al., "Is Sampling Heuristics Necessary in Training Deep Object
Detectors?", TIP 2021): optimal bias initialisation, guided loss, class-adaptive thresholds.

With the foreground fraction ``f = N_f / N`` of the detector's own matched samples and the
class counts ``N_j``::

    sigmoid:  b = -log((1 - pi) / pi),  pi = f / C           (RPN: C = 1)
    softmax:  b_fg = 0,  b_bg = log(C (1 - f) / f)            (p(fg class) = f / C)
    guided:   L = w_reg L_reg + w_cls r L_cls,  r = (w_reg L_reg / L_cls).detach()
    theta_j = f N_j / sum_k N_k

RetinaNet-None uses plain sigmoid BCE normalised by the positive count. Loss maths in float32;
the per-step functions do not synchronise with the host. See docs/methods/sampling_free.md.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..utils.checks import check_int, check_range

__all__ = [
    "sigmoid_prior_bias",
    "softmax_prior_bias",
    "class_adaptive_thresholds",
    "guided_loss_ratio",
]


def _check_fraction(fg_fraction: float) -> float:
    """N_f / N must lie in the open interval (0, 1)."""
    return check_range("fg_fraction", fg_fraction, 0.0, 1.0, low_open=True, high_open=True)


def _check_num_classes(num_classes: int) -> int:
    return check_int("num_classes", num_classes, 1)


def sigmoid_prior_bias(fg_fraction: float, num_classes: int) -> float:
    """Optimal bias of a sigmoid classifier (RetinaNet, FCOS: C classes; RPN: C = 1).

    ``pi = fg_fraction / C``, ``b = -log((1 - pi) / pi)``, so that with zero weights every
    class starts at ``sigmoid(b) = pi``, the expected frequency of that class among the
    classifier's samples.

    Args:
        fg_fraction: ``N_f / N``, the fraction of non-ignored anchors/points matched as
            foreground, in (0, 1).
        num_classes: C >= 1.
    Returns:
        the bias, a Python float.
    Raises:
        ValueError: ``fg_fraction`` outside (0, 1) or ``num_classes < 1``.
    """
    f = _check_fraction(fg_fraction)
    c = _check_num_classes(num_classes)
    pi = f / c
    return -math.log((1.0 - pi) / pi)


def softmax_prior_bias(fg_fraction: float, num_classes: int) -> Tuple[float, float]:
    """Optimal biases of a softmax classifier in detectron2's layout (C foreground logits,
    then the background logit last): with zero weights,
    ``p(fg class j) = 1 / (C + e^b) = f / C`` and ``p(bg) = 1 - f`` for
    ``b = log(C (1 - f) / f)`` (derivation: docs/methods/sampling_free.md).

    Args:
        fg_fraction: ``N_f / N`` in (0, 1) (fraction of ROIs that are foreground).
        num_classes: C >= 1 foreground classes.
    Returns:
        ``(fg_bias, bg_bias) = (0.0, log(C (1 - f) / f))``.
    Raises:
        ValueError: ``fg_fraction`` outside (0, 1) or ``num_classes < 1``.
    """
    f = _check_fraction(fg_fraction)
    c = _check_num_classes(num_classes)
    return 0.0, math.log(c * (1.0 - f) / f)


def class_adaptive_thresholds(
    fg_fraction: float,
    class_counts: Union[Tensor, Sequence[float]],
    empty_class_threshold: Optional[float] = None,
) -> Tensor:
    """Class-adaptive score thresholds ``theta_j = f N_j / sum_k N_k``, used per class at
    inference instead of the global ``test_score_thresh``. A class without training instances
    gets ``empty_class_threshold`` (default: the smallest threshold of the seen classes)
    instead of 0.

    Args:
        fg_fraction: ``N_f / N`` in (0, 1).
        class_counts: (C,) number of training instances per class, >= 0, not all zero.
        empty_class_threshold: threshold for classes with ``N_j = 0``; ``None`` = the minimum
            positive ``theta``.
    Returns:
        (C,) float32 thresholds on the device of ``class_counts`` (CPU for a sequence).
    Raises:
        ValueError: bad ``fg_fraction``, counts not 1-D, negative, non-finite or all zero.
    """
    f = _check_fraction(fg_fraction)
    counts = torch.as_tensor(class_counts).to(torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}"
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError(f"class_counts must be finite and >= 0, got {counts.tolist()}")
    total = counts.sum()
    if float(total) <= 0:
        raise ValueError("class_counts are all zero: no instances to derive thresholds from")
    theta = f * counts / total
    present = counts > 0
    if empty_class_threshold is None:
        fill = theta[present].min()
    else:
        fill = torch.as_tensor(float(empty_class_threshold), dtype=torch.float64)
    theta = torch.where(present, theta, fill)
    return theta.to(torch.float32)


def guided_loss_ratio(
    loss_reg: Tensor,
    loss_cls: Tensor,
    w_reg: float = 1.0,
    has_foreground: Optional[Union[Tensor, bool]] = None,
) -> Tensor:
    """Guided-loss ratio ``r = (w_reg L_reg / L_cls).detach()``; ``r = 1`` without foreground
    in the batch (``has_foreground`` false) or where ``L_cls`` is not positive.

    Args:
        loss_reg: scalar regression loss ``L_reg``.
        loss_cls: scalar classification loss ``L_cls``.
        w_reg: weight of the regression loss (default 1.0).
        has_foreground: scalar bool tensor (or Python bool), ``None`` = assume foreground.
    Returns:
        scalar float32 tensor, detached.
    """
    reg = loss_reg.detach().float()
    cls = loss_cls.detach().float()
    ok = cls > 0
    if isinstance(has_foreground, Tensor):
        ok = ok & has_foreground.to(device=cls.device, dtype=torch.bool)
    elif has_foreground is not None and not has_foreground:
        ok = torch.zeros_like(ok)
    r = w_reg * reg / torch.where(ok, cls, torch.ones_like(cls))
    r = torch.where(ok & torch.isfinite(r), r, torch.ones_like(r))
    return r.detach()
