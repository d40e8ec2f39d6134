"""Objective-level plug-ins: classification and box losses with one call signature, CARL and
the guided loss. Every head that takes a loss object (ROI box predictor, RPN, RetinaNet, FCOS)
calls it the same way; the maths lives in :mod:`balanced_det.ops`.

Classification losses (sigmoid, one-hot targets ``(..., C)``)::

    loss(logits, targets, weights=None, normalizer=1.0) = sum(weights * elements) / normalizer

Box losses (deltas, or XYXY boxes when ``on_boxes``)::

    loss(pred, target, mask=None, normalizer=1.0) = sum over mask of per-box loss / normalizer

The element-wise ones (:class:`ElementwiseClassificationLoss`, :class:`ElementwiseBoxLoss`)
also give per-element losses, which ISR-P and CARL re-weight; GHM-C / GHM-R weight elements
themselves and keep their own normalisation (``normalizer`` is ignored). A loss with
``per_level = True`` is called once per FPN level by the dense hosts (:func:`call_loss`).
Method pages: docs/methods/.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss, sigmoid_focal_loss, smooth_l1_loss
from torch import Tensor, nn

from ..ops import (
    GHMC,
    GHMR,
    balanced_l1_loss,
    carl_loss,
    guided_loss_ratio,
    sigmoid_focal_loss_star,
    soft_target_focal_loss,
)
from ..utils.checks import check_range
from ..utils.events import put_tensor_scalars

__all__ = [
    "ClassificationLoss", "ElementwiseClassificationLoss", "FocalLoss", "SigmoidBCELoss",
    "GHMCLoss", "BoxRegressionLoss", "ElementwiseBoxLoss", "SmoothL1Loss", "BalancedL1Loss",
    "GIoULoss", "GHMRLoss",
    "CARL", "GuidedLoss", "FocalLossStar", "SoftTargetFocalLoss", "call_loss",
]

Number = Union[float, Tensor]


def call_loss(loss: nn.Module, level_sizes: Sequence[int], *args: Tensor,
              mask: Optional[Tensor] = None, **kwargs) -> Tensor:
    """``loss(*args, mask=mask, **kwargs)`` on all FPN levels concatenated along dim 1
    (``N x R x ...``); for a loss with ``per_level = True``, the sum of its calls on each
    level's slice of ``args`` and ``mask`` (``level_sizes``: anchors per level), as
    mmdetection's dense heads call their losses. ``mask`` is only passed when given."""
    if mask is not None:
        kwargs["mask"] = mask
    if not getattr(loss, "per_level", False):
        return loss(*args, **kwargs)
    sizes = [int(s) for s in level_sizes]
    split = [a.split(sizes, dim=1) for a in args]
    masks = mask.split(sizes, dim=1) if mask is not None else [None] * len(sizes)
    total = None
    for level, m in enumerate(masks):  # one call per FPN level (5), not per anchor
        if m is not None:
            kwargs["mask"] = m
        part = loss(*(a[level] for a in split), **kwargs)
        total = part if total is None else total + part
    return total


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
class ClassificationLoss(nn.Module, metaclass=ABCMeta):
    """Sigmoid classification loss over ``(..., C)`` logits and 0/1 targets."""

    #: the dense hosts call it once per FPN level (:func:`call_loss`)
    per_level = False

    @abstractmethod
    def forward(self, logits: Tensor, targets: Tensor, weights: Optional[Tensor] = None,
                normalizer: Number = 1.0) -> Tensor:
        """Scalar loss; ``weights`` (broadcast to the logits) weight or mask the elements."""


class ElementwiseClassificationLoss(ClassificationLoss):
    """A classification loss that is a sum of per-element terms (re-weightable, ISR-P)."""

    @abstractmethod
    def elements(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-element loss, the shape of ``logits``, float32."""

    def forward(self, logits: Tensor, targets: Tensor, weights: Optional[Tensor] = None,
                normalizer: Number = 1.0) -> Tensor:
        """``sum(weights * elements) / normalizer`` (``weights`` broadcast; ``None``: 1)."""
        return self.reduce(self.elements(logits, targets), weights, normalizer)

    @staticmethod
    def reduce(elements: Tensor, weights: Optional[Tensor], normalizer: Number) -> Tensor:
        if weights is not None:
            elements = elements * weights
        return elements.sum() / normalizer


class FocalLoss(ElementwiseClassificationLoss):
    """Sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` (Lin et al. 2017, eq. 5);
    ``alpha < 0`` disables the alpha weighting (fvcore). See docs/methods/focal.md."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha = float(alpha) if alpha < 0 else check_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"

    def elements(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma,
                                  reduction="none")


class SigmoidBCELoss(ElementwiseClassificationLoss):
    """Plain sigmoid binary cross entropy (Sampling-Free's "no focal term");
    see docs/methods/sampling_free.md."""

    def elements(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class GHMCLoss(GHMC, ClassificationLoss):
    """GHM-C (Li et al. 2019, eq. 8): BCE weighted by the inverse gradient density, divided by
    the number of valid elements; ``weights`` > 0 marks the valid elements (broadcast to the
    logits), ``normalizer`` is ignored. ``per_level``: the host calls it once per FPN level
    (mmdetection's call; the EMA is updated once per level). See docs/methods/ghm.md."""

    def __init__(self, bins: int = 30, momentum: float = 0.75, loss_weight: float = 1.0,
                 per_level: bool = False):
        super().__init__(bins=bins, momentum=momentum, loss_weight=loss_weight)
        self.per_level = bool(per_level)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", per_level=True" if self.per_level else "")

    def forward(self, logits: Tensor, targets: Tensor, weights: Optional[Tensor] = None,
                normalizer: Number = 1.0) -> Tensor:
        c = logits.shape[-1]
        valid = None if weights is None else (weights > 0).reshape(-1, 1)
        loss = super().forward(logits.reshape(-1, c), targets.reshape(-1, c), valid)
        put_tensor_scalars(ghm_c_nonempty_bins=self.last_num_nonempty)
        return loss


# ---------------------------------------------------------------------------------------------
# box regression
# ---------------------------------------------------------------------------------------------
class BoxRegressionLoss(nn.Module, metaclass=ABCMeta):
    """Box loss on deltas ``(..., 4)`` (or on XYXY boxes when ``on_boxes``)."""

    #: the host passes decoded XYXY boxes instead of deltas
    on_boxes = False
    #: the dense hosts call it once per FPN level (:func:`call_loss`)
    per_level = False

    @abstractmethod
    def forward(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None,
                normalizer: Number = 1.0) -> Tensor:
        """Scalar loss over the boxes where ``mask`` (the shape of ``pred[..., 0]``; ``None``:
        all)."""


class ElementwiseBoxLoss(BoxRegressionLoss):
    """A box loss that is a sum of per-element terms (CARL re-weights them per box)."""

    @abstractmethod
    def elements(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-element loss: ``(..., 4)`` on deltas, ``(...,)`` on boxes; float32."""

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:
        """``(...,)`` loss of each box (coordinates summed)."""
        el = self.elements(pred, target)
        return el.reshape(*pred.shape[:-1], -1).sum(-1)

    def forward(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None,
                normalizer: Number = 1.0) -> Tensor:
        """Sum over all elements (``mask`` None) or over the boxes where ``mask`` (the shape of
        ``pred[..., 0]``), divided by ``normalizer``."""
        if mask is None:
            return self.elements(pred, target).sum() / normalizer
        zero = torch.zeros((), device=pred.device)
        return torch.where(mask, self.per_box(pred, target), zero).sum() / normalizer


class SmoothL1Loss(ElementwiseBoxLoss):
    """Smooth L1 ``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta`` (fvcore; L1 for
    ``beta`` < 1e-5)."""

    def __init__(self, beta: float = 0.0):
        super().__init__()
        self.beta = check_range("beta", beta, 0.0)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"

    def elements(self, pred: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(pred, target, self.beta, reduction="none")


class BalancedL1Loss(ElementwiseBoxLoss):
    """Balanced L1 (Libra R-CNN, eq. 8-9) with ``alpha``, ``gamma``, ``beta``;
    see docs/methods/libra.md."""

    def __init__(self, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0):
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0, low_open=True)
        self.gamma = check_range("gamma", gamma, 0.0, low_open=True)
        self.beta = check_range("beta", beta, 0.0, low_open=True)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}"

    def elements(self, pred: Tensor, target: Tensor) -> Tensor:
        return balanced_l1_loss(pred, target, self.alpha, self.gamma, self.beta,
                                reduction="none")


class GIoULoss(ElementwiseBoxLoss):
    """``1 - GIoU`` of XYXY boxes (fvcore)."""

    on_boxes = True

    def elements(self, pred: Tensor, target: Tensor) -> Tensor:
        return giou_loss(pred, target, reduction="none")

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.elements(pred, target)


class GHMRLoss(GHMR, BoxRegressionLoss):
    """GHM-R (Li et al. 2019, eq. 11-12): ASL1 weighted by the inverse gradient density over
    the boxes where ``mask``, divided by ``4 x`` their number (``normalizer`` ignored);
    ``per_level`` as :class:`GHMCLoss`. See docs/methods/ghm.md."""

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0.7,
                 loss_weight: float = 10.0, per_level: bool = False):
        super().__init__(mu=mu, bins=bins, momentum=momentum, loss_weight=loss_weight)
        self.per_level = bool(per_level)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", per_level=True" if self.per_level else "")

    def forward(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None,
                normalizer: Number = 1.0) -> Tensor:
        valid = None if mask is None else mask.reshape(-1)
        loss = super().forward(pred.reshape(-1, 4), target.reshape(-1, 4), valid)
        put_tensor_scalars(ghm_r_nonempty_bins=self.last_num_nonempty)
        return loss


# ---------------------------------------------------------------------------------------------
# add-ons
# ---------------------------------------------------------------------------------------------
class CARL(nn.Module):
    """PISA's classification-aware regression loss (Cao et al. 2020, eq. 6-7)::

        v_i = ((1 - bias) p_i + bias)^k,  c_i = v_i / mean(v),
        L = loss_weight * sum_i c_i * box_loss_i / normalizer

    ``p_i``: probability of the GT class (not detached); ``box_loss_i``: the host's box loss
    of positive ``i``. See docs/methods/pisa.md.
    """

    def __init__(self, k: float = 1.0, bias: float = 0.2, loss_weight: float = 1.0):
        super().__init__()
        self.k = check_range("k", k, 0.0)
        self.bias = check_range("bias", bias, 0.0, 1.0)
        self.loss_weight = check_range("loss_weight", loss_weight, 0.0)

    def extra_repr(self) -> str:
        return f"k={self.k}, bias={self.bias}, loss_weight={self.loss_weight}"

    def forward(self, probs_gt: Tensor, box_loss: Tensor, normalizer: Number) -> Tensor:
        """Args: probs_gt (P,), box_loss (P,) per positive, normalizer. Returns a scalar."""
        return self.loss_weight * carl_loss(probs_gt, box_loss, self.k, self.bias, normalizer)


class GuidedLoss(nn.Module):
    """Sampling-Free's guided loss (Chen et al. 2020, eq. 4)::

        L = w_reg L_reg + w_cls r L_cls,   r = (w_reg L_reg / L_cls).detach()

    (``r = 1`` without foreground). See docs/methods/sampling_free.md.
    """

    def __init__(self, w_cls: float = 1.0, w_reg: float = 1.0):
        super().__init__()
        self.w_cls = check_range("w_cls", w_cls, 0.0, low_open=True)
        self.w_reg = check_range("w_reg", w_reg, 0.0, low_open=True)

    def extra_repr(self) -> str:
        return f"w_cls={self.w_cls}, w_reg={self.w_reg}"

    def regression(self, loss_reg: Tensor) -> Tensor:
        """``w_reg L_reg``."""
        return self.w_reg * loss_reg

    def classification(self, loss_cls: Tensor, weighted_reg: Tensor,
                       has_foreground: Union[Tensor, bool]) -> Tuple[Tensor, Tensor]:
        """``(w_cls r L_cls, r)`` for the already weighted regression loss ``w_reg L_reg``."""
        r = guided_loss_ratio(weighted_reg, loss_cls, 1.0, has_foreground)
        return self.w_cls * r * loss_cls.float(), r


# ---------------------------------------------------------------------------------------------
# more classification losses
# ---------------------------------------------------------------------------------------------
class FocalLossStar(ElementwiseClassificationLoss):
    """FL* (Lin et al. 2017, appendix A): ``alpha_t * softplus(-(gamma x_t + beta)) / gamma``
    with ``x_t = x (2t - 1)``; defaults: the paper's alpha 0.25 and its (gamma 2, beta 1)
    setting. See docs/methods/fl_star.md."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, beta: float = 1.0):
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, low_open=True)
        self.beta = check_range("beta", beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}"

    def elements(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss_star(logits, targets, self.alpha, self.gamma, self.beta)


class SoftTargetFocalLoss(ElementwiseClassificationLoss):
    """Focal loss for soft targets ``t`` in [0, 1] with the hard-label modulating factors
    (Learning from Noisy Anchors, Li et al. 2020)::

        -alpha t (1 - p)^gamma log p - (1 - alpha)(1 - t) p^gamma log(1 - p)

    the sigmoid focal loss for 0/1 targets; defaults: the authors' alpha 0.5, gamma 2. See
    docs/methods/noisy_anchor.md."""

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0):
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"

    def elements(self, logits: Tensor, targets: Tensor) -> Tensor:
        return soft_target_focal_loss(logits, targets, self.alpha, self.gamma)
