"""Sampling-Free (Chen et al., "Is Sampling Heuristics Necessary in Training Deep Object
Detectors?", TIP 2021): optimal bias initialisation, guided loss, class-adaptive thresholds.

SPEC 1.8. Three parts replace sampling / focal loss:

1. Optimal bias initialisation: with the foreground fraction ``f = N_f / N`` of the
   detector's own matched anchors, every sigmoid classifier starts at ``p = pi = f / C``
   (:func:`sigmoid_prior_bias`), a softmax classifier at ``p(fg class) = f / C``
   (:func:`softmax_prior_bias`).
2. Guided loss: ``L = w_reg L_reg + w_cls r L_cls`` with ``r = (w_reg L_reg / L_cls).detach()``
   (:func:`guided_loss_ratio`, :func:`guided_classification_loss`); ``w_cls = 1`` for one-stage
   heads and the RPN, ``2`` for the ROI head; ``r = 1`` without foreground.
3. Class-adaptive score thresholds ``theta_j = f N_j / sum_k N_k``
   (:func:`class_adaptive_thresholds`).

RetinaNet-None uses plain sigmoid BCE normalised by the positive count
(:func:`bce_sampling_free_loss`).

Pure tensor functions; loss maths in float32. The functions used at every training step
(:func:`guided_loss_ratio`, :func:`guided_classification_loss`, :func:`bce_sampling_free_loss`)
never synchronise with the host.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_prior_bias",
    "softmax_prior_bias",
    "class_adaptive_thresholds",
    "guided_loss_ratio",
    "guided_classification_loss",
    "bce_sampling_free_loss",
]


def _check_fraction(fg_fraction: float) -> float:
    f = float(fg_fraction)
    if not (0.0 < f < 1.0) or not math.isfinite(f):
        raise ValueError(
            f"fg_fraction (N_f / N) must be in the open interval (0, 1), got {fg_fraction!r}"
        )
    return f


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or int(num_classes) < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return int(num_classes)


def sigmoid_prior_bias(fg_fraction: float, num_classes: int) -> float:
    """Optimal bias of a sigmoid classifier (RetinaNet, FCOS: C classes; RPN: C = 1).

    ``pi = fg_fraction / C``, ``b = -log((1 - pi) / pi)``, so that with zero weights every
    class starts at ``sigmoid(b) = pi``, the expected frequency of that class among the
    classifier's samples (SPEC 1.8).

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
    then the background logit last), SPEC 1.8.

    Derivation: with zero weights the logits are the biases; take every foreground bias
    ``0`` and the background bias ``b``. Then
    ``p(fg class j) = e^0 / (C e^0 + e^b) = 1 / (C + e^b)``. Requiring
    ``p(fg class j) = f / C`` gives ``C + e^b = C / f``, i.e.
    ``e^b = C / f - C = C (1 - f) / f`` and ``b = log(C (1 - f) / f)``; then
    ``p(bg) = e^b f / C = 1 - f`` and the probabilities sum to 1. (Only the difference
    ``b - b_fg`` matters; any common shift of all biases gives the same softmax.)

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
    """Class-adaptive score thresholds ``theta_j = f N_j / sum_k N_k`` (SPEC 1.8), used per
    class at inference instead of the global ``test_score_thresh``.

    A class with no training instance (``N_j = 0``) would get ``theta_j = 0``, i.e. every one
    of its (meaningless) scores survives the threshold and only NMS / top-k limit it. We give
    it instead ``empty_class_threshold``, by default (``None``) the smallest threshold among
    the classes that do have instances: the class is treated as the rarest seen class.

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
    """Guided-loss ratio ``r = (w_reg L_reg / L_cls).detach()`` (SPEC 1.8).

    ``r = 1`` where there is no foreground in the batch (``has_foreground`` false) or where
    ``L_cls`` is not positive; chosen with ``torch.where`` (no host sync).

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


def guided_classification_loss(
    loss_cls: Tensor,
    loss_reg: Tensor,
    w_reg: float = 1.0,
    w_cls: float = 1.0,
    has_foreground: Optional[Union[Tensor, bool]] = None,
) -> Tensor:
    """Guided classification loss ``w_cls r L_cls`` with ``r`` from :func:`guided_loss_ratio`
    (SPEC 1.8). ``w_cls = 1`` for one-stage heads and the RPN, ``2`` for the ROI head. The
    regression loss is used as it is (``w_reg L_reg``, by the caller).

    The gradient w.r.t. ``loss_cls`` is ``w_cls r`` (r is detached); none reaches ``loss_reg``.

    Returns:
        scalar float32 tensor.
    """
    r = guided_loss_ratio(loss_reg, loss_cls, w_reg, has_foreground)
    return w_cls * r * loss_cls.float()


def bce_sampling_free_loss(
    logits: Tensor,
    targets: Tensor,
    num_pos: Union[Tensor, float],
    valid_mask: Optional[Tensor] = None,
) -> Tensor:
    """RetinaNet-None classification loss (SPEC 1.8): plain sigmoid BCE (no focal term)
    summed over all valid anchors and classes, divided by ``max(num_pos, 1)``.

    Args:
        logits: (M, C) (any shape) classification logits.
        targets: same shape, 0/1 (one-hot of the matched class; all zeros for background).
        num_pos: number of positive anchors (tensor or number; the caller may reduce it
            across processes or use an EMA of it).
        valid_mask: optional bool mask broadcastable to ``logits`` (e.g. (M, 1) for anchors
            with label >= 0; ignored anchors excluded). ``None`` = all valid.
    Returns:
        scalar float32 loss; exactly ``0`` but attached to ``logits`` when nothing is valid.
    """
    x = logits.float()
    loss = F.binary_cross_entropy_with_logits(x, targets.to(x.dtype), reduction="none")
    if valid_mask is not None:
        loss = torch.where(valid_mask.to(torch.bool), loss, torch.zeros_like(loss))
    if isinstance(num_pos, Tensor):
        denom = num_pos.to(device=x.device, dtype=torch.float32).clamp(min=1.0)
    else:
        denom = max(float(num_pos), 1.0)
    return loss.sum() / denom
