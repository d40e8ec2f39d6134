#!/usr/bin/env python
"""Speed against the peers' own code, side by side on the same inputs; prints a Markdown table.

Peers: mmdetection 3.3.0's pure-torch implementations of ISR-P and CARL (``pisa_loss.py``),
Score-HLR sampling (``ScoreHLRSampler._sample_neg``), instance-balanced positives and
IoU-balanced negatives (Libra's samplers), OHEM selection (``OHEMSampler``), Balanced L1,
GHM-C and GHM-R; and the DW authors' per-GT-loop formulation of DW's weights (the loop form of
``benchmarks/bench_dense.py``, written after strongwolf/DW). Nothing of mmdet is in this
repository or installed: at start the script downloads the wheel (``pip download mmdet==3.3.0
--no-deps`` into a temporary folder; ``--mmdet-wheel`` for a local copy), extracts the source
files it needs and imports them with stand-ins for what they import from mmcv, mmengine and
mmdet's registries (:func:`load_mmdet`). If that fails the script says so and prints only the
rows without mmdet.

Workload (COCO-like, as ``bench_two_stage.py`` / ``bench_dense.py``): 2 images of 800 x 1333,
2000 proposals + 15 GTs per image, 80 classes, 512 ROIs per image (25 % positive); dense rows:
P3-P7 RetinaNet anchors of the same images. ``--quick``: 400 x 667 (dense: 320 x 544), 500
proposals. Both sides get identical tensors; where a peer function needs a box-head forward,
a box decoder or mmcv's C++ ``nms_match``, both sides get the same precomputed values or
the same cheap stand-in, so the columns time the method's own logic. Score-HLR: the peer's
``nms_match`` (C++ in mmcv) is replaced by its precomputed result, so the peer column is a
lower bound of mmdet's time and peer / ours a lower bound of the speed-up.

Columns: peer and ours (median ms, ``--repeats`` runs after a warm-up), peer / ours (> 1:
ours faster); for the rows whose both sides run the same stand-in work (OHEM's and Score-HLR's
box-head forward and decode, ISR-P's decode and cross entropy), that work timed alone and the
ratio of the remaining, method-own parts, (peer - shared) / (ours - shared); and whether the
outputs agree where both are deterministic.

    python benchmarks/bench_peers.py --quick --threads 1
    python benchmarks/bench_peers.py --threads 1                # full sizes (CPU: minutes)
    python benchmarks/bench_peers.py --device cuda
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import types
import zipfile
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from common import load_at_start, machine, timeit  # first: balanced_det from projects/
import balanced_det  # noqa: E402,F401
from balanced_det.ops import (  # noqa: E402
    GHMC,
    GHMR,
    balanced_l1_loss,
    carl_loss,
    instance_balanced_pos_sample,
    iou_balanced_neg_sample,
    isr_n_select,
    isr_p_weights,
    ohem_topk,
    renormalize_to_loss,
)
from balanced_det.ops.boxes import aligned_iou  # noqa: E402
from bench_dense import (  # noqa: E402
    dense_grid, dense_predictions, dw_weights_library, dw_weights_per_gt_loop)
from bench_two_stage import make_batch  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from tqdm import tqdm  # noqa: E402
from torchvision.ops import box_iou, nms  # noqa: E402

MMDET = "mmdet==3.3.0"
# the wheel's files the peers need (a package's __init__ is never executed)
MMDET_FILES = (
    "mmdet/models/losses/utils.py", "mmdet/models/losses/pisa_loss.py",
    "mmdet/models/losses/ghm_loss.py", "mmdet/models/losses/balanced_l1_loss.py",
    "mmdet/models/task_modules/samplers/base_sampler.py",
    "mmdet/models/task_modules/samplers/sampling_result.py",
    "mmdet/models/task_modules/samplers/random_sampler.py",
    "mmdet/models/task_modules/samplers/instance_balanced_pos_sampler.py",
    "mmdet/models/task_modules/samplers/iou_balanced_neg_sampler.py",
    "mmdet/models/task_modules/samplers/ohem_sampler.py",
    "mmdet/models/task_modules/samplers/score_hlr_sampler.py",
    "mmdet/structures/bbox/bbox_overlaps.py",
)
CODER = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))  # detectron2's ROI-head deltas


# ----------------------------------------------------------------------------- loading mmdet
class _Registry:
    """Stand-in of an mmengine registry: ``register_module()`` returns the class unchanged."""

    def register_module(self, *args, **kwargs):
        return lambda cls: cls


def _module(name: str, path: Optional[str] = None, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    if path is not None:
        mod.__path__ = [path]  # a package: its submodules load from the extracted files
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def fetch_mmdet_wheel(folder: str) -> str:
    """``pip download mmdet==3.3.0 --no-deps`` into ``folder``; the wheel's path."""
    subprocess.run([sys.executable, "-m", "pip", "download", MMDET, "--no-deps", "-q", "-d",
                    folder], check=True, capture_output=True, text=True, timeout=300)
    return glob.glob(os.path.join(folder, "mmdet-*.whl"))[0]


def load_mmdet(wheel: Optional[str], folder: str) -> types.SimpleNamespace:
    """The peers' functions and classes from the mmdet wheel, imported without mmcv/mmengine.

    The needed files are extracted to ``folder``; ``mmdet`` and its sub-packages become empty
    package modules over the extracted folders (their ``__init__`` files, which import
    everything, are not run); what the files import from mmcv / mmengine / the registries /
    box structures is replaced by stand-ins (identity registries, empty classes, and
    ``nms_match``, which :func:`bench` replaces by its precomputed result)."""
    wheel = wheel or fetch_mmdet_wheel(folder)
    with zipfile.ZipFile(wheel) as z:
        for f in MMDET_FILES:
            z.extract(f, folder)
    root = os.path.join(folder, "mmdet")
    empty = type("Stub", (), {})
    _module("mmengine"), _module("mmengine.structures", InstanceData=empty)
    _module("mmcv"), _module("mmcv.ops", nms_match=None)
    _module("mmdet", root)
    _module("mmdet.registry", MODELS=_Registry(), TASK_UTILS=_Registry())
    _module("mmdet.utils", util_mixins=types.SimpleNamespace(NiceRepr=object))
    _module("mmdet.utils.util_random",
            ensure_rng=lambda rng=None: np.random.mtrand._rand if rng is None else rng)
    _module("mmdet.structures", os.path.join(root, "structures"))
    bbox = _module("mmdet.structures.bbox", os.path.join(root, "structures", "bbox"),
                   BaseBoxes=empty, cat_boxes=torch.cat, get_box_tensor=lambda b: b)
    from mmdet.structures.bbox.bbox_overlaps import bbox_overlaps

    bbox.bbox_overlaps = bbox_overlaps
    bbox.bbox2roi = lambda boxes: torch.cat(
        [torch.cat([b.new_full((b.shape[0], 1), i), b], 1) for i, b in enumerate(boxes)])
    _module("mmdet.models", os.path.join(root, "models"))
    _module("mmdet.models.losses", os.path.join(root, "models", "losses"))
    _module("mmdet.models.task_modules", os.path.join(root, "models", "task_modules"))
    _module("mmdet.models.task_modules.assigners", AssignResult=empty)
    _module("mmdet.models.task_modules.coders", BaseBBoxCoder=empty)
    samplers = _module("mmdet.models.task_modules.samplers",
                       os.path.join(root, "models", "task_modules", "samplers"))
    from mmdet.models.task_modules.samplers.sampling_result import SamplingResult

    samplers.SamplingResult = SamplingResult
    from mmdet.models.losses import balanced_l1_loss as bl1, ghm_loss, pisa_loss
    from mmdet.models.task_modules.samplers import (
        instance_balanced_pos_sampler as ib, iou_balanced_neg_sampler as iob, ohem_sampler,
        score_hlr_sampler)

    return types.SimpleNamespace(
        isr_p=pisa_loss.isr_p, carl_loss=pisa_loss.carl_loss, GHMC=ghm_loss.GHMC,
        GHMR=ghm_loss.GHMR, balanced_l1_loss=bl1.balanced_l1_loss,
        InstanceBalancedPosSampler=ib.InstanceBalancedPosSampler,
        IoUBalancedNegSampler=iob.IoUBalancedNegSampler, OHEMSampler=ohem_sampler.OHEMSampler,
        ScoreHLRSampler=score_hlr_sampler.ScoreHLRSampler, score_hlr_module=score_hlr_sampler)


# ----------------------------------------------------------------------------- shared inputs
def make_candidates(args, device, seed=0):
    """One image's ROI candidates (the proposals of ``bench_two_stage.make_batch`` + the GTs, as
    in training), their max IoU with a GT and matched GT."""
    proposals, targets = make_batch(args, device, seed=seed)
    gt = targets[0].gt_boxes.tensor
    boxes = torch.cat([proposals[0].proposal_boxes.tensor, gt])
    max_iou, gt_idx = box_iou(gt, boxes).max(0)
    return boxes, max_iou, gt_idx


def box_head(boxes: torch.Tensor, num_classes: int):
    """A cheap deterministic stand-in of a box-head forward: class logits (N, C + 1, the last
    background, as mmdet) and class-specific deltas (N, 4 C) as functions of the boxes."""
    g = torch.Generator().manual_seed(5)
    feat = torch.cat([boxes / 1000.0, (boxes / 37.0).sin()], 1)
    w_cls = torch.randn(8, num_classes + 1, generator=g).to(boxes.device) * 1.5
    w_box = torch.randn(8, 4 * num_classes, generator=g).to(boxes.device) * 0.1
    logits = feat @ w_cls
    logits[:, -1] += 9.0  # background-heavy: about a third of the negatives score > 0.05
    return logits, feat @ w_box


def nms_match_groups(boxes: torch.Tensor, scores: torch.Tensor, iou_thr: float):
    """mmcv's ``nms_match`` result (groups of indices, each led by its highest score, members
    in descending score), computed once here so the peer's timing does not include it."""
    order = scores.argsort(descending=True)
    iou = box_iou(boxes, boxes)
    free = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    groups = []
    for i in order.tolist():
        if not free[i]:
            continue
        members = order[(free[order]) & (iou[i, order] >= iou_thr)]
        members = torch.cat([members.new_tensor([i]), members[members != i]])
        free[members] = False
        groups.append(members)
    return groups


# ----------------------------------------------------------------------------- the rows
def bench(args, device, mm) -> List[Dict]:
    rows: List[Dict] = []
    C, num, k_pos = args.num_classes, 512, 128
    images = [make_candidates(args, device, seed=i) for i in range(2)]

    def t(fn: Callable[[], object]) -> float:
        return 1e3 * timeit(fn, device, args.repeats)

    def add(name, peer_fn, ours_fn, agree=None, note="", shared_fn=None):
        """``shared_fn``: the stand-in work both sides do (box-head forward, decode), timed
        alone so the table can also compare the methods' own parts."""
        peer = t(peer_fn) if (mm is not None and peer_fn is not None) else None
        rows.append(dict(name=name, peer=peer, ours=t(ours_fn), agree=agree, note=note,
                         shared=t(shared_fn) if shared_fn is not None else None))

    steps = tqdm(total=9, desc="ops", unit="op")

    # 1. instance-balanced positives: per image, half the positive candidates
    pos_gid = [gi[mi >= 0.5] for _, mi, gi in images]
    k_ib = [max(1, min(k_pos, g.numel() // 2)) for g in pos_gid]
    ib = mm and mm.InstanceBalancedPosSampler(num=num, pos_fraction=0.25)
    ib_assign = [types.SimpleNamespace(gt_inds=torch.where(mi >= 0.5, gi + 1, 0))
                 for _, mi, gi in images]
    add("instance-balanced positives (2 img)",
        ib and (lambda: [ib._sample_pos(a, k) for a, k in zip(ib_assign, k_ib)]),
        lambda: [instance_balanced_pos_sample(g, k) for g, k in zip(pos_gid, k_ib)],
        note=f"{k_ib[0]} of {pos_gid[0].numel()} candidates; random: sizes compared")
    steps.update()

    # 2. IoU-balanced negatives
    iob = mm and mm.IoUBalancedNegSampler(num=num, pos_fraction=0.25, floor_thr=-1,
                                          floor_fraction=0, num_bins=3)
    iob_assign = [types.SimpleNamespace(gt_inds=torch.where(mi >= 0.5, gi + 1, 0),
                                        max_overlaps=mi) for _, mi, gi in images]
    neg_iou = [mi[mi < 0.5] for _, mi, _ in images]
    add("IoU-balanced negatives (2 img)",
        iob and (lambda: [iob._sample_neg(a, num - k_pos) for a in iob_assign]),
        lambda: [iou_balanced_neg_sample(m, num - k_pos) for m in neg_iou],
        note=f"{num - k_pos} of {neg_iou[0].numel()} negatives, 3 bins")
    steps.update()

    # 3. OHEM selection: box-head forward (stand-in) + CE + top-k, positives and negatives
    boxes0, iou0, gt0 = images[0]
    labels0 = torch.where(iou0 >= 0.5, gt0 % C, C)
    ctx = types.SimpleNamespace()
    ctx.bbox_head = types.SimpleNamespace(
        num_classes=C,
        # the peer decodes (rois, deltas); detectron2's apply_deltas takes (deltas, boxes)
        bbox_coder=types.SimpleNamespace(decode=lambda rois, d: CODER.apply_deltas(d, rois)),
        loss=lambda cls_score, labels, **kw: {
            "loss_cls": F.cross_entropy(cls_score, labels, reduction="none")})
    ctx._bbox_forward = lambda feats, rois: dict(zip(("cls_score", "bbox_pred"),
                                                     box_head(rois[:, 1:], C)))
    ohem_assign = types.SimpleNamespace(gt_inds=torch.where(iou0 >= 0.5, gt0 + 1, 0),
                                        labels=labels0)
    ohem = mm and mm.OHEMSampler(num=num, pos_fraction=0.25, context=ctx)

    def ohem_ours():
        logits, _ = box_head(boxes0, C)
        ce = F.cross_entropy(logits, labels0, reduction="none")
        return ohem_topk(ce, iou0 >= 0.5, k_pos, num - k_pos)

    def ohem_peer():
        p = ohem._sample_pos(ohem_assign, k_pos, bboxes=boxes0, feats=None)
        return torch.cat([p, ohem._sample_neg(ohem_assign, num - k_pos, bboxes=boxes0, feats=None)])

    same = mm is not None and set(ohem_peer().tolist()) == set(ohem_ours().tolist())
    add("OHEM selection (1 img)", ohem and ohem_peer, ohem_ours, agree=same if mm else None,
        note="box-head forward: the same stand-in on both sides",
        shared_fn=lambda: box_head(boxes0, C))
    steps.update()

    # 4. Score-HLR (ISR-N) negatives of one image
    neg = (iou0 < 0.5).nonzero()[:, 0]
    nb = boxes0[neg]
    logits, deltas = box_head(nb, C)
    probs = logits.softmax(-1)[:, :-1]
    s, arg = probs.max(-1)
    valid = (s > 0.05).nonzero()[:, 0]
    decoded = CODER.apply_deltas(deltas.view(len(nb), C, 4)[torch.arange(len(nb)), arg], nb)
    groups = nms_match_groups(decoded[valid], s[valid], 0.5)
    if mm is not None:
        mm.score_hlr_module.nms_match = lambda dets, thr: groups
    hlr_ctx = types.SimpleNamespace(bbox_roi_extractor=None, bbox_head=ctx.bbox_head,
                                    with_shared_head=False, _bbox_forward=ctx._bbox_forward)
    hlr_assign = types.SimpleNamespace(gt_inds=torch.where(iou0 >= 0.5, gt0 + 1, 0))

    def hlr_forward_decode():
        """The forward, softmax and decode the peer does inside too."""
        lg, dl = box_head(nb, C)
        pr = lg.softmax(-1)[:, :-1]
        sc, am = pr.max(-1)
        dec = CODER.apply_deltas(dl.view(len(nb), C, 4)[torch.arange(len(nb)), am], nb)
        return lg, pr, dec

    def hlr_ours():
        lg, pr, dec = hlr_forward_decode()
        ce = F.cross_entropy(lg, lg.new_full((len(nb),), C, dtype=torch.long), reduction="none")
        idx, w = isr_n_select(pr, dec, num - k_pos)
        return idx, renormalize_to_loss(w, ce[idx])

    nms_ms = t(lambda: nms(decoded[valid], s[valid], 0.5))  # the clustering's C++ part, ours
    hlr = mm and mm.ScoreHLRSampler(num=num, pos_fraction=0.25, context=hlr_ctx, k=0.5, bias=0,
                                    score_thr=0.05, iou_thr=0.5)
    add("Score-HLR negatives, ISR-N (1 img)",
        hlr and (lambda: hlr._sample_neg(hlr_assign, num - k_pos, bboxes=boxes0, feats=None)),
        hlr_ours, shared_fn=hlr_forward_decode,
        note=f"{valid.numel()} valid of {len(nb)} negatives, {len(groups)} clusters; peer "
             "without mmcv's C++ nms_match (its result precomputed): a lower bound; ours "
             f"with torchvision's C++ NMS ({nms_ms:.2f} ms of it)")
    steps.update()

    # 5. ISR-P over the positives of 2 images (decode, IoU, CE, HLR, weights, renormalisation)
    g = torch.Generator().manual_seed(2)
    n_img, n_pos = num, k_pos
    N = 2 * n_img
    pos_rows = torch.cat([torch.arange(n_pos), n_img + torch.arange(n_pos)]).to(device)
    gt_local = torch.randint(args.num_gt, (2 * n_pos,), generator=g).to(device)
    cls_of_gt = torch.randint(C, (2, args.num_gt), generator=g).to(device)
    labels = torch.full((N,), C, dtype=torch.long, device=device)
    labels[pos_rows] = cls_of_gt[torch.arange(2 * n_pos, device=device) // n_pos, gt_local]
    rois = torch.cat([torch.cat([images[i][0].new_full((n_img, 1), float(i)), images[i][0][:n_img]], 1)
                      for i in range(2)])
    cls_score = torch.randn(N, C + 1, generator=g).to(device)
    bbox_pred = (torch.randn(N, 4 * C, generator=g) * 0.2).to(device)
    bbox_targets = (torch.randn(N, 4, generator=g) * 0.2).to(device)
    label_weights = torch.ones(N, device=device)
    sampling_results = [types.SimpleNamespace(pos_assigned_gt_inds=gt_local[:n_pos]),
                        types.SimpleNamespace(pos_assigned_gt_inds=gt_local[n_pos:])]
    coder = types.SimpleNamespace(decode=lambda r, d: CODER.apply_deltas(d, r))

    def loss_cls(score, lab, reduction_override=None):
        return F.cross_entropy(score, lab, reduction="none")

    def isr_p_peer():
        return mm.isr_p(cls_score, bbox_pred, (labels, label_weights.clone(), bbox_targets,
                                               None), rois, sampling_results, loss_cls, coder,
                        k=2, bias=0, num_class=C)[1]

    # ours takes the GT boxes as detectron2's proposals hold them (``gt_boxes``); the peer
    # decodes its encoded targets inside isr_p, so that decode is in its time only
    gt_boxes_pos = CODER.apply_deltas(bbox_targets[pos_rows], rois[pos_rows, 1:])

    def isr_p_decode_ce():
        """The positives' box decode and cross entropy, which the peer does inside too."""
        pl = labels[pos_rows]
        pred = CODER.apply_deltas(bbox_pred.view(N, C, 4)[pos_rows, pl], rois[pos_rows, 1:])
        return pl, pred, F.cross_entropy(cls_score[pos_rows], pl, reduction="none")

    def isr_p_ours():
        pl, pred, ce = isr_p_decode_ce()
        tgt = gt_boxes_pos
        ids = gt_local + (torch.arange(2 * n_pos, device=device) // n_pos) * args.num_gt
        w = label_weights.clone()
        w[pos_rows] = isr_p_weights(aligned_iou(pred, tgt), ids, pl, ce)
        return w

    agree = mm is not None and torch.allclose(isr_p_peer(), isr_p_ours(), rtol=1e-4, atol=1e-5)
    add("ISR-P weights (2 img)", mm and isr_p_peer, isr_p_ours, agree=agree if mm else None,
        shared_fn=isr_p_decode_ce,
        note=f"{2 * n_pos} positives of {N} ROIs, {C} classes; each side's real path: the "
             "peer decodes the encoded targets, ours reads the GT boxes")
    steps.update()

    # 6. CARL, forward + backward
    cs = cls_score.clone().requires_grad_()
    bp = bbox_pred.clone().requires_grad_()

    def smooth_l1(pred, target, reduction_override=None):
        return F.smooth_l1_loss(pred, target, beta=1.0, reduction="none")

    def carl_peer():
        mm.carl_loss(cs, labels, bp, bbox_targets, smooth_l1, k=1, bias=0.2, avg_factor=N,
                     sigmoid=False, num_class=C)["loss_carl"].sum().backward()

    def carl_ours():
        pl = labels[pos_rows]
        p = cs.softmax(-1)[pos_rows, pl]
        box = smooth_l1(bp.view(N, C, 4)[pos_rows, pl], bbox_targets[pos_rows]).sum(1)
        carl_loss(p, box, avg_factor=N).backward()

    vals = []
    for fn in ((carl_peer, carl_ours) if mm is not None else ()):
        cs.grad = bp.grad = None
        fn()
        vals.append(torch.cat([cs.grad.flatten(), bp.grad.flatten()]))
    add("CARL, forward + backward (2 img)", mm and carl_peer, carl_ours,
        agree=torch.allclose(vals[0], vals[1], rtol=1e-4, atol=1e-7) if mm else None,
        note="gradients compared")
    steps.update()

    # 7. Balanced L1, forward + backward over the positives' deltas
    bx = (torch.randn(2 * n_pos, 4, generator=g) * 0.5).to(device).requires_grad_()
    tx = (torch.randn(2 * n_pos, 4, generator=g) * 0.5).to(device)
    add("Balanced L1, forward + backward",
        mm and (lambda: mm.balanced_l1_loss(bx, tx, beta=1.0, alpha=0.5, gamma=1.5,
                                            reduction="sum").backward()),
        lambda: balanced_l1_loss(bx, tx, alpha=0.5, gamma=1.5, beta=1.0).backward(),
        agree=(torch.allclose(mm.balanced_l1_loss(bx, tx, reduction="sum"),
                              balanced_l1_loss(bx, tx)) if mm else None),
        note=f"{2 * n_pos} x 4 deltas")
    steps.update()

    # 8-9. GHM-C over all anchors x classes, GHM-R over the positive anchors
    points, strides, logits_d, _, _, _ = dense_predictions(args, device)
    M = points.shape[0] * 9  # 9 anchors per location, both images below
    gd = torch.Generator().manual_seed(3)
    lg = (torch.randn(2 * M, C, generator=gd) * 2 - 3).to(device).requires_grad_()
    tgt = torch.zeros(2 * M, C, device=device)
    n_anchor_pos = min(2 * M, 2 * 15 * 20)
    pos_rows = torch.arange(n_anchor_pos, device=device) * (2 * M // n_anchor_pos)
    tgt[pos_rows, torch.randint(C, (n_anchor_pos,), generator=gd).to(device)] = 1
    ghmc_ours, ghmc_peer = GHMC(bins=30, momentum=0.75), mm and mm.GHMC(bins=30, momentum=0.75)
    add("GHM-C, forward + backward",
        ghmc_peer and (lambda: ghmc_peer(lg, tgt, torch.ones_like(tgt)).backward()),
        lambda: ghmc_ours(lg, tgt).backward(),
        agree=(torch.allclose(mm.GHMC(bins=30)(lg, tgt, torch.ones_like(tgt)),
                              GHMC(bins=30, momentum=0.0)(lg, tgt), rtol=1e-4) if mm else None),
        note=f"{2 * M} anchors x {C} classes, 30 bins (agreement: first call, momentum 0)")
    steps.update()
    pd_ = (torch.randn(n_anchor_pos, 4, generator=gd) * 0.3).to(device).requires_grad_()
    td = (torch.randn(n_anchor_pos, 4, generator=gd) * 0.3).to(device)
    # the authors' RetinaNet settings on both sides (mmdet's loss_weight default is 1)
    ghmr_ours = GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    ghmr_peer = mm and mm.GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    add("GHM-R, forward + backward",
        ghmr_peer and (lambda: ghmr_peer(pd_, td, torch.ones_like(td)).backward()),
        lambda: ghmr_ours(pd_, td).backward(),
        agree=(torch.allclose(mm.GHMR(mu=0.02, bins=10, loss_weight=10.0)(
                   pd_, td, torch.ones_like(td)), GHMR(mu=0.02, bins=10, momentum=0.0)(pd_, td),
                   rtol=1e-4)
               if mm else None),
        note=f"{n_anchor_pos} positive anchors, 10 bins (agreement: first call, momentum 0)")
    # as both RetinaNet heads call it: every anchor's deltas, the positives as the mask
    pd_all = (torch.randn(2 * M, 4, generator=gd) * 0.3).to(device).requires_grad_()
    td_all = (torch.randn(2 * M, 4, generator=gd) * 0.3).to(device)
    pos_all = torch.zeros(2 * M, dtype=torch.bool, device=device)
    pos_all[pos_rows] = True
    weight_all = pos_all[:, None].expand(2 * M, 4).float()
    add("GHM-R over all anchors, positives as the mask, forward + backward",
        ghmr_peer and (lambda: ghmr_peer(pd_all, td_all, weight_all).backward()),
        lambda: ghmr_ours(pd_all, td_all, pos_all).backward(),
        agree=(torch.allclose(mm.GHMR(mu=0.02, bins=10, loss_weight=10.0)(
                   pd_all, td_all, weight_all),
                   GHMR(mu=0.02, bins=10, momentum=0.0)(pd_all, td_all, pos_all), rtol=1e-4)
               if mm else None),
        note=f"{2 * M} anchors, {n_anchor_pos} positive, 10 bins (the heads' call)")
    steps.update()

    # 10. DW weights: the authors' per-GT loop (no mmdet needed)
    _, _, logits_d, obj, ltrb, gts = dense_predictions(args, device)
    with torch.no_grad():
        scores = logits_d.sigmoid() * obj.sigmoid()
        boxes_d = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)
        dw_args = (points, strides, scores, boxes_d, gts, C)
        loop_ms = t(lambda: dw_weights_per_gt_loop(*dw_args))
        grid = dense_grid(args, device)
        ours_ms = t(lambda: dw_weights_library(*dw_args, grid=grid))
    rows.append(dict(name="DW weights vs the authors' per-GT loop (2 img)", peer=loop_ms,
                     ours=ours_ms, agree=None, shared=None,
                     note=f"{points.shape[0]} points, {args.num_gt} GTs per image; agreement "
                          "checked in bench_dense.py"))
    steps.close()
    return rows


def fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(rows: List[Dict]) -> str:
    lines = ["| op | peer ms | ours ms | peer / ours | shared ms | peer / ours without it "
             "| agree | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["peer"] is None else f"{r['peer'] / r['ours']:.2f}x"
        own = "-"
        if r["peer"] is not None and r["shared"] is not None:
            # the methods' own parts; the subtraction is noisy when the shared part dominates
            mine = r["ours"] - r["shared"]
            own = f"{(r['peer'] - r['shared']) / mine:.2f}x" if mine > 0 else "-"
        agree = "-" if r["agree"] is None else ("yes" if r["agree"] else "NO")
        lines.append(f"| {r['name']} | {fmt(r['peer'])} | {fmt(r['ours'])} | {ratio} "
                     f"| {fmt(r['shared'])} | {own} | {agree} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller images and proposals")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="default 10 (--quick: 3)")
    parser.add_argument("--mmdet-wheel", help="a local mmdet-3.3.0 wheel instead of pip download")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.size = (400, 667) if args.quick else (800, 1333)
    args.num_proposals = 500 if args.quick else 2000
    args.num_gt, args.num_classes = 15, 80
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mm = load_mmdet(args.mmdet_wheel, tmp)
            peer_line = f"peer: {MMDET} (pure-torch files of the wheel, loaded without mmcv)"
        except Exception as e:  # noqa: BLE001  (no network, another layout, ...): say so, go on
            mm = None
            peer_line = (f"peer: {MMDET} could NOT be loaded ({type(e).__name__}: "
                         f"{str(e).strip()[:200]}); its rows are skipped (peer '-')")
            print(peer_line, file=sys.stderr)
        torch.manual_seed(0)
        rows = bench(args, device, mm)
    out = (f"{machine(device)}; {load_at_start()}; {'--quick' if args.quick else 'full'} "
           f"workload, median of {args.repeats}\n{peer_line}\n\n{table(rows)}")
    print(out)
    return out


if __name__ == "__main__":
    main()
