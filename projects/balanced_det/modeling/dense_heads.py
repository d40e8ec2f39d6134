"""FCOS-style dense head shared by FCOS, Sampling-Free FCOS and DW-FCOS."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import nn

from detectron2.layers import ShapeSpec

from ..compat import group_norm
from ..utils.checks import check_choice, check_int, check_range

__all__ = ["FCOSStyleHead", "Scale", "prior_bias"]


def prior_bias(prior_prob: float) -> float:
    """Sigmoid bias giving initial probability ``prior_prob``: ``-log((1 - p) / p)``."""
    check_range("prior_prob", prior_prob, 0.0, 1.0, low_open=True, high_open=True)
    return -math.log((1 - prior_prob) / prior_prob)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level in FCOS)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return x * self.scale


class FCOSStyleHead(nn.Module):
    """Two conv towers shared across pyramid levels (Tian et al., ICCV 2019).

    * classification tower -> ``logits`` (C channels),
    * box tower -> ``box_reg`` (4 channels: l, t, r, b in units of the level's stride, after a
      per-level learnable :class:`Scale`; the detector applies ReLU and multiplies by the
      stride) and ``quality`` (1 channel, 3x3 conv on the box tower: centerness for FCOS,
      objectness for DW),
    * ``box_offsets`` (only with ``box_refine=True``): 8 channels from a 3x3 conv on the box
      tower, the (dy, dx) sampling offsets of DW's box refinement
      (:func:`balanced_det.ops.refine_ltrb`; the detector applies them, since it knows the
      strides). Weights N(0, 0.01), bias 0, as every conv here (and the reference).

    GroupNorm is built with the real channel count (``compat.group_norm``), which detectron2
    v0.6's ``RetinaNetHead(norm="GN")`` fails to do on torch >= 1.12.

    Args:
        input_shape: shapes of the input pyramid levels (all with the same channels).
        num_classes: foreground classes C.
        conv_dims: output channels of each tower conv (length = number of convs).
        norm: ``"GN"`` (32 groups) or ``""``.
        prior_prob: initial foreground probability of the classification logits.
        box_bias_init: initial bias of the box regression conv (DW uses 4.0).
        use_scale: a learnable per-level scale on the box regression output.
        box_refine: add the 8-channel box-refinement offset conv (DW-FCOS "refine").
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        conv_dims: Sequence[int] = (256, 256, 256, 256),
        norm: str = "GN",
        prior_prob: float = 0.01,
        box_bias_init: float = 0.0,
        use_scale: bool = True,
        box_refine: bool = False,
    ):
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"all input levels need the same channels, got {sorted(channels)}")
        check_choice("norm", norm, ("GN", ""))
        check_int("num_classes", num_classes, 1)
        in_ch = channels.pop()
        self.num_classes = num_classes
        self.num_levels = len(input_shape)

        def tower():
            layers, c = [], in_ch
            for d in conv_dims:
                layers.append(nn.Conv2d(c, d, 3, padding=1, bias=not norm))
                if norm == "GN":
                    layers.append(group_norm(d))
                layers.append(nn.ReLU())
                c = d
            return nn.Sequential(*layers), c

        self.cls_tower, c = tower()
        self.box_tower, _ = tower()
        self.cls_score = nn.Conv2d(c, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.quality = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.ModuleList(
            [Scale(1.0) if use_scale else nn.Identity() for _ in range(self.num_levels)]
        )
        self.box_refine = bool(box_refine)
        if self.box_refine:
            self.reg_offset = nn.Conv2d(c, 8, 3, padding=1)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, prior_bias(prior_prob))
        nn.init.constant_(self.box_pred.bias, float(box_bias_init))

    def forward(self, features: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        if len(features) != self.num_levels:
            raise ValueError(f"head built for {self.num_levels} levels, got {len(features)}")
        out: Dict[str, List[torch.Tensor]] = {
            "logits": [], "box_reg": [], "quality": []
        }
        if self.box_refine:
            out["box_offsets"] = []
        for feature, scale in zip(features, self.scales):
            box_feat = self.box_tower(feature)
            out["logits"].append(self.cls_score(self.cls_tower(feature)))
            out["box_reg"].append(scale(self.box_pred(box_feat)))
            out["quality"].append(self.quality(box_feat))
            if self.box_refine:
                out["box_offsets"].append(self.reg_offset(box_feat))
        return out
