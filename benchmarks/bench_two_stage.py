#!/usr/bin/env python
"""Speed of the two-stage balanced-learning parts (PISA, Libra, OHEM, Sampling-Free); prints a
Markdown table.

Workload: 2 images of 800 x 1333, 2000 RPN proposals + 15 GTs per image (GTs are
appended as proposals, as in training), 80 classes, the ROI head of
``configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.py`` (512 ROIs/image, 25 % positive).
Proposals: 20 % jittered around the GTs, the rest random, so that every sampler has real work.

Columns:

* **ours**: our implementation (``balanced_det.ops`` / ``BalancedROIHeads`` of the method's COCO
  config), median time.
* **loop**: the same maths written the straightforward way, here in the benchmark: a Python
  loop over GTs (instance-balanced positives, IoU-HLR as in mmdet's ``isr_p``), over IoU bins
  (IoU-balanced negatives) or over clusters (ISR-N's greedy NMS clustering and Score-HLR as
  in mmdet's ``ScoreHLRSampler``). Where the two are deterministic the table says whether they
  agree. Target: ours >= 5x faster.
* **ours / step**: ours relative to one full detectron2 R50-FPN Faster R-CNN training step
  (forward, backward, SGD step; random initialisation, 2 images, same machine).
  Target: <= 5 %.

The Libra sampler rows are repeated on a COCO-crowded image (``--crowded-gt``, default 50 GTs).
Rows below the 5x target are listed after the table with the reason.

Rows "(head)" time what the ROI head adds to a training step for that sampler (matching,
sampling, weights; ``label_and_sample_proposals`` or ISR-P's ``_apply_isr_p``) with the extra
box-head forward of OHEM / ISR-N excluded; that forward over the candidate proposals is part of
those methods and has its own row.

    python benchmarks/bench_two_stage.py                  # full workload (CPU: minutes)
    python benchmarks/bench_two_stage.py --quick          # 400 x 667, 500 proposals (a check)
    python benchmarks/bench_two_stage.py --threads 1 --no-step   # ops and head rows only
    python benchmarks/bench_two_stage.py --device cuda --repeats 10

Timings: median over ``--repeats`` runs after one warm-up run; CUDA synchronised around each.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from common import ROOT, load_at_start, machine, timeit  # first: balanced_det from projects/
import balanced_det  # noqa: E402,F401
from balanced_det.config import load_config  # noqa: E402
from balanced_det.modeling.losses import CARL, SmoothL1Loss  # noqa: E402
from balanced_det.modeling.roi_heads import (  # noqa: E402
    BalancedFastRCNNOutputLayers,
    BalancedROIHeads,
)
from balanced_det.ops import (  # noqa: E402
    instance_balanced_pos_sample,
    iou_balanced_neg_sample,
    isr_n_select,
    isr_p_weights,
    ohem_topk,
    renormalize_to_loss,
)
from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances, pairwise_iou  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

CONFIG = os.path.join(ROOT, "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.py")
# ROI sampler -> the COCO config whose ROI head uses it
SAMPLER_CONFIGS = {
    "random": "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.py",
    "libra": "configs/COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.py",
    "ohem": "configs/COCO-Detection/ohem_faster_rcnn_R_50_FPN_1x.py",
    "pisa": "configs/COCO-Detection/pisa_faster_rcnn_R_50_FPN_1x.py",
    "none": "configs/COCO-Detection/sampling_free_faster_rcnn_R_50_FPN_1x.py",
}
USW_CONFIG = "configs/COCO-Detection/usw_faster_rcnn_R_50_FPN_1x.py"
EQL_CONFIG = "configs/LVISv1-InstanceSegmentation/eql_mask_rcnn_R_50_FPN_1x.py"


# ----------------------------------------------------------------------------- workload
def make_batch(args, device, seed=0):
    """Targets and proposals of 2 images."""
    g = torch.Generator().manual_seed(seed)
    h, w = args.size
    proposals, targets = [], []
    for _ in range(2):
        xy = torch.rand(args.num_gt, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 20 + torch.rand(args.num_gt, 2, generator=g) * torch.tensor([w * 0.2, h * 0.2])
        gt = torch.cat([xy, xy + wh], 1)
        n_near = args.num_proposals // 5
        near = gt[torch.randint(args.num_gt, (n_near,), generator=g)]
        size = (near[:, 2:] - near[:, :2]).repeat(1, 2)
        near = near + (torch.rand(n_near, 4, generator=g) * 2 - 1) * 0.3 * size
        n_far = args.num_proposals - n_near
        xy = torch.rand(n_far, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9])
        far = torch.cat([xy, xy + 8 + torch.rand(n_far, 2, generator=g) * 200], 1)
        boxes = torch.cat([near, far])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        p = Instances((h, w))
        p.proposal_boxes = Boxes(boxes.to(device))
        p.objectness_logits = torch.rand(len(boxes), generator=g).to(device)
        t = Instances((h, w))
        t.gt_boxes = Boxes(gt.to(device))
        t.gt_classes = torch.randint(args.num_classes, (args.num_gt,), generator=g).to(device)
        proposals.append(p)
        targets.append(t)
    return proposals, targets


def fpn_features(args, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = args.size
    return {f"p{k}": torch.randn(2, 256, -(-h // 2 ** k), -(-w // 2 ** k), generator=g).to(device)
            for k in (2, 3, 4, 5)}


def roi_heads(args, device, sampler, config=None):
    """The ROI head of the COCO config of ``sampler`` (:data:`SAMPLER_CONFIGS`: its sampler,
    positive weighting and box predictor; or of ``config``) as a ``BalancedROIHeads`` (the
    baseline's: detectron2's random sampling) with ``args.num_classes`` classes, train mode."""
    node = load_config(os.path.join(ROOT, config or SAMPLER_CONFIGS[sampler])).model.roi_heads
    node._target_ = BalancedROIHeads
    node.box_predictor._target_ = BalancedFastRCNNOutputLayers
    node.num_classes = args.num_classes
    torch.manual_seed(0)
    return instantiate(node).to(device).train()


def timeit_ms(fn: Callable[[], object], device, repeats: int) -> float:
    """:func:`common.timeit` in milliseconds."""
    return 1e3 * timeit(fn, device, repeats)


# ----------------------------------------------------------------------------- loops (b)
def instance_balanced_loop(gt_ids: torch.Tensor, num_expected: int) -> torch.Tensor:
    """Per-GT Python loop: up to round(P/G)+1 random candidates per GT, then fill randomly."""
    n = gt_ids.numel()
    if n <= num_expected:
        return torch.arange(n, device=gt_ids.device)
    uniq = gt_ids.unique()
    cap = round(num_expected / len(uniq)) + 1
    chosen = []
    for u in uniq:  # loop over GTs
        idx = torch.nonzero(gt_ids == u)[:, 0]
        chosen.append(idx[torch.randperm(idx.numel(), device=idx.device)[:cap]])
    chosen = torch.cat(chosen)
    if chosen.numel() > num_expected:
        return chosen[torch.randperm(chosen.numel(), device=chosen.device)[:num_expected]]
    rest = torch.ones(n, dtype=torch.bool, device=gt_ids.device)
    rest[chosen] = False
    rest = torch.nonzero(rest)[:, 0]
    fill = rest[torch.randperm(rest.numel(), device=rest.device)[:num_expected - chosen.numel()]]
    return torch.cat([chosen, fill])


def iou_balanced_loop(max_ious: torch.Tensor, num_expected: int, num_bins=3) -> torch.Tensor:
    """Per-bin Python loop over [0, max IoU]: num_expected / K random per bin, then fill."""
    n = max_ious.numel()
    if n <= num_expected:
        return torch.arange(n, device=max_ious.device)
    hi = float(max_ious.max())
    per_bin = num_expected // num_bins
    chosen = []
    for b in range(num_bins):  # loop over bins
        lo_b, hi_b = hi * b / num_bins, hi * (b + 1) / num_bins
        m = (max_ious >= lo_b) & ((max_ious < hi_b) if b < num_bins - 1 else (max_ious <= hi_b))
        idx = torch.nonzero(m)[:, 0]
        chosen.append(idx[torch.randperm(idx.numel(), device=idx.device)[:per_bin]])
    chosen = torch.cat(chosen)
    rest = torch.ones(n, dtype=torch.bool, device=max_ious.device)
    rest[chosen] = False
    rest = torch.nonzero(rest)[:, 0]
    fill = rest[torch.randperm(rest.numel(), device=rest.device)[:num_expected - chosen.numel()]]
    return torch.cat([chosen, fill])


def ohem_loop(losses, is_pos, num_pos, num_neg):
    """Straightforward OHEM: argsort each kind (there is no GT or cluster loop to remove)."""
    pos = torch.nonzero(is_pos)[:, 0]
    neg = torch.nonzero(~is_pos)[:, 0]
    p = pos[losses[pos].argsort(descending=True)[:num_pos]]
    q = neg[losses[neg].argsort(descending=True)[:num_neg]]
    return torch.cat([p, q])


def isr_p_loop(ious, gt_ids, labels, ce, gamma=2.0, beta=0.0):
    """IoU-HLR with Python loops over classes and GTs (the structure of mmdet's ``isr_p``),
    ties broken by index as ours."""
    n_max = int(torch.bincount(labels).max())
    ranks = torch.zeros_like(labels)
    for c in labels.unique():  # loop over classes
        in_c = torch.nonzero(labels == c)[:, 0]
        local = torch.zeros(in_c.numel(), dtype=torch.long, device=labels.device)
        for t in gt_ids[in_c].unique():  # loop over GTs of the class
            sel = torch.nonzero(gt_ids[in_c] == t)[:, 0]
            order = torch.sort(ious[in_c][sel], descending=True, stable=True).indices
            local[sel[order]] = torch.arange(sel.numel(), device=labels.device)
        order = torch.sort(ious[in_c], descending=True, stable=True).indices
        order = order[torch.sort(local[order], stable=True).indices]
        ranks[in_c[order]] = torch.arange(in_c.numel(), device=labels.device)
    u = (n_max - ranks.float()) / n_max
    w = ((1 - beta) * u + beta).pow(gamma)
    return w * ce.sum() / (w * ce).sum()


def isr_n_loop(scores_fg, boxes, num_expected, score_thr=0.05, iou_thr=0.5, gamma=0.5, beta=0.0):
    """Score-HLR with a Python loop over clusters (greedy NMS clustering one leader at a time,
    then mmdet's ``for g in group`` importance loop)."""
    s, _ = scores_fg.max(dim=1)
    valid = torch.nonzero(s > score_thr)[:, 0]
    invalid = torch.nonzero(s <= score_thr)[:, 0]
    k = min(num_expected, s.numel())
    if valid.numel() == 0:
        return torch.randperm(s.numel(), device=s.device)[:k], torch.ones(k, device=s.device)
    vs = s[valid]
    order = vs.argsort(descending=True)
    remaining = order.clone()
    groups = []
    iou = box_iou(boxes[valid], boxes[valid])
    while remaining.numel():  # loop over clusters
        lead = remaining[0]
        members = remaining[iou[lead, remaining] >= iou_thr]
        members = torch.cat([lead[None], members[members != lead]])
        groups.append(members)
        keep = torch.ones(remaining.numel(), dtype=torch.bool, device=s.device)
        keep[torch.isin(remaining, members)] = False
        remaining = remaining[keep]
    n_valid = valid.numel()
    imp = torch.zeros(n_valid, device=s.device)
    for grp in groups:  # loop over clusters
        gs = vs[grp]
        rank = torch.sort(gs, descending=True, stable=True).indices.argsort()
        imp[grp] = (n_valid - rank).float() + gs
    rank_idx = imp.argsort(descending=True)
    hlr = rank_idx[:k]
    num_hlr = min(n_valid, k)
    upper = max(k, n_valid)
    w = torch.ones(k, device=s.device)
    w[:num_hlr] = (upper - torch.arange(num_hlr, device=s.device).float()) / upper
    w[num_hlr:] = w[:num_hlr].min()
    w = ((1 - beta) * w + beta).pow(gamma)
    sel = valid[hlr]
    if num_hlr < k:
        fill = torch.randperm(invalid.numel(), device=s.device)[:k - num_hlr]
        sel = torch.cat([sel, invalid[fill]])
    return sel, w


# ----------------------------------------------------------------------------- rows
def bench(args, device) -> List[Dict]:
    rows: List[Dict] = []
    proposals, targets = make_batch(args, device)
    feats = fpn_features(args, device)
    num = 512
    k_pos = 128
    storage = EventStorage(0)
    storage.__enter__()

    # Matched candidates of image 0 (+ appended GTs), as the ROI head sees them.
    cand = Boxes.cat([proposals[0].proposal_boxes, targets[0].gt_boxes])
    iou = pairwise_iou(targets[0].gt_boxes, cand)
    max_iou, gt_idx = iou.max(dim=0)
    pos = torch.nonzero(max_iou >= 0.5)[:, 0]
    neg = torch.nonzero(max_iou < 0.5)[:, 0]

    def add(name, ours, loop=None, agree=None, note=""):
        rows.append(dict(name=name, ours=ours, loop=loop, agree=agree, note=note))

    # 1-2. Libra samplers, at the reference workload and (--crowded-gt) a COCO-crowded image
    sampler_cases = [(args.num_gt, max_iou, gt_idx, pos, neg)]
    if args.crowded_gt and args.crowded_gt != args.num_gt:
        cargs = argparse.Namespace(**{**vars(args), "num_gt": args.crowded_gt})
        cprops, ctargets = make_batch(cargs, device, seed=7)
        ccand = Boxes.cat([cprops[0].proposal_boxes, ctargets[0].gt_boxes])
        cmax, cgt = pairwise_iou(ctargets[0].gt_boxes, ccand).max(dim=0)
        sampler_cases.append((args.crowded_gt, cmax, cgt, torch.nonzero(cmax >= 0.5)[:, 0],
                              torch.nonzero(cmax < 0.5)[:, 0]))
    for n_gt, m_iou, g_idx, p_idx, n_idx in sampler_cases:
        # instance-balanced positives (per image: both images); at most half the candidates
        # so that the balancing path runs (with fewer candidates than k_pos both return all)
        gid = g_idx[p_idx]
        k_ib = max(1, min(k_pos, gid.numel() // 2))
        ours = timeit_ms(lambda: [instance_balanced_pos_sample(gid, k_ib) for _ in range(2)],
                         device, args.repeats)
        loop = timeit_ms(lambda: [instance_balanced_loop(gid, k_ib) for _ in range(2)],
                         device, args.repeats)
        a, b = instance_balanced_pos_sample(gid, k_ib), instance_balanced_loop(gid, k_ib)
        add(f"Libra instance-balanced positives (ops, 2 img, {n_gt} GTs)", ours, loop,
            agree=a.numel() == b.numel() == a.unique().numel(),
            note=f"{k_ib} of {p_idx.numel()} positive candidates of "
                 f"{int(g_idx[p_idx].unique().numel())} GTs; random: sizes compared")

        # IoU-balanced negatives
        miou = m_iou[n_idx]
        ours = timeit_ms(lambda: [iou_balanced_neg_sample(miou, num - k_pos) for _ in range(2)],
                         device, args.repeats)
        loop = timeit_ms(lambda: [iou_balanced_loop(miou, num - k_pos) for _ in range(2)],
                         device, args.repeats)
        add(f"Libra IoU-balanced negatives (ops, 2 img, {n_gt} GTs)", ours, loop,
            agree=(iou_balanced_neg_sample(miou, 384).numel()
                   == iou_balanced_loop(miou, 384).numel()),
            note=f"{num - k_pos} of {n_idx.numel()} negatives, 3 bins (the loop: 3 "
                 "iterations, independent of the GT count); random: sizes compared")

    # 3. OHEM top-k
    g = torch.Generator().manual_seed(1)
    losses = torch.rand(cand.tensor.shape[0], generator=g).to(device)
    is_pos = max_iou >= 0.5
    ours = timeit_ms(lambda: [ohem_topk(losses, is_pos, k_pos, num - k_pos) for _ in range(2)],
                     device, args.repeats)
    loop = timeit_ms(lambda: [ohem_loop(losses, is_pos, k_pos, num - k_pos) for _ in range(2)],
                     device, args.repeats)
    same = set(ohem_topk(losses, is_pos, k_pos, num - k_pos).tolist()) == set(
        ohem_loop(losses, is_pos, k_pos, num - k_pos).tolist())
    add("OHEM top-k selection (ops, 2 img)", ours, loop, same,
        note="no GT/cluster loop in the method: both sort")

    # 4. ISR-P over the positives of a batch (2 x up to 128, 80 classes)
    n_pos = 256
    g = torch.Generator().manual_seed(2)
    ious_p = torch.rand(n_pos, generator=g).to(device)
    gt_ids = torch.randint(2 * args.num_gt, (n_pos,), generator=g).to(device)
    cls_of_gt = torch.randint(args.num_classes, (2 * args.num_gt,), generator=g).to(device)
    labels_p = cls_of_gt[gt_ids]
    ce_p = torch.rand(n_pos, generator=g).to(device)
    ours = timeit_ms(lambda: isr_p_weights(ious_p, gt_ids, labels_p, ce_p), device, args.repeats)
    loop = timeit_ms(lambda: isr_p_loop(ious_p, gt_ids, labels_p, ce_p), device, args.repeats)
    same = torch.allclose(isr_p_weights(ious_p, gt_ids, labels_p, ce_p),
                          isr_p_loop(ious_p, gt_ids, labels_p, ce_p), atol=1e-5)
    add("PISA ISR-P weights / IoU-HLR (ops, batch)", ours, loop, same,
        note=f"{n_pos} positives, {2 * args.num_gt} GTs")

    # 5. ISR-N selection over the negatives of each image (no forward)
    g = torch.Generator().manual_seed(3)
    neg_boxes = cand.tensor[neg]
    logits = torch.randn(neg.numel(), args.num_classes + 1, generator=g).to(device) * 2.5
    logits[:, -1] += 3.0
    probs = F.softmax(logits, 1)[:, :-1]
    decoded = neg_boxes + torch.randn(neg_boxes.shape, generator=g).to(device) * 2
    bg_ce = -F.log_softmax(logits, 1)[:, -1]
    n_valid = int((probs.max(1).values > 0.05).sum())

    def isr_n_ours():
        out = []
        for _ in range(2):
            sel, w = isr_n_select(probs, decoded, num - k_pos)
            out.append((sel, renormalize_to_loss(w, bg_ce[sel])))
        return out

    def isr_n_ref():
        out = []
        for _ in range(2):
            sel, w = isr_n_loop(probs, decoded, num - k_pos)
            out.append((sel, w * bg_ce[sel].sum() / (w * bg_ce[sel]).sum()))
        return out

    ours = timeit_ms(isr_n_ours, device, args.repeats)
    loop = timeit_ms(isr_n_ref, device, args.repeats)
    (s1, w1), (s2, w2) = isr_n_ours()[0], isr_n_ref()[0]
    k_hlr = min(n_valid, num - k_pos)
    top = probs.max(1).values
    # same Score-HLR selection and order, weights. The loop's float key (n_valid - rank) + s
    # (mmdet's) cannot separate scores closer than float32's resolution at n_valid (~3e-5);
    # ours orders exactly, so equal-looking neighbours may come swapped.
    same = (sorted(s1[:k_hlr].tolist()) == sorted(s2[:k_hlr].tolist())
            and torch.allclose(top[s1[:k_hlr]], top[s2[:k_hlr]], atol=1e-4)
            and torch.allclose(w1, w2, atol=1e-5))
    add("PISA ISR-N Score-HLR select + weights (ops, 2 img)", ours, loop, same,
        note=f"{neg.numel()} negatives/img, {n_valid} above 0.05")

    # 6. CARL forward + backward (2 x 128 positives)
    g = torch.Generator().manual_seed(4)
    prob = torch.rand(n_pos, generator=g).to(device).requires_grad_()
    d = torch.randn(n_pos, 4, generator=g).to(device).requires_grad_()
    t = torch.randn(n_pos, 4, generator=g).to(device)
    carl = CARL(k=1.0, bias=0.2)
    box = SmoothL1Loss(beta=1.0)
    ours = timeit_ms(lambda: carl(prob, box.per_box(d, t), 1024.0).backward(), device,
                     args.repeats)
    add("PISA CARL loss, forward + backward (ops)", ours, None,
        note="no loop in the method")

    # ---- head level: what each sampler adds to a training step (extra forward excluded)
    def cached_predict(heads):
        real = heads._predict_no_grad
        memo = {}

        def fake(features, boxes):
            key = tuple(len(b) for b in boxes)
            if key not in memo:
                memo[key] = real(features, boxes)
            return memo[key]
        heads._predict_no_grad = fake
        return real

    head_rows = {}
    for sampler in ("random", "libra", "ohem", "pisa", "none"):
        heads = roi_heads(args, device, sampler)
        real = cached_predict(heads)
        with torch.no_grad():
            fn = (lambda h=heads: h.label_and_sample_proposals(proposals, targets, features=feats))
            ms = timeit_ms(fn, device, args.repeats)
        head_rows[sampler] = ms
        add(f"ROI sampler '{sampler}' (head, 2 img)", ms, None,
            note="match + sample + weights" + (", extra forward excluded"
                                               if sampler in ("ohem", "pisa") else ""))
        if sampler in ("ohem", "pisa"):
            # the extra box-head forward over the candidates (all labelled / all negatives)
            with torch.no_grad():
                labels = []
                for p, tg in zip(proposals, targets):
                    b = Boxes.cat([p.proposal_boxes, tg.gt_boxes])
                    v = pairwise_iou(tg.gt_boxes, b).max(dim=0).values
                    labels.append(b[v < 0.5] if sampler == "pisa" else b)
                ms_fwd = timeit_ms(lambda: real(feats, labels), device, args.repeats)
            add(f"ROI sampler '{sampler}': extra box-head forward", ms_fwd, None,
                note=f"{sum(len(x) for x in labels)} ROIs, no grad (part of the method)")

    # ISR-P as applied in _forward_box (decode, IoU, CE, weights) on 2 x 512 sampled ROIs
    heads = roi_heads(args, device, "pisa")
    cached_predict(heads)
    with torch.no_grad():
        sampled = heads.label_and_sample_proposals(proposals, targets, features=feats)
    n_rois = sum(len(s) for s in sampled)
    g = torch.Generator().manual_seed(5)
    preds = (torch.randn(n_rois, args.num_classes + 1, generator=g).to(device),
             torch.randn(n_rois, 4 * args.num_classes, generator=g).to(device) * 0.1)
    ms = timeit_ms(lambda: heads._apply_isr_p(preds, sampled), device, args.repeats)
    add("PISA ISR-P in the head (decode + IoU + CE + weights)", ms, None,
        note=f"{n_rois} sampled ROIs")
    # the PISA box predictor's losses (CE weighted + smooth L1 + CARL) vs detectron2's losses
    p2 = (preds[0].clone().requires_grad_(), preds[1].clone().requires_grad_())
    ms_loss = timeit_ms(lambda: sum(heads.box_predictor.losses(p2, sampled).values()).backward(),
                        device, args.repeats)
    add("PISA predictor losses incl. CARL, fwd + bwd", ms_loss, None, note="for reference")
    # USW: the same ROIs through the baseline's predictor losses and USW's (per-ROI inputs,
    # weighting network, weighted losses and regularisers)
    for name, config in (("baseline", SAMPLER_CONFIGS["random"]), ("USW", USW_CONFIG)):
        bp = roi_heads(args, device, "random", config=config).box_predictor
        ms = timeit_ms(lambda bp=bp: sum(bp.losses(p2, sampled).values()).backward(), device,
                       args.repeats)
        add(f"{name} predictor losses, fwd + bwd", ms, None,
            note=f"{n_rois} sampled ROIs" + (", incl. the weighting net" if name == "USW"
                                            else ", for reference"))
    # EQL: its sigmoid classifier's C logits of the same ROIs (no background column), class
    # frequencies log-uniform in [1e-4, 1] (about a third of the classes below lambda = 0.0011)
    node = load_config(os.path.join(ROOT, EQL_CONFIG)).model.roi_heads.box_predictor
    node.num_classes = args.num_classes
    torch.manual_seed(0)
    eql = instantiate(node).to(device).train()
    eql.apply_class_frequencies(
        (10 ** (-4 * torch.rand(args.num_classes, generator=g))).tolist())
    p3 = (preds[0][:, :args.num_classes].clone().requires_grad_(), p2[1])
    ms = timeit_ms(lambda: sum(eql.losses(p3, sampled).values()).backward(), device,
                   args.repeats)
    add("EQL predictor losses, fwd + bwd", ms, None,
        note=f"{n_rois} sampled ROIs, {int(eql.tail_classes().sum())} of {args.num_classes} "
             "classes in the tail")
    storage.__exit__(None, None, None)
    return rows


def training_step_ms(args, device) -> float:
    """detectron2 Faster R-CNN R50-FPN (detectron2's classes, random init), 2 images."""
    cfg = load_config(CONFIG)
    cfg.model.roi_heads.num_classes = args.num_classes
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    proposals, targets = make_batch(args, device)
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": (torch.rand(3, h, w, generator=g) * 255).to(device), "instances": t}
              for t in targets]

    def step():
        with EventStorage(0):
            losses = model(inputs)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

    return timeit_ms(step, device, 1 if args.quick else min(args.repeats, 3))


def fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true",
                   help="400 x 667 images, 500 proposals/image, 3 repeats, 1 for the step")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); 1 gives steadier CPU timings "
                        "on a shared machine")
    p.add_argument("--num-gt", type=int, default=15)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--num-proposals", type=int, default=2000)
    p.add_argument("--no-step", action="store_true",
                   help="skip the R50 training step (c): the 'ours / step' column shows '-'")
    p.add_argument("--crowded-gt", type=int, default=50,
                   help="GTs of the extra COCO-crowded sampler rows (0: none)")
    args = p.parse_args()
    args.size = (800, 1333)
    if args.quick:
        args.size, args.num_proposals, args.repeats = (400, 667), 500, 3
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    load = load_at_start()
    rows = bench(args, device)
    step = None if args.no_step else training_step_ms(args, device)
    print(f"\n## Two-stage balanced learning: speed ({machine(device)})\n")
    print(f"Workload: 2 images {args.size[0]}x{args.size[1]}, {args.num_proposals} proposals + "
          f"{args.num_gt} GTs per image, {args.num_classes} classes, 512 ROIs/image; "
          f"median of {args.repeats} run(s); {load}.\n")
    print(f"(c) detectron2 R50-FPN Faster R-CNN training step: **{fmt(step)} ms**"
          + (" (not measured: --no-step)" if step is None else "") + "\n")
    print("| component | ours (ms) | loop (ms) | loop / ours | ours / step | same result | "
          "notes |")
    print("|---|---:|---:|---:|---:|:-:|---|")
    for r in rows:
        speedup = f"{r['loop'] / r['ours']:.1f}x" if r["loop"] else "-"
        agree = "-" if r["agree"] is None else ("yes" if r["agree"] else "NO")
        of_step = "-" if step is None else f"{100 * r['ours'] / step:.2f} %"
        print(f"| {r['name']} | {fmt(r['ours'])} | {fmt(r['loop'])} | {speedup} | "
              f"{of_step} | {agree} | {r['note']} |")
    short = [f"{r['name']}: {r['loop'] / r['ours']:.1f}x ({fmt(r['ours'])} vs {fmt(r['loop'])} ms)"
             for r in rows if r["loop"] and r["loop"] / r["ours"] < 5.0]
    if short:
        print("\nNOTE: below the 5x target: " + "; ".join(short) + ".")
        print("Libra samplers and OHEM are sub-millisecond selections over a few hundred "
              "(positives) to ~2000 (negatives) candidates: ours is one pass of ~15-25 small "
              "tensor ops (no loop, no host sync), and on a CPU each op costs a few microseconds "
              "of dispatch whatever its size, so time ~ op count. The IoU-balanced loop runs "
              "over 3 bins (~25 ops, whatever the GT count) and OHEM has no loop to remove, so 5x "
              "below them would take ~5 ops: not reachable on CPU. The instance-balanced loop "
              "grows with the GTs (compare the crowded rows). The loop baselines are the "
              "straightforward tensor versions, unchanged.")
    bad = [r["name"] for r in rows if r["agree"] is False]
    if bad:
        print(f"\nWARNING: loop and ours disagree on: {', '.join(bad)}")
    if any(math.isnan(r["ours"]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
