"""Gradient Harmonizing Mechanism (Li et al., "Gradient Harmonized Single-stage Detector",
AAAI 2019): GHM-C and GHM-R losses.

Each valid element's gradient norm ``g`` (detached) falls into one of ``bins`` equal bins of
[0, 1] (``clamp(floor(g bins), 0, bins - 1)``); bin ``b`` holds ``count_b`` elements. Per
non-empty bin the density is a bias-corrected EMA::

    acc_b <- m acc_b + (1 - m) count_b,    density_b = acc_b / (1 - m^t_b)     (t_b: updates)
    w_i   = tot / density_{b(i)} / n        (tot valid elements, n non-empty bins)
    L     = loss_weight * sum_i w_i loss_i / tot

Call once per iteration with all levels and images concatenated. In distributed training the
counts are all-reduced before the update (every process holds the same EMA) and the normaliser
is ``tot_global / world_size``. The EMA changes in training mode only; no host synchronisation.
All maths in float32. See docs/methods/ghm.md.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..utils.checks import check_int, check_range
from ..utils.tensor_math import world_size

__all__ = ["GHMC", "GHMR"]


class _GradientDensity(nn.Module):
    """Binning and bias-corrected EMA of the per-bin gradient density (module docstring).

    Buffers:
        acc_sum (bins,) float32: raw (uncorrected) EMA of the per-bin counts, persistent.
        updates (bins,) int64: number of EMA updates of each bin, persistent.
        last_num_nonempty () int64: non-empty bins of the last call (for logging), not saved.
    """

    def __init__(self, bins: int, momentum: float):
        super().__init__()
        self.bins = check_int("bins", bins, 1)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        self.register_buffer("acc_sum", torch.zeros(self.bins))
        self.register_buffer("updates", torch.zeros(self.bins, dtype=torch.long))
        self.register_buffer(
            "last_num_nonempty", torch.zeros((), dtype=torch.long), persistent=False
        )

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}"

    def bin_index(self, g: Tensor) -> Tensor:
        """``clamp(floor(g * bins), 0, bins - 1)`` as int64, same shape as ``g`` (g = 1.0 and
        NaN / +inf -> last bin, -inf -> bin 0)."""
        top = float(self.bins - 1)
        t = g * float(self.bins)
        t.nan_to_num_(nan=top, posinf=top, neginf=0.0).clamp_(0.0, top)
        return t.to(torch.int64)

    def element_weights(self, g: Tensor, valid: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """GHM weights for every element.

        Args:
            g: gradient norms (any shape), float32, detached.
            valid: bool, same shape or broadcastable to it (e.g. (M, 1) per anchor), or
                ``None`` (all valid).
        Returns:
            weights (same shape as ``g``, 0 where invalid) ``tot / acc_b / n``, and the loss
            normaliser ``max(tot, 1) / world_size`` (a 0-dim float32 tensor).
        """
        bins = self.bins
        slot = self.bin_index(g)
        if valid is not None:
            slot.masked_fill_(~valid, bins)  # invalid elements go to the extra slot ``bins``
        flat = slot.view(-1)
        if flat.device.type == "cpu":  # one pass; on CUDA bincount reads its max on the host
            counts = torch.bincount(flat, minlength=bins + 1)
        else:
            counts = torch.zeros(bins + 1, dtype=torch.long, device=g.device)
            counts.scatter_add_(
                0, flat, torch.ones(1, dtype=torch.long, device=g.device).expand(flat.numel())
            )
        world = world_size() if self.training else 1
        if world > 1:
            dist.all_reduce(counts)  # sum over processes: every rank gets the same EMA
        counts = counts[:bins]
        tot = counts.sum()

        nonempty = counts > 0
        m = self.momentum
        # m acc + (1 - m) count on the non-empty bins; the bias correction 1 - m^t (t >= 1
        # there; = 1 for momentum 0). Empty bins (t may be 0, acc 0) get weight 0 whatever
        # their 0 / 0 gives.
        acc = self.acc_sum.float()
        new_acc = torch.where(nonempty, torch.lerp(acc, counts.float(), 1.0 - m), acc)
        new_upd = self.updates + nonempty
        num_nonempty = nonempty.sum()
        inv_density = (1.0 - torch.pow(m, new_upd)).div_(new_acc)
        w_bin = torch.where(nonempty, inv_density.mul_(tot / num_nonempty), 0.0)

        if self.training:
            self.acc_sum.copy_(new_acc)
            self.updates.copy_(new_upd)
        self.last_num_nonempty.copy_(num_nonempty)

        if valid is not None:
            w_bin = F.pad(w_bin, (0, 1))  # weight 0 in the extra slot (invalid elements)
        w = w_bin.index_select(0, flat).view(slot.shape)  # one gather, no advanced indexing
        return w, tot.clamp(min=1) / world


class GHMC(_GradientDensity):
    """GHM-C classification loss on sigmoid logits.

    ``g = |sigmoid(x) - y|`` (detached), ``L = loss_weight * sum_i w_i BCE(x_i, y_i) / tot``.
    Defaults (the authors' RetinaNet): ``bins = 30``, ``momentum = 0.75``,
    ``loss_weight = 1.0``. Weights and EMA: module docstring.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.75, loss_weight: float = 1.0):
        super().__init__(bins, momentum)
        self.loss_weight = float(loss_weight)

    def forward(
        self, logits: Tensor, targets: Tensor, valid_mask: Optional[Tensor] = None
    ) -> Tensor:
        """
        Args:
            logits: (M, C) (any shape) classification logits.
            targets: same shape, binary (0/1) targets (one-hot of the class, zeros for
                background).
            valid_mask: bool, same shape or broadcastable to it (e.g. (M, 1) anchors with
                label >= 0); ``None`` = all valid.
        Returns:
            scalar float32 loss. With zero valid elements: exactly 0, attached to ``logits``,
            the EMA untouched (no bin is non-empty).
        """
        if targets.shape != logits.shape:
            raise ValueError(
                f"GHMC: targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}"
            )
        x = logits.float()
        y = targets.to(x.dtype)
        valid = None
        if valid_mask is not None:
            valid = valid_mask.to(torch.bool)
            torch.broadcast_shapes(valid.shape, x.shape)  # a clear error if it does not fit
        with torch.no_grad():
            g = x.detach().sigmoid().sub_(y).abs_()
            w, norm = self.element_weights(g, valid)
        # the weights (0 on invalid elements) inside BCE: one fused pass forward and backward
        loss = F.binary_cross_entropy_with_logits(x, y, weight=w, reduction="sum")
        return self.loss_weight * loss / norm


class GHMR(_GradientDensity):
    """GHM-R regression loss on the authentic smooth L1.

    ``d = pred - target``, ``ASL1(d) = sqrt(d^2 + mu^2) - mu``, ``g = |d| / sqrt(d^2 + mu^2)``
    (detached, in [0, 1)), ``L = loss_weight * sum_i w_i ASL1(d_i) / tot`` with ``tot`` the
    number of valid coordinates (4 per positive). Defaults (the authors' RetinaNet):
    ``mu = 0.02``, ``bins = 10``, ``momentum = 0.7``, ``loss_weight = 10.0``.
    """

    def __init__(
        self, mu: float = 0.02, bins: int = 10, momentum: float = 0.7, loss_weight: float = 10.0
    ):
        super().__init__(bins, momentum)
        self.mu = check_range("mu", mu, 0.0, low_open=True)
        self.loss_weight = float(loss_weight)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, " + super().extra_repr()

    def forward(self, pred: Tensor, target: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            pred: (M, 4) predicted deltas.
            target: (M, 4) target deltas.
            valid_mask: (M,) (positives) or (M, 4) bool; ``None`` = all valid.
        Returns:
            scalar float32 loss; exactly 0 attached to ``pred`` with zero valid elements.
        """
        if target.shape != pred.shape:
            raise ValueError(
                f"GHMR: target shape {tuple(target.shape)} != pred shape {tuple(pred.shape)}"
            )
        valid = None
        if valid_mask is not None:
            valid = valid_mask.to(torch.bool)
            if valid.dim() == pred.dim() - 1:
                valid = valid.unsqueeze(-1)
            torch.broadcast_shapes(valid.shape, pred.shape)  # a clear error if it does not fit
        return _WeightedASL1.apply(pred, target, self, valid)


class _WeightedASL1(torch.autograd.Function):
    """GHM-R's loss ``loss_weight * sum_i w_i ASL1(d_i) / norm`` and its gradient
    ``dL/dd_i = loss_weight * w_i d_i / sqrt(d_i^2 + mu^2) / norm`` (the weights w constants),
    as one autograd node: two passes backward instead of autograd's chain over every element."""

    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, ghm: GHMR, valid: Optional[Tensor]) -> Tensor:
        d = pred.float() - target.float()
        root = d.square().add_(ghm.mu * ghm.mu).sqrt_()
        w, norm = ghm.element_weights(d.abs().div_(root), valid)
        scale = ghm.loss_weight / norm
        ctx.save_for_backward(d.div_(root).mul_(w), scale)
        ctx.dtypes = (pred.dtype, target.dtype)
        loss = root.sub_(ghm.mu).mul_(w)
        if valid is not None:
            loss = torch.where(valid, loss, 0.0)  # no 0 x inf off the valid elements
        return loss.sum() * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        coef, scale = ctx.saved_tensors
        grad_d = coef * (grad * scale)
        return (grad_d.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None,
                grad_d.neg().to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None,
                None, None)
