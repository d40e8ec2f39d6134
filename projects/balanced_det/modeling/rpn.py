"""RPN with a sampler plug-in: detectron2's random sampling or Sampling-Free (SPEC 1.1, 1.8).

:class:`BalancedRPN` subclasses detectron2's ``RPN`` and overrides only ``_subsample_labels``
(which anchors train) and ``losses`` (normalisers, guided loss), plus the Sampling-Free
statistics interface used by :class:`balanced_det.modeling.meta_arch.rcnn.BalancedRCNN`.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes, pairwise_iou

from ..ops import bce_sampling_free_loss, guided_loss_ratio, sigmoid_prior_bias
from ..stats import dummy_feature_maps
from ..utils.events import put_tensor_scalars
from .roi_heads import _check_choice, _check_nonneg, _float32_math

__all__ = ["BalancedRPN", "RPN_SAMPLERS", "anchor_generator_key"]

RPN_SAMPLERS = ("random", "none")


def anchor_generator_key(anchor_generator) -> Dict:
    """What the anchors of a detectron2 anchor generator depend on (for statistics cache keys):
    its cell anchors (sizes x aspect ratios), strides and offset."""
    cells = getattr(anchor_generator, "cell_anchors", None)
    return {
        "type": type(anchor_generator).__name__,
        "cell_anchors": [[round(float(v), 4) for v in c.flatten().tolist()] for c in cells]
        if cells is not None else None,
        "strides": [int(s) for s in getattr(anchor_generator, "strides", [])],
        "offset": float(getattr(anchor_generator, "offset", 0.0)),
    }


@PROPOSAL_GENERATOR_REGISTRY.register()
class BalancedRPN(RPN):
    """detectron2's ``RPN`` with ``sampler="random"`` (default: unchanged) or ``"none"``.

    Args (in addition to ``RPN``'s):
        sampler: ``"random"`` (detectron2: ``batch_size_per_image`` anchors, positive fraction
            ``positive_fraction``) or ``"none"`` (Sampling-Free, SPEC 1.8: every anchor with
            label >= 0 trains). With ``"none"``:
            ``loss_rpn_cls = sum_valid BCE / max(#positives, 1)`` and
            ``loss_rpn_loc = sum_positives box_loss / max(4 #positives, 1)`` (the mean over
            the positives' coordinates, as the authors' code; their loc loss is also halved
            and uses smooth L1 beta 1/9, which we leave to ``loss_weight`` /
            ``smooth_l1_beta``: SPEC fixes w_reg = 1). ``batch_size_per_image`` and
            ``positive_fraction`` are unused.
        guided_loss: ``loss_rpn_cls = w_cls * r * L_cls``, ``r = (w_reg L_reg / L_cls).detach()``
            with ``w_reg L_reg`` the weighted ``loss_rpn_loc`` (SPEC 1.8); ``r = 1`` when the
            batch has no positive anchor.
        guided_w_cls: 1.0 for the RPN (SPEC 1.8).
        prior_init: optimal bias initialisation of the objectness logits (sigmoid, C = 1):
            ``bias = -log((1 - pi) / pi)``, ``pi = N_f / N`` of the anchors under
            ``anchor_matcher``, applied by :meth:`apply_dataset_stats`.

    For Sampling-Free set also ``post_nms_topk=(2000, ...)`` (SPEC 1.8: 2000 proposals per
    image in training); the configs do.
    """

    @configurable
    def __init__(self, *, sampler: str = "random", guided_loss: bool = False,
                 guided_w_cls: float = 1.0, prior_init: bool = False, **kwargs):
        super().__init__(**kwargs)
        _check_choice("sampler", sampler, RPN_SAMPLERS)
        _check_nonneg("guided_w_cls", guided_w_cls)
        self.sampler = sampler
        self.guided_loss = bool(guided_loss)
        self.guided_w_cls = float(guided_w_cls)
        self.prior_init = bool(prior_init)

    @classmethod
    def from_config(cls, cfg, input_shape):  # yacs configs: detectron2's behaviour
        return super().from_config(cfg, input_shape)

    def _subsample_labels(self, label):
        if self.sampler == "none":
            return label  # every anchor with label >= 0 trains
        return super()._subsample_labels(label)

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        if self.sampler == "random":
            losses = super().losses(anchors, pred_objectness_logits, gt_labels,
                                    pred_anchor_deltas, gt_boxes)
            if self.guided_loss:
                has_fg = torch.stack(gt_labels).eq(1).any()
                w = self.loss_weight.get("loss_rpn_cls", 1.0)
                raw_cls = losses["loss_rpn_cls"] / w if w else losses["loss_rpn_cls"]
                losses["loss_rpn_cls"] = self._guided(raw_cls, losses["loss_rpn_loc"], has_fg)
            return losses

        logits = cat(pred_objectness_logits, dim=1)
        with _float32_math(logits):
            labels = torch.stack(gt_labels)  # (N, R)
            num_images = labels.shape[0]
            pos = labels == 1
            valid = labels >= 0
            num_pos = pos.sum()
            loss_cls = bce_sampling_free_loss(logits.float(), pos.float(), num_pos, valid)
            loc = _dense_box_regression_loss(
                anchors, self.box2box_transform, [d.float() for d in pred_anchor_deltas],
                [b.float() for b in gt_boxes], pos, box_reg_loss_type=self.box_reg_loss_type,
                smooth_l1_beta=self.smooth_l1_beta)
            box_dim = pred_anchor_deltas[0].shape[-1]
            loss_loc = loc / (num_pos * box_dim).clamp(min=1).float()
            put_tensor_scalars(**{
                "rpn/num_pos_anchors": num_pos.float() / num_images,
                "rpn/num_neg_anchors": (labels == 0).sum().float() / num_images,
            })
            losses = {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc}
            losses = {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
            if self.guided_loss:
                losses["loss_rpn_cls"] = self._guided(loss_cls, losses["loss_rpn_loc"],
                                                      num_pos > 0)
        return losses

    def _guided(self, raw_cls: torch.Tensor, weighted_loc: torch.Tensor, has_fg) -> torch.Tensor:
        """``loss_weight["loss_rpn_cls"] * w_cls * r * L_cls`` with
        ``r = (w_reg L_reg / L_cls).detach()``, ``w_reg = loss_weight["loss_rpn_loc"]``."""
        cls = raw_cls.float()
        r = guided_loss_ratio(weighted_loc, cls, 1.0, has_fg)
        put_tensor_scalars(**{"rpn/guided_ratio": r})
        return self.loss_weight.get("loss_rpn_cls", 1.0) * self.guided_w_cls * r * cls

    # ---- Sampling-Free statistics -----------------------------------------------------------
    @property
    def needs_dataset_stats(self) -> bool:
        return self.prior_init

    def anchors_fn(self) -> Callable[[tuple], Boxes]:
        """``image_size -> Boxes`` of all anchors (no network forward; cached per size)."""
        cache: Dict[tuple, Boxes] = {}
        strides = list(self.anchor_generator.strides)

        def anchors(image_size):
            key = tuple(int(x) for x in image_size)
            if key not in cache:
                with torch.no_grad():
                    cache[key] = Boxes.cat(self.anchor_generator(dummy_feature_maps(key, strides)))
                if len(cache) > 64:
                    cache.pop(next(iter(cache)))
            return cache[key]

        return anchors

    def dataset_stats_key(self) -> Dict:
        m = self.anchor_matcher
        return {
            "anchors": anchor_generator_key(self.anchor_generator),
            "matcher": {"thresholds": [float(x) for x in m.thresholds[1:-1]],
                        "labels": [int(x) for x in m.labels],
                        "allow_low_quality_matches": bool(m.allow_low_quality_matches)},
        }

    def dataset_stats_counter(self, anchors_fn=None):
        """N_f / N over the anchors of an image with this RPN's ``anchor_matcher`` (labels
        1 = foreground, 0 = background, -1 = ignored), as ``label_and_sample_anchors`` labels
        them (``anchor_boundary_thresh`` < 0, detectron2's default)."""
        anchors_fn = anchors_fn or self.anchors_fn()
        matcher = self.anchor_matcher

        def counter(image_size, gt_boxes, gt_classes):
            anchors = anchors_fn(image_size)
            if gt_boxes.shape[0] == 0:
                return 0, len(anchors)
            _, lab = matcher(pairwise_iou(Boxes(gt_boxes), anchors))
            return int((lab == 1).sum()), int((lab >= 0).sum())

        return counter

    @torch.no_grad()
    def apply_dataset_stats(self, fg_fraction: float) -> float:
        """Objectness bias ``-log((1 - pi) / pi)``, ``pi = N_f / N`` (C = 1). Returns it."""
        bias = sigmoid_prior_bias(fg_fraction, 1)
        conv = getattr(self.rpn_head, "objectness_logits", None)
        if conv is None or getattr(conv, "bias", None) is None:
            raise ValueError(f"prior_init: {type(self.rpn_head).__name__} has no "
                             "'objectness_logits' layer with a bias to initialise")
        conv.bias.fill_(bias)
        assert math.isfinite(bias)
        return bias
