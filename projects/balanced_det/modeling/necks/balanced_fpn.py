"""Balanced Feature Pyramid (Libra R-CNN, Pang et al., CVPR 2019; docs/methods/libra.md).

Given the pyramid {P_l} of an FPN (any detectron2 Backbone with same-channel outputs):

1. *rescale*: every level is resized to the refine level's size (max-pool for finer levels,
   nearest interpolation for coarser ones),
2. *integrate*: ``C = (1/L) * sum_l resize(P_l)``,
3. *refine*: an embedded-Gaussian non-local block
   ``R = C + W_out(softmax(theta(C)^T phi(C)) g(C))`` (1x1 convs, no 1/sqrt(d) scaling,
   ``W_out`` zero-initialised so the neck starts as the identity over the FPN),
4. *strengthen*: ``R`` is resized back to each level (the inverse operation: nearest
   up-sampling for finer levels, max-pooling for coarser) and added to it:
   ``P'_l = P_l + resize_l(R)``.

Refine level: index 2 of P2-P6 (P4) for two-stage models, index 1 of P3-P7 (P4) for RetinaNet.

Reading of "the neck starts as the identity": the zero-initialised ``W_out`` makes the
*refinement* start as the identity (``R = C``); the strengthening residual
``P_l + resize_l(C)`` is part of the method from the first iteration, as in Libra R-CNN and
its reference implementation.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from ...compat import padding_constraints
from ...utils.checks import check_choice

__all__ = ["BalancedFPN", "NonLocal2d"]


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., 2018) without scaling:
    ``y = x + W_out(softmax(theta(x)^T phi(x)) g(x))``; ``W_out`` starts at zero."""

    def __init__(self, channels: int, inner_channels: Optional[int] = None):
        super().__init__()
        inner = inner_channels or channels
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.conv_out = nn.Conv2d(inner, channels, 1)
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # N x HW x C'
        phi = self.phi(x).flatten(2)  # N x C' x HW
        g = self.g(x).flatten(2).transpose(1, 2)  # N x HW x C'
        attn = torch.softmax(torch.bmm(theta, phi), dim=-1)  # N x HW x HW
        y = torch.bmm(attn, g).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.conv_out(y)


class BalancedFPN(Backbone):
    """Wraps an FPN-like backbone and balances its pyramid (see module docstring).

    Args:
        fpn: a detectron2 Backbone whose outputs all have the same channels (e.g. ``FPN``).
        refine_level: index, in stride order, of the level where features are integrated.
        refine_type: ``"non_local"`` (Libra's default), ``"conv"`` (a 3x3 conv) or ``"none"``.
        inner_channels: channels inside the non-local block (default: the FPN's, 256 for the
            standard FPN).
    """

    def __init__(self, fpn: Backbone, refine_level: int = 2, refine_type: str = "non_local",
                 inner_channels: Optional[int] = None):
        super().__init__()
        self.fpn = fpn
        shapes = fpn.output_shape()
        self._names = sorted(shapes, key=lambda k: shapes[k].stride)
        channels = {shapes[k].channels for k in self._names}
        if len(channels) != 1:
            raise ValueError(f"BalancedFPN needs same-channel levels, got {sorted(channels)}")
        check_choice("refine_level", refine_level, range(len(self._names)))
        check_choice("refine_type", refine_type, ("non_local", "conv", "none"))
        c = channels.pop()
        self.refine_level = refine_level
        if refine_type == "non_local":
            self.refine: nn.Module = NonLocal2d(c, inner_channels)
        elif refine_type == "conv":
            self.refine = nn.Conv2d(c, c, 3, padding=1)
        else:
            self.refine = nn.Identity()
        self._out_features = list(self._names)
        self._out_feature_strides = {k: shapes[k].stride for k in self._names}
        self._out_feature_channels = {k: shapes[k].channels for k in self._names}

    @property
    def size_divisibility(self) -> int:
        return self.fpn.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return padding_constraints(self.fpn)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.fpn.output_shape()

    def forward(self, x):
        feats = self.fpn(x)
        levels = [feats[k] for k in self._names]
        size = levels[self.refine_level].shape[-2:]
        gathered = [
            F.adaptive_max_pool2d(p, size) if i < self.refine_level
            else F.interpolate(p, size=size, mode="nearest") if i > self.refine_level
            else p
            for i, p in enumerate(levels)
        ]
        balanced = self.refine(sum(gathered) / len(gathered))
        out = dict(feats)
        for i, (name, p) in enumerate(zip(self._names, levels)):
            if i < self.refine_level:
                residual = F.interpolate(balanced, size=p.shape[-2:], mode="nearest")
            elif i > self.refine_level:
                residual = F.adaptive_max_pool2d(balanced, p.shape[-2:])
            else:
                residual = balanced
            out[name] = p + residual
        return out
