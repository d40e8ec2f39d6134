"""The Unified Sample Weighting network (Cai et al., CVPR 2020) as a plug-in of the ROI box
predictor (``BalancedFastRCNNOutputLayers(sample_weighting=...)``). The maths is in
:mod:`balanced_det.ops.usw`; see docs/methods/usw.md."""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.usw import (USW_CE_INPUT, USW_FEATURE_DIMS, USW_MASK_FEATURE_DIMS, usw_losses,
                       usw_scores)
from ..utils.checks import check_choice, check_int, check_range
from ..utils.events import put_tensor_scalars

__all__ = ["SampleWeightingNet"]

CLS_WEIGHTING = ("pooled", "per_sample")


def _mlp(dims, relu_last: bool) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ...`` with ReLUs between (and after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if relu_last or i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SampleWeightingNet(nn.Module):
    """Per-ROI scores ``(s_cls, s_reg)`` from the detached loss statistics, and the weighted
    losses ``exp(-s) L + lam s`` (:func:`~balanced_det.ops.usw.usw_losses`).

    Architecture (the authors' ``UncertaintyWithLossFeature``): one branch per input, IoU (1),
    GT-class probability (1), CE (1), box loss (4), each ``Linear(d, h)-ReLU-Linear(h, h)-ReLU``;
    the concatenation (4h) -> ``Linear(4h, h)-ReLU-Linear(h, 2)``. Every Linear: weight
    N(0, ``init_std``), bias 0, so ``s ~ 0`` (all weights ~1) at the start.

    Args:
        hidden_dim: h (default 64), >= 1.
        init_std: weight init std (default 1e-4), >= 0.
        lam: regulariser weight (default 0.5), > 0.
        score_min, score_max: clamp of the scores (default -2, 2), ``score_min < score_max``.
        cls_weighting: ``"pooled"`` (the authors' code: one classification score per group,
            positives / negatives) or ``"per_sample"``.
        mask: Mask R-CNN (the authors' ``SWNMask``): a fifth branch on the per-ROI mask loss
            and a third score ``s_mask`` that weights the mask head's loss (default False).

    Trained by its own optimizer (Adam 1e-3 in the configs; ``usw()`` in
    configs/common/models/balanced_rcnn.py), its parameters are named ``*.sample_weighting.*``.
    """

    def __init__(self, hidden_dim: int = 64, init_std: float = 1e-4, lam: float = 0.5,
                 score_min: float = -2.0, score_max: float = 2.0, cls_weighting: str = "pooled",
                 mask: bool = False):
        super().__init__()
        h = check_int("hidden_dim", hidden_dim, 1)
        self.init_std = check_range("init_std", init_std, 0.0)
        self.lam = check_range("lam", lam, 0.0, low_open=True)
        self.score_min = check_range("score_min", score_min)
        self.score_max = check_range("score_max", score_max, self.score_min, low_open=True)
        self.cls_weighting = check_choice("cls_weighting", cls_weighting, CLS_WEIGHTING)
        self.mask = bool(mask)
        self.feature_dims = USW_MASK_FEATURE_DIMS if self.mask else USW_FEATURE_DIMS
        self.branches = nn.ModuleList(_mlp((d, h, h), relu_last=True) for d in self.feature_dims)
        self.predictor = _mlp((h * len(self.feature_dims), h, len(self.feature_dims) - 2),
                              relu_last=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, self.init_std)
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return (f"lam={self.lam}, score_range=({self.score_min}, {self.score_max}), "
                f"cls_weighting={self.cls_weighting!r}, mask={self.mask}")

    def forward(self, features: Tensor, fg_inds: Optional[Tensor] = None) -> Tensor:
        """(R, 7) inputs (:func:`~balanced_det.ops.usw.usw_features`) -> (R, 2) raw scores;
        with ``mask``: (R, 8) -> (R, 3).

        ``fg_inds``: the rows whose inputs other than the CE may be non-zero (the positives;
        :func:`usw_features` puts zeros there for the others). The same function, computed
        with the first predictor layer split by branch, ``W [h_1; ...; h_B] = sum_b W_b h_b``:
        every row gets ``W_CE h_CE(CE) + sum_b W_b h_b(0)``, the positives also
        ``sum_b W_b (h_b(x_b) - h_b(0))``, so the other branches run on the positives only
        (a RetinaNet batch: every anchor through one branch instead of four)."""
        parts = features.float().split(list(self.feature_dims), dim=1)
        if fg_inds is None:
            return self.predictor(torch.cat([b(x) for b, x in zip(self.branches, parts)], dim=1))
        first = self.predictor[0]
        blocks = first.weight.split(first.weight.shape[1] // len(self.branches), dim=1)
        pre = F.linear(self.branches[USW_CE_INPUT](parts[USW_CE_INPUT]), blocks[USW_CE_INPUT],
                       first.bias)
        const, fg = 0.0, 0.0
        for k, (branch, x, w) in enumerate(zip(self.branches, parts, blocks)):
            if k == USW_CE_INPUT:
                continue
            at_zero = branch(x.new_zeros(1, x.shape[1]))  # (1, h): the negatives' branch output
            const = const + F.linear(at_zero, w)
            fg = fg + F.linear(branch(x.index_select(0, fg_inds)) - at_zero, w)
        pre = (pre + const).index_add(0, fg_inds, fg)
        return self.predictor[1:](pre)

    def losses(self, features: Tensor, ce: Tensor, box_loss: Tensor, fg_inds: Tensor,
               fg_mask: Tensor, reg_normalizer: Union[float, Tensor] = 1.0,
               cls_weights: Optional[Tensor] = None, groups: bool = True,
               cls_normalizer: Optional[Union[float, Tensor]] = None) -> Dict[str, Tensor]:
        """``loss_cls``, ``loss_box_reg`` (weighted) and ``loss_usw_cls``, ``loss_usw_reg``
        (regularisers); ``groups``: the ROI head's positive / negative pooling (False:
        RetinaNet's one mean over all anchors); other arguments as
        :func:`~balanced_det.ops.usw.usw_losses`. With ``mask`` also ``loss_usw_mask`` and
        ``mask_weights`` (P,), ``exp(-s_mask)`` of the positives (not detached; a weight for
        the mask head, not a loss: the caller takes it out)."""
        scores = usw_scores(self(features, fg_inds), fg_mask, self.score_min, self.score_max,
                            pooled=self.cls_weighting == "pooled", groups=groups)
        put_tensor_scalars(**{"usw/s_cls_pos": scores["cls_pos"].detach(),
                              "usw/s_cls_neg": scores["cls_neg"].detach()})
        out = usw_losses(ce, box_loss, fg_inds, fg_mask, scores, self.lam, reg_normalizer,
                         cls_weights, cls_normalizer)
        if self.mask:
            out["mask_weights"] = torch.exp(-scores["mask"][fg_inds])
        return out

