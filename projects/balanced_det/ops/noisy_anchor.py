"""Learning from Noisy Anchors (Li et al., CVPR 2020): the top-N candidate set, cleanliness
soft targets and re-weighting factors, and the soft-target focal loss.
See docs/methods/noisy_anchor.md."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["topn_candidates", "noisy_anchor_soft_targets", "soft_target_focal_loss"]


def topn_candidates(iou: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """The ``n`` anchors of highest IoU of every GT, whatever their IoU, and each anchor's GT.

    Args:
        iou: (G, R) IoU of every GT with every anchor. n: candidates per GT (>= 1; all ``R``
            anchors when ``n >= R``).
    Returns:
        count (R,) int64: how many GTs' top-``n`` lists hold the anchor (0: not a candidate);
        matched (R,) int64: the GT of highest IoU with the anchor (the first on ties, 0
        without GTs), which may differ from the GT whose list picked it.
    """
    g, r = iou.shape
    count = torch.zeros(r, dtype=torch.int64, device=iou.device)
    if g == 0:
        return count, count.clone()
    idx = iou.topk(min(int(n), r), dim=1).indices.reshape(-1)
    count = count.scatter_add(0, idx, torch.ones_like(idx))
    return count, iou.argmax(dim=0)


def noisy_anchor_soft_targets(loc: Tensor, cls: Tensor, count: Tensor, alpha: float = 0.75,
                              eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Soft classification targets and re-weighting factors of the candidates, per image::

        s_a = alpha loc_a / mean(loc) + (1 - alpha) cls_a / mean(cls)
        t_a = mean(loc) + (s_a - min s) (1 - mean(loc)) / (max s - min s)   in [mean(loc), 1]
        r_a = alpha f(loc_a) / mean(f(loc)) + (1 - alpha) f(cls_a) / mean(f(cls)),
        f(x) = 1 / (1 - x)

    means, min and max over the image's candidate list (an anchor counted ``count`` times);
    ``t = 0`` and ``r = 1`` off the candidates. Guards (inactive in normal ranges): the
    denominators ``mean(loc)``, ``mean(cls)``, ``max s - min s`` are clamped to ``eps`` and
    ``f`` clamps its input to ``1 - eps``. Inputs are detached; float32.

    Args:
        loc: (..., R) IoU of each anchor's regressed box with its GT. cls: (..., R)
            probability of its GT's class. count: (..., R) multiplicity in the candidate
            list (:func:`topn_candidates`). alpha: weight of ``loc``, in [0, 1].
    Returns:
        targets (..., R), weights (..., R).
    """
    loc, cls = loc.detach().float(), cls.detach().float()
    c = count.to(loc.dtype)
    cand = count > 0
    n = c.sum(-1, keepdim=True).clamp(min=1.0)

    def mean(x):
        return (c * x).sum(-1, keepdim=True) / n

    loc_mean = mean(loc)
    s = alpha * loc / loc_mean.clamp(min=eps) + (1 - alpha) * cls / mean(cls).clamp(min=eps)
    has = cand.any(-1, keepdim=True)
    zero = torch.zeros_like(loc_mean)
    big = torch.finfo(s.dtype).max
    s_min = torch.where(has, torch.where(cand, s, torch.full_like(s, big)).amin(-1, True), zero)
    s_max = torch.where(has, torch.where(cand, s, torch.full_like(s, -big)).amax(-1, True), zero)
    t = loc_mean + (s - s_min) * (1 - loc_mean) / (s_max - s_min).clamp(min=eps)

    f_loc = 1.0 / (1.0 - loc.clamp(max=1.0 - eps))
    f_cls = 1.0 / (1.0 - cls.clamp(max=1.0 - eps))
    r = (alpha * f_loc / mean(f_loc).clamp(min=eps)
         + (1 - alpha) * f_cls / mean(f_cls).clamp(min=eps))
    return torch.where(cand, t, torch.zeros_like(t)), torch.where(cand, r, torch.ones_like(r))


def soft_target_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.5,
                           gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss with soft targets ``t`` in [0, 1] and the hard-label
    modulating factors, ``p = σ(x)``::

        -alpha t (1 - p)^gamma log p - (1 - alpha) (1 - t) p^gamma log(1 - p)

    (log-sigmoid, finite for any logit). For 0/1 targets it is the sigmoid focal loss.

    Args:
        logits, targets: (...,) of the same shape. alpha in [0, 1]; gamma >= 0.
    Returns:
        float32 tensor shaped like ``logits``.
    """
    x, t = logits.float(), targets.float()
    p = torch.sigmoid(x)
    pos = alpha * t * (1 - p) ** gamma * F.logsigmoid(x)
    neg = (1 - alpha) * (1 - t) * p ** gamma * F.logsigmoid(-x)
    return -(pos + neg)
