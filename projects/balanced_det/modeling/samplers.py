"""Sample-level plug-ins: which proposals (or anchors) train a head, with which weight.

A sampler receives a batch's :class:`SampleCandidates` — per image the labels, matched GTs,
IoUs and boxes of the candidates, the per-image sample budget of the host and, for the
methods that score candidates, a :class:`BoxHeadProbe` (a no-grad box-head forward) — and
returns per image the kept candidate indices and optional per-sample classification weights.
Hosts: :class:`~balanced_det.modeling.roi_heads.BalancedROIHeads` (``sampler=``) and
:class:`~balanced_det.modeling.rpn.BalancedRPN` (``sampler=``, the samplers that need no head).

:class:`ISRPWeighting` re-weights positives after the training forward (PISA's ISR-P); the
ROI head and RetinaNet take it as ``positive_weighting=``. Method pages: docs/methods/.
"""
from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import cat, nonzero_tuple
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes

from ..ops import (
    aligned_iou,
    instance_balanced_pos_sample,
    iou_balanced_neg_sample,
    isr_n_select,
    isr_p_weights,
    ohem_topk,
    random_choice,
    renormalize_to_loss,
)
from ..utils.checks import check_int, check_plugin, check_range
from ..utils.events import put_tensor_scalars
from ..utils.tensor_math import float32_math

__all__ = [
    "SampleCandidates", "BoxHeadProbe", "Sampler", "PositiveSampler", "NegativeSampler",
    "RandomSampler", "AllSampler", "OHEMSampler", "CombinedSampler", "RandomPosSampler",
    "RandomNegSampler", "InstanceBalancedPosSampler", "IoUBalancedNegSampler",
    "ScoreHLRSampler", "ISRPWeighting",
]

#: per image: (kept candidate indices, per-sample classification weights or None)
Picks = List[Tuple[Tensor, Optional[Tensor]]]


@dataclasses.dataclass
class BoxHeadProbe:
    """A no-grad forward of the host's box head, for samplers that score candidates.

    ``predict(boxes)``: per-image candidate boxes -> ``(scores, deltas)`` float32, all
    images concatenated (scores: the predictor's logits, (R, C + 1) for softmax, (R, C) for
    a sigmoid classifier); ``decode(deltas, boxes, classes)``: boxes (R, 4) from the deltas
    of class ``classes[i]`` (class-specific or class-agnostic regression);
    ``roi_losses(scores, labels)``: (R,) the predictor's own per-ROI classification loss
    (labels in 0..C, C = background). Default: softmax cross entropy.
    """

    predict: Callable[[List[Boxes]], Tuple[Tensor, Tensor]]
    decode: Callable[[Tensor, Tensor, Tensor], Tensor]
    roi_losses: Callable[[Tensor, Tensor], Tensor] = lambda scores, labels: F.cross_entropy(
        scores.float(), labels, reduction="none")


@dataclasses.dataclass
class SampleCandidates:
    """What a sampler sees of a batch (lists have one entry per image).

    labels: (P_i,) in {-1 ignored, 0..C-1 class, C background}; matched_gt: (P_i,) matched GT
    index; ious: (G_i, P_i) IoU with the image's GTs; boxes: the candidates; num_classes: C;
    num_per_image, positive_fraction: the host's budget (detectron2's ``batch_size_per_image``,
    ``positive_fraction``); probe: the box head (``None`` where there is none, e.g. the RPN).
    """

    labels: List[Tensor]
    matched_gt: List[Tensor]
    ious: List[Tensor]
    boxes: List[Boxes]
    num_classes: int
    num_per_image: int
    positive_fraction: float
    probe: Optional[BoxHeadProbe] = None

    @property
    def num_pos_expected(self) -> int:
        return int(self.num_per_image * self.positive_fraction)

    def masks(self, i: int) -> Tuple[Tensor, Tensor]:
        """(positive, negative) masks of image ``i``."""
        lab = self.labels[i]
        return (lab >= 0) & (lab != self.num_classes), lab == self.num_classes

    def max_ious(self, i: int) -> Tensor:
        """(P_i,) max IoU of each candidate with any GT (0 without GTs)."""
        iou = self.ious[i]
        if iou.shape[0] == 0:
            return torch.zeros(self.labels[i].numel(), device=self.labels[i].device)
        return iou.max(dim=0).values


class Sampler(nn.Module, metaclass=ABCMeta):
    """Chooses the training samples of a batch; see the module docstring."""

    #: runs the host's box head over candidates (needs ``SampleCandidates.probe``)
    needs_box_head = False
    #: returns per-sample classification weights (the host's predictor must take them)
    weights_samples = False
    #: reads matched GTs / IoUs / boxes, not only the labels (the RPN gives labels only)
    needs_matches = True

    @abstractmethod
    def sample(self, candidates: SampleCandidates) -> Picks:
        """Per image the kept indices into the candidates and weights (or None)."""

    def forward(self, candidates: SampleCandidates) -> Picks:
        if self.needs_box_head and candidates.probe is None:
            raise ValueError(f"{type(self).__name__} scores candidates with a box head; this "
                             "host has none (use it in a ROI head)")
        return self.sample(candidates)


class RandomSampler(Sampler):
    """detectron2's ``subsample_labels``: uniformly random positives (at most
    ``num_per_image * positive_fraction``), negatives fill the rest."""

    needs_matches = False

    def sample(self, c: SampleCandidates) -> Picks:
        picks = []
        for lab in c.labels:
            pos, neg = subsample_labels(lab, c.num_per_image, c.positive_fraction, c.num_classes)
            picks.append((torch.cat([pos, neg], dim=0), None))
        return picks


class AllSampler(Sampler):
    """Sampling-Free: every candidate that is not ignored trains (no budget);
    see docs/methods/sampling_free.md."""

    needs_matches = False

    def sample(self, c: SampleCandidates) -> Picks:
        return [(nonzero_tuple(lab >= 0)[0], None) for lab in c.labels]


class OHEMSampler(Sampler):
    """Online hard example mining (Shrivastava et al. 2016): the highest classification
    losses (the predictor's own, ``BoxHeadProbe.roi_losses``) of one no-grad box-head
    forward over all labelled candidates, ``k_pos`` positives
    and the rest negatives; optional NMS with the loss as score (``nms_thresh``, the paper's
    0.7; default None, as mmdet). See docs/methods/ohem.md."""

    needs_box_head = True

    def __init__(self, nms_thresh: Optional[float] = None):
        super().__init__()
        self.nms_thresh = (None if nms_thresh is None
                           else check_range("nms_thresh", nms_thresh, 0.0, 1.0, low_open=True))

    def extra_repr(self) -> str:
        return f"nms_thresh={self.nms_thresh}"

    def sample(self, c: SampleCandidates) -> Picks:
        cands = [nonzero_tuple(lab >= 0)[0] for lab in c.labels]
        boxes = [b[i] for b, i in zip(c.boxes, cands)]
        scores, _ = c.probe.predict(boxes)
        cand_labels = cat([lab[i] for lab, i in zip(c.labels, cands)], dim=0)
        losses = c.probe.roi_losses(scores, cand_labels)
        k_pos = c.num_pos_expected
        sizes = [len(i) for i in cands]
        picks = []
        for cand, b, lab, loss in zip(cands, boxes, cand_labels.split(sizes), losses.split(sizes)):
            is_pos = lab != c.num_classes
            num_pos = min(int(is_pos.sum()), k_pos)  # one sync per image: the negative count
            keep = ohem_topk(loss, is_pos, k_pos, c.num_per_image - num_pos,
                             nms_boxes=b.tensor if self.nms_thresh is not None else None,
                             nms_thresh=self.nms_thresh)
            picks.append((cand[keep], None))
        return picks


class _PartSampler(nn.Module, metaclass=ABCMeta):
    @abstractmethod
    def select(self, c: SampleCandidates, i: int, num: int) -> Tensor:
        """Indices into image ``i``'s candidates (at most ``num``)."""


class PositiveSampler(_PartSampler):
    """Chooses the positives of one image (a part of :class:`CombinedSampler`)."""


class NegativeSampler(_PartSampler):
    """Chooses the negatives of one image (a part of :class:`CombinedSampler`)."""


class RandomPosSampler(PositiveSampler):
    """Uniformly random positives."""

    def select(self, c: SampleCandidates, i: int, num: int) -> Tensor:
        return random_choice(c.masks(i)[0], num)


class RandomNegSampler(NegativeSampler):
    """Uniformly random negatives."""

    def select(self, c: SampleCandidates, i: int, num: int) -> Tensor:
        return random_choice(c.masks(i)[1], num)


class InstanceBalancedPosSampler(PositiveSampler):
    """Libra R-CNN's instance-balanced positives: about the same number per GT;
    see docs/methods/libra.md."""

    def select(self, c: SampleCandidates, i: int, num: int) -> Tensor:
        pos_c = nonzero_tuple(c.masks(i)[0])[0]
        return pos_c[instance_balanced_pos_sample(c.matched_gt[i][pos_c], num)]


class IoUBalancedNegSampler(NegativeSampler):
    """Libra R-CNN's IoU-balanced negatives: ``num_bins`` equal IoU bins between the floor and
    the largest IoU, the same number from each (``floor_thr < 0``: no floor; ``floor_fraction``
    of the negatives drawn below the floor); see docs/methods/libra.md."""

    def __init__(self, floor_thr: float = -1.0, floor_fraction: float = 0.0, num_bins: int = 3):
        super().__init__()
        self.floor_thr = check_range("floor_thr", floor_thr, None, 1.0, high_open=True)
        self.floor_fraction = check_range("floor_fraction", floor_fraction, 0.0, 1.0)
        self.num_bins = check_int("num_bins", num_bins, 1)

    def extra_repr(self) -> str:
        return (f"floor_thr={self.floor_thr}, floor_fraction={self.floor_fraction}, "
                f"num_bins={self.num_bins}")

    def select(self, c: SampleCandidates, i: int, num: int) -> Tensor:
        neg_c = nonzero_tuple(c.masks(i)[1])[0]
        return neg_c[iou_balanced_neg_sample(c.max_ious(i)[neg_c], num, self.floor_thr,
                                             self.floor_fraction, self.num_bins)]


class CombinedSampler(Sampler):
    """Positives by ``pos_sampler`` (at most ``num_per_image * positive_fraction``), then the
    rest of the budget by ``neg_sampler`` (mmdet's ``CombinedSampler``)."""

    def __init__(self, pos_sampler: Optional[PositiveSampler] = None,
                 neg_sampler: Optional[NegativeSampler] = None):
        super().__init__()
        self.pos_sampler = check_plugin("pos_sampler", pos_sampler, PositiveSampler,
                                        RandomPosSampler)
        self.neg_sampler = check_plugin("neg_sampler", neg_sampler, NegativeSampler,
                                        RandomNegSampler)

    def sample(self, c: SampleCandidates) -> Picks:
        picks = []
        for i in range(len(c.labels)):
            pos = self.pos_sampler.select(c, i, c.num_pos_expected)
            neg = self.neg_sampler.select(c, i, c.num_per_image - pos.numel())
            picks.append((torch.cat([pos, neg]), None))
        return picks


class ScoreHLRSampler(Sampler):
    """PISA's ISR-N (Score-HLR): random positives; negatives ranked by Score-HLR over one
    no-grad box-head forward, the top ones kept with weights ``((1 - beta) u + beta)^gamma``
    renormalised to their background cross entropy (mmdet's ``ScoreHLRSampler``). Without a
    negative above ``score_thresh``: random negatives, weight 1. See docs/methods/pisa.md."""

    needs_box_head = True
    weights_samples = True

    def __init__(self, gamma: float = 0.5, beta: float = 0.0, score_thresh: float = 0.05,
                 iou_thresh: float = 0.5):
        super().__init__()
        self.gamma = check_range("gamma", gamma, 0.0)
        self.beta = check_range("beta", beta, 0.0, 1.0)
        self.score_thresh = check_range("score_thresh", score_thresh, 0.0, 1.0)
        self.iou_thresh = check_range("iou_thresh", iou_thresh, 0.0, 1.0, low_open=True)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, beta={self.beta}, score_thresh={self.score_thresh}, "
                f"iou_thresh={self.iou_thresh}")

    def sample(self, c: SampleCandidates) -> Picks:
        pos_picks, neg_cands = [], []
        for i in range(len(c.labels)):
            pos, neg = c.masks(i)
            pos_picks.append(random_choice(pos, c.num_pos_expected))
            neg_cands.append(nonzero_tuple(neg)[0])
        boxes = [b[n] for b, n in zip(c.boxes, neg_cands)]
        scores, deltas = c.probe.predict(boxes)
        with float32_math(scores):
            log_p = F.log_softmax(scores, dim=1)
            fg_probs = log_p[:, : c.num_classes].exp()
            bg_ce = -log_p[:, c.num_classes]
            top = fg_probs.argmax(dim=1)
            all_boxes = cat([b.tensor for b in boxes], dim=0) if boxes else deltas.new_zeros(0, 4)
            decoded = c.probe.decode(deltas, all_boxes, top)
        sizes = [len(n) for n in neg_cands]
        picks, w_all, n_valid = [], [], []
        for pos_idx, neg_c, probs_i, boxes_i, ce_i in zip(
                pos_picks, neg_cands, fg_probs.split(sizes), decoded.split(sizes),
                bg_ce.split(sizes)):
            k = c.num_per_image - pos_idx.numel()
            sel, w = isr_n_select(probs_i, boxes_i, k, self.score_thresh, self.iou_thresh,
                                  self.gamma, self.beta)
            w = renormalize_to_loss(w, ce_i[sel])
            n_valid.append((probs_i.amax(dim=1) > self.score_thresh).sum()
                           if probs_i.numel() else torch.zeros((), device=probs_i.device))
            w_all.append(w)
            picks.append((torch.cat([pos_idx, neg_c[sel]]),
                          torch.cat([torch.ones(pos_idx.numel(), device=w.device), w])))
        w_cat = cat(w_all, dim=0)
        if w_cat.numel():
            put_tensor_scalars(**{
                "roi_head/isr_n_weight_mean": w_cat.mean(),
                "roi_head/isr_n_weight_max": w_cat.max(),
                "roi_head/isr_n_num_valid": torch.stack(n_valid).float().mean(),
            })
        return picks


class ISRPWeighting(nn.Module):
    """PISA's ISR-P (Cao et al. 2020, eq. 1-3): positives weighted by their IoU-HLR rank,
    ``w = ((1 - beta) u + beta)^gamma``, ``u = (n_max - r) / n_max``, renormalised so the
    positives' classification loss is unchanged. See docs/methods/pisa.md."""

    def __init__(self, gamma: float = 2.0, beta: float = 0.0):
        super().__init__()
        self.gamma = check_range("gamma", gamma, 0.0)
        self.beta = check_range("beta", beta, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, beta={self.beta}"

    @torch.no_grad()
    def forward(self, pred_boxes: Tensor, gt_boxes: Tensor, gt_ids: Tensor, labels: Tensor,
                cls_loss: Tensor) -> Tensor:
        """Weights (P,) of the positives.

        Args:
            pred_boxes, gt_boxes: (P, 4) each positive's regressed box and its GT box.
            gt_ids: (P,) GT ids unique over the batch; labels: (P,) classes.
            cls_loss: (P,) or (P, ...) each positive's classification loss.
        """
        ious = aligned_iou(pred_boxes, gt_boxes)
        return isr_p_weights(ious, gt_ids, labels, cls_loss, gamma=self.gamma, beta=self.beta)


def resolve_sampler(sampler: Optional[Sampler]) -> Sampler:
    """``None`` -> detectron2's :class:`RandomSampler`; anything else must be a Sampler."""
    return check_plugin("sampler", sampler, Sampler, RandomSampler)
