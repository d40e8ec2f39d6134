#!/usr/bin/env python
"""Speed and memory of the dense detectors' balanced-learning parts; prints a Markdown table.

Workload: 2 images of 800 x 1333 (padded to 800 x 1344), P3-P7 (2 x 22 400 points,
2 x 201 600 RetinaNet anchors), 15 GTs per image (COCO-like sizes: sqrt(area) log-uniform in
16-512 px, aspect ratio 1/2-2), 80 classes, R50-FPN models of the COCO configs (random
initialisation: timings do not depend on the weights).

Rows:

1. DW weighting (bags, centre prior, IoU/GIoU, positive and negative weights; no grad) of the
   batch: the library's ``balanced_det.ops.dw.dw_image_weights`` (the computation
   ``dw_image_terms`` runs in ``DWFCOS``: the (point, GT) pairs of the candidate bags from the
   point grid's cell ranges, per-GT sums / min / max by ``index_add_`` / ``scatter_reduce``,
   no GT loop; also timed with the pairs from a (G, P) inside test and ``nonzero``) against
   per-GT Python loops written here: the loop form of the same maths (one (P,)-column per GT,
   negative weights normalised on the GT's bag with boolean indexing as the reference,
   strongwolf/DW) -- target >= 5x faster -- and a loop that first compacts each GT's bag
   (``nonzero``) and computes on those points only. Also the dense (P, G) form built from the
   dense reference forms of tests/ops/dw_dense_reference.py (``dw_candidate_bag``, ``dw_center_prior``, ...; what
   ``dw_image_terms`` computed before the bag-pair version), for comparison.
2. The DW loss of the batch, forward + backward: the library (``dw_image_terms`` +
   ``dw_losses``, as ``DWFCOS.losses``) against the same per-GT loop with autograd (information
   only: both contain the negative term over all P x C scores).
3. A DW-FCOS training step (forward, backward, SGD step; refinement off) against our FCOS
   training step, same backbone and input. Target: time <= 1.15x.
4. Peak memory of those two steps. Target: <= 1.2x. CUDA: ``torch.cuda.max_memory_allocated``
   after ``reset_peak_memory_stats``. CPU: each model runs in a fresh subprocess: one warm-up
   step; then, per measured step, ``malloc_trim(0)`` (freed memory back to the OS), a reset of
   the kernel's peak-RSS mark (``/proc/self/clear_refs``), and the peak RSS (``VmHWM``) of the
   step minus the RSS just before it: the step's own working memory as the OS sees it (model,
   optimizer state and inputs excluded); minimum over 3 steps (1 with --quick).
5. GHM-C + GHM-R (forward + backward, one call each over all levels) on the tensors of a
   RetinaNet step, against a full GHM RetinaNet training step. Target: <= 5 %.
6. USW's weighting network over every anchor of a RetinaNet batch, forward + backward: the
   non-CE branches on the positives only (``SampleWeightingNet.forward(features, fg_inds)``)
   against all four branches on every anchor (the same function).
7. FL* RetinaNet, noisy-anchor RetinaNet and USW RetinaNet training steps against the
   RetinaNet step (same input and weights): the method's whole cost. Target: <= 1.10x.

    python benchmarks/bench_dense.py                   # full workload, CPU (minutes)
    python benchmarks/bench_dense.py --quick           # 320 x 544 inputs, 1 repeat (a check)
    python benchmarks/bench_dense.py --device cuda --amp

Timings: median over ``--repeats`` runs after one warm-up run; CUDA is synchronised around each
run. ``--amp``: bf16 autocast on the CPU, fp16 on CUDA, for the model forward passes (loss
maths runs in float32 inside the models whatever the setting).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Dict, List

import torch

from common import ROOT, load_at_start, machine, sync, timeit  # first: balanced_det from projects/
import balanced_det  # noqa: E402,F401
from balanced_det.config import load_config  # noqa: E402
from balanced_det.data.synthetic import coco_like_gt_boxes  # noqa: E402
from balanced_det.ops import GHMC, GHMR  # noqa: E402
from balanced_det.ops.dw import dw_image_weights  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "ops"))
from dw_dense_reference import (  # noqa: E402  (the dense (P, G) reference forms)
    dw_candidate_bag,
    dw_center_prior,
    dw_negative_weights,
    dw_pairwise_iou_giou,
    dw_positive_weights,
)
from balanced_det.ops.points import grid_points, point_grid  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

STRIDES = [8, 16, 32, 64, 128]
EPS = 1e-12


# ----------------------------------------------------------------------------- workload
def image_size(args):
    return (320, 544) if args.quick else (800, 1333)


def padded(size, div=32):
    return tuple(-(-s // div) * div for s in size)


def make_gts(size, num_gt, num_classes, seed):
    return coco_like_gt_boxes(size, num_gt, num_classes, torch.Generator().manual_seed(seed))


def make_inputs(args, device, num_images=2):
    size = image_size(args)
    out = []
    for i in range(num_images):
        boxes, classes = make_gts(size, args.num_gt, args.num_classes, seed=i)
        inst = Instances(size)
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = classes
        g = torch.Generator().manual_seed(100 + i)
        img = torch.rand(3, *size, generator=g) * 255
        out.append({"image": img.to(device), "instances": inst.to(device),
                    "height": size[0], "width": size[1]})
    return out


def level_sizes(args):
    """(h, w) of P3-P7 on the padded input."""
    h, w = padded(image_size(args))
    return [(-(-h // s), -(-w // s)) for s in STRIDES]


def dense_grid(args, device):
    """The :class:`PointGrid` of :func:`dense_predictions`' points (what ``DWFCOS`` passes to
    ``dw_image_terms``)."""
    return point_grid(level_sizes(args), STRIDES, device=device)


def dense_predictions(args, device):
    """Points of the padded input, joint scores (with grad) and predicted boxes per image."""
    h, w = padded(image_size(args))
    points, strides, _ = grid_points(level_sizes(args), STRIDES, device=device)
    g = torch.Generator().manual_seed(0)
    R, C = points.shape[0], args.num_classes
    logits = (torch.randn(2, R, C, generator=g) * 2 - 3).to(device)
    obj = torch.randn(2, R, 1, generator=g).to(device)
    ltrb = ((torch.rand(2, R, 4, generator=g) * 4 + 0.5).to(device) * strides[None, :, None])
    gts = [make_gts((h, w), args.num_gt, C, seed=i) for i in range(2)]
    gts = [(b.to(device), c.to(device)) for b, c in gts]
    return points, strides, logits, obj, ltrb, gts


# ----------------------------------------------------------------------------- DW weighting
def dw_weights_library(points, strides, scores, boxes, gts, num_classes, grid=None):
    """All DW weights of the batch, as the library computes them (``dw_image_weights``: bag pairs
    only, what ``dw_image_terms`` runs before its loss sums; with ``grid``, as ``DWFCOS`` runs
    it: the pairs from the cells' index ranges)."""
    return [dw_image_weights(s, b, points, strides, gb, gl, grid=grid) for s, b, (gb, gl)
            in zip(scores, boxes, gts)]


def dw_weights_dense(points, strides, scores, boxes, gts, num_classes):
    """All DW weights of the batch with the module's dense (P, G) functions (the previous
    ``dw_image_terms``)."""
    out = []
    for s, b, (gb, gl) in zip(scores, boxes, gts):
        bag = dw_candidate_bag(points, gb)
        prior = dw_center_prior(points, strides, gb, gl, 1.11, bag)
        iou, giou = dw_pairwise_iou_giou(b, gb)
        w_pos = dw_positive_weights(s[:, gl], torch.exp(-5 * giou), prior, bag)
        p_neg = dw_negative_weights(iou, bag, gl, num_classes)
        out.append((w_pos, p_neg))
    return out


def _giou_one(b, g):
    """IoU, GIoU loss of boxes (K, 4) with one box (4,)."""
    lt = torch.maximum(b[:, :2], g[:2])
    rb = torch.minimum(b[:, 2:], g[2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    area_g = (g[2] - g[0]) * (g[3] - g[1])
    union = (area_b + area_g - inter).clamp(min=1e-6)
    iou = inter / union
    elt = torch.minimum(b[:, :2], g[:2])
    erb = torch.maximum(b[:, 2:], g[2:])
    ewh = (erb - elt).clamp(min=0)
    enc = (ewh[:, 0] * ewh[:, 1]).clamp(min=1e-6)
    return iou, 1 - iou + (enc - union) / enc


def dw_weights_per_gt_loop(points, strides, scores, boxes, gts, num_classes, grad=False):
    """The same weights computed GT by GT (Python loop), as a straightforward implementation
    or the reference's negative-weight loop would. With ``grad`` also the loss terms."""
    out = []
    loss = 0.0
    for s, b, (gb, gl) in zip(scores, boxes, gts):
        p_neg = torch.ones(points.shape[0], num_classes, device=points.device)
        w_all = []
        for j in range(gb.shape[0]):
            g, c = gb[j], int(gl[j])
            inside = ((points[:, 0] > g[0]) & (points[:, 0] < g[2]) & (points[:, 1] > g[1])
                      & (points[:, 1] < g[3]))
            if not bool(inside.any()):
                w_all.append(None)
                continue
            idx = inside.nonzero()[:, 0]
            d = (points[idx] - (g[:2] + g[2:]) / 2) / strides[idx, None]
            prior = torch.exp(-(d * d) / (2 * 1.11 ** 2)).prod(1)
            iou, giou = _giou_one(b[idx], g)
            p_loc = torch.exp(-5 * giou)
            p_cls = s[idx, c]
            v = (p_cls * p_loc).detach()
            w = torch.exp(5 * v) * v * prior / (torch.exp(3 * v) * v * prior).sum().clamp(min=EPS)
            iou = iou.detach()
            t = (4.0 / 3.0) * (1 - iou * iou)
            y = (t - t.min() + EPS) / (t.max().clamp(max=1.0) - t.min() + EPS)
            y = torch.where(iou < 0.5, torch.ones_like(y), y)
            p_neg[idx, c] = torch.minimum(p_neg[idx, c], y)
            w_all.append(w)
            if grad:
                loss = loss + 0.25 * (w * (-torch.log(p_cls.clamp(min=EPS))
                                           - torch.log(p_loc.clamp(min=EPS)))).sum()
        if grad:
            loss = loss + (p_neg * s * s * -torch.log((1 - s).clamp(min=EPS))).sum()
        out.append((w_all, p_neg))
    return loss if grad else out


def dw_weights_per_gt_columns(points, strides, scores, boxes, gts, num_classes):
    """The loop form of the dense (P, G) maths: one GT per iteration over all points (a column of
    the (P, G) matrices), masks instead of compaction; the negative-weight normalisation on the
    GT's bag with boolean indexing, as the reference's loop."""
    out = []
    for s, b, (gb, gl) in zip(scores, boxes, gts):
        p_neg = torch.ones(points.shape[0], num_classes, device=points.device)
        w_all = []
        for j in range(gb.shape[0]):
            g, c = gb[j], int(gl[j])
            inside = ((points[:, 0] > g[0]) & (points[:, 0] < g[2]) & (points[:, 1] > g[1])
                      & (points[:, 1] < g[3]))
            d = (points - (g[:2] + g[2:]) / 2) / strides[:, None]
            prior = torch.where(inside, torch.exp(-(d * d) / (2 * 1.11 ** 2)).prod(1),
                                torch.zeros_like(d[:, 0]))
            iou, giou = _giou_one(b, g)
            v = s[:, c] * torch.exp(-5 * giou)
            w = torch.exp(5 * v) * v * prior / (torch.exp(3 * v) * v * prior).sum().clamp(min=EPS)
            w_all.append(w)
            if bool(inside.any()):
                t = (4.0 / 3.0) * (1 - iou[inside] ** 2)
                y = (t - t.min() + EPS) / (t.max().clamp(max=1.0) - t.min() + EPS)
                y[iou[inside] < 0.5] = 1
                p_neg[inside, c] = torch.minimum(p_neg[inside, c], y)
        out.append((w_all, p_neg))
    return out


def bench_dw(args, device) -> List[Dict]:
    from balanced_det.modeling.meta_arch.dw_fcos import DWFCOS  # noqa: F401
    from balanced_det.ops.dw import dw_image_terms, dw_losses

    points, strides, logits, obj, ltrb, gts = dense_predictions(args, device)
    C = args.num_classes
    with torch.no_grad():
        scores = logits.sigmoid() * obj.sigmoid()
        boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)
    grid = dense_grid(args, device)
    # sanity: every version gives the same weights
    a = dw_weights_library(points, strides, scores, boxes, gts, C, grid)
    for wa, wm in zip(a, dw_weights_library(points, strides, scores, boxes, gts, C)):
        assert all(torch.equal(u, v) if torch.is_tensor(u) else u == v
                   for u, v in zip(wa, wm)), "grid pairs differ from the mask's"
    b = dw_weights_per_gt_loop(points, strides, scores, boxes, gts, C)
    d = dw_weights_dense(points, strides, scores, boxes, gts, C)
    e = dw_weights_per_gt_columns(points, strides, scores, boxes, gts, C)
    for wa, (wb, pb), (wd, pd), (we, pe) in zip(a, b, d, e):
        for other in (pb, pd, pe):
            assert torch.allclose(wa.dense_neg(), other, atol=1e-5), "negative weights differ"
        # library pairs are GT-major, points ascending: the loop's per-GT bag vectors in order
        assert torch.allclose(wa.pos, torch.cat([w for w in wb if w is not None]),
                              rtol=1e-4, atol=1e-6), "positive weights differ (loop)"
        assert torch.allclose(wa.pos, wd[wa.point_idx, wa.gt_idx], rtol=1e-4, atol=1e-6)
        assert torch.allclose(wa.pos, torch.stack(we, 1)[wa.point_idx, wa.gt_idx],
                              rtol=1e-4, atol=1e-6)
        assert int((wd > 0).sum()) <= wa.pos.numel()

    def ours():
        with torch.no_grad():
            dw_weights_library(points, strides, scores, boxes, gts, C, grid)

    def ours_mask():
        with torch.no_grad():
            dw_weights_library(points, strides, scores, boxes, gts, C)

    def dense():
        with torch.no_grad():
            dw_weights_dense(points, strides, scores, boxes, gts, C)

    def loop():
        with torch.no_grad():
            dw_weights_per_gt_loop(points, strides, scores, boxes, gts, C)

    def columns():
        with torch.no_grad():
            dw_weights_per_gt_columns(points, strides, scores, boxes, gts, C)

    t_ours = timeit(ours, device, args.repeats)
    t_mask = timeit(ours_mask, device, args.repeats)
    t_loop = timeit(loop, device, args.repeats)
    t_dense = timeit(dense, device, args.repeats)
    t_cols = timeit(columns, device, args.repeats)

    lg = logits.clone().requires_grad_()
    lt = ltrb.clone().requires_grad_()

    def vec_loss():
        s = lg.sigmoid() * obj.sigmoid()
        bx = torch.cat([points - lt[..., :2], points + lt[..., 2:]], -1)
        terms = [dw_image_terms(s[i], bx[i], points, strides, gb, gl, grid=grid)
                 for i, (gb, gl) in enumerate(gts)]
        sum(dw_losses(terms).values()).backward()

    def loop_loss():
        s = lg.sigmoid() * obj.sigmoid()
        bx = torch.cat([points - lt[..., :2], points + lt[..., 2:]], -1)
        dw_weights_per_gt_loop(points, strides, s, bx, gts, C, grad=True).backward()

    t_vl = timeit(vec_loss, device, args.repeats)
    t_ll = timeit(loop_loss, device, args.repeats)
    P = points.shape[0]
    pairs = sum(w.pos.numel() for w in a)
    return [
        dict(name=f"DW weights, 2 x {P} points x {args.num_gt} GTs ({pairs} bag pairs), {C} "
             "classes (no grad): ops.dw.dw_image_weights",
             ours=t_ours, ref=t_cols, ref_name="per-GT loop over all points", kind="speedup",
             target=5.0),
        dict(name="DW weights (same)", ours=t_ours, ref=t_loop,
             ref_name="per-GT loop over bag points", kind="speedup", target=None),
        dict(name="DW weights (same), bag pairs from the cells' index ranges (grid) vs a "
             "(G, P) inside test and nonzero", ours=t_ours, ref=t_mask,
             ref_name="(G, P) inside test", kind="speedup", target=None),
        dict(name="DW weights: dense (P, G) form (dense reference forms of tests/ops/dw_dense_reference.py; the previous "
             "dw_image_terms), for comparison", ours=t_dense, ref=t_cols,
             ref_name="per-GT loop over all points", kind="speedup", target=None),
        dict(name="DW loss forward + backward: ops.dw.dw_image_terms + dw_losses", ours=t_vl,
             ref=t_ll, ref_name="per-GT loop over bag points", kind="speedup", target=None),
    ]


# ----------------------------------------------------------------------------- model steps
CONFIGS = {
    "fcos": "configs/COCO-Detection/fcos_R_50_FPN_1x.py",
    "dw_fcos": "configs/COCO-Detection/dw_fcos_R_50_FPN_1x.py",
    "ghm_retinanet": "configs/COCO-Detection/ghm_retinanet_R_50_FPN_1x.py",
    "retinanet": "configs/COCO-Detection/retinanet_R_50_FPN_1x.py",
    "fl_star_retinanet": "configs/COCO-Detection/fl_star_retinanet_R_50_FPN_1x.py",
    "noisy_anchor_retinanet": "configs/COCO-Detection/noisy_anchor_retinanet_R_50_FPN_1x.py",
    "usw_retinanet": "configs/COCO-Detection/usw_retinanet_R_50_FPN_1x.py",
}
# RetinaNet-family methods timed as whole training steps against the RetinaNet step
RETINANET_METHODS = {"fl_star_retinanet": "FL* RetinaNet (classification loss)",
                     "noisy_anchor_retinanet": "Noisy-anchor RetinaNet (assignment, soft-target "
                                               "focal loss, re-weighting)",
                     "usw_retinanet": "USW RetinaNet (weighting net over every anchor; SGD "
                                      "here for all parameters)"}


def build(name, device):
    cfg = load_config(os.path.join(ROOT, CONFIGS[name]))
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6,
                          momentum=0.9)
    return model, opt


def autocast(args, device):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=args.amp)


def step_fn(model, opt, inputs, args, device):
    def step():
        with EventStorage(0):
            with autocast(args, device):
                losses = model(inputs)
            sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(args):
    """Subprocess: peak RSS growth of one model's training steps (CPU)."""
    device = torch.device("cpu")
    model, opt = build(args.memory_worker, device)
    inputs = make_inputs(args, device)
    step = step_fn(model, opt, inputs, args, device)
    step()  # warm-up: one-off allocations (optimizer state, kernel caches) are not the step's
    deltas = []
    for _ in range(1 if args.quick else 3):  # the minimum over steps: allocator noise is +
        try:  # give the memory freed so far back to the OS, so the step re-faults it
            import ctypes
            import gc

            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        reset = reset_peak_rss()
        before = _status_kib("VmRSS") * 1024
        step()
        if reset:
            peak = _status_kib("VmHWM") * 1024
        else:  # no reset possible: the process-lifetime peak
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        deltas.append(peak - before)
    print(json.dumps({"peak_delta": min(deltas), "peak_reset": reset}))


def peak_memory(name, args, device, step) -> float:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", name,
           "--num-gt", str(args.num_gt), "--num-classes", str(args.num_classes)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--amp"] if args.amp else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_delta"])


def bench_steps(args, device) -> List[Dict]:
    inputs = make_inputs(args, device)
    fcos, opt_f = build("fcos", device)
    dw, opt_d = build("dw_fcos", device)
    # same backbone and towers (the heads differ only in their output biases)
    dw.load_state_dict(fcos.state_dict(), strict=False)
    step_f = step_fn(fcos, opt_f, inputs, args, device)
    step_d = step_fn(dw, opt_d, inputs, args, device)
    t_f = timeit(step_f, device, args.repeats)
    t_d = timeit(step_d, device, args.repeats)
    m_f = peak_memory("fcos", args, device, step_f)
    m_d = peak_memory("dw_fcos", args, device, step_d)
    del fcos, dw, opt_f, opt_d
    return [
        dict(name="DW-FCOS training step (no refinement) vs FCOS step, time", ours=t_d, ref=t_f,
             ref_name="FCOS step", kind="ratio", target=1.15),
        dict(name="DW-FCOS training step vs FCOS step, peak memory", ours=m_d, ref=m_f,
             ref_name="FCOS step", kind="mem_ratio", target=1.2),
    ]


def bench_ghm(args, device) -> List[Dict]:
    inputs = make_inputs(args, device)
    model, opt = build("ghm_retinanet", device)
    t_step = timeit(step_fn(model, opt, inputs, args, device), device, args.repeats)
    # the GHM losses alone, on the same tensors the step builds
    with torch.no_grad(), EventStorage(0):
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        anchors = model.anchor_generator(feats)
        labels, _, _ = model.label_anchors_with_indices(anchors, [x["instances"] for x in inputs])
    labels = torch.stack(labels)
    C = args.num_classes
    valid = labels >= 0
    pos = valid & (labels < C)
    targets = torch.nn.functional.one_hot(torch.where(valid, labels, C), C + 1)[..., :C].float()
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(targets.shape, generator=g) * 2 - 4).to(device).requires_grad_()
    deltas = (torch.randn(*labels.shape, 4, generator=g) * 0.3).to(device).requires_grad_()
    tgt_deltas = torch.randn(*labels.shape, 4, generator=g).to(device) * 0.3
    ghmc, ghmr = GHMC().to(device).train(), GHMR().to(device).train()

    def ghm():
        loss = ghmc(logits.reshape(-1, C), targets.reshape(-1, C), valid.reshape(-1, 1))
        loss = loss + ghmr(deltas.reshape(-1, 4), tgt_deltas.reshape(-1, 4), pos.reshape(-1))
        loss.backward()

    t_ghm = timeit(ghm, device, args.repeats)
    n = labels.numel()
    return [dict(name=f"GHM-C + GHM-R fwd+bwd ({n} anchors x {C} classes) vs GHM RetinaNet step",
                 ours=t_ghm, ref=t_step, ref_name="RetinaNet step", kind="fraction",
                 target=0.05)]


def bench_retinanet_methods(args, device) -> List[Dict]:
    """Each method's RetinaNet step against the RetinaNet step on the same input, same
    backbone and head weights: the method's cost as (ratio - 1) of the host's step."""
    inputs = make_inputs(args, device)
    base, opt_b = build("retinanet", device)
    t_base = timeit(step_fn(base, opt_b, inputs, args, device), device, args.repeats)
    rows = []
    for name, desc in RETINANET_METHODS.items():
        model, opt = build(name, device)
        model.load_state_dict(base.state_dict(), strict=False)
        t = timeit(step_fn(model, opt, inputs, args, device), device, args.repeats)
        rows.append(dict(name=f"{desc} training step vs RetinaNet step, time", ours=t,
                         ref=t_base, ref_name="RetinaNet step", kind="ratio", target=1.10))
        del model, opt
    return rows


def bench_usw_net(args, device) -> List[Dict]:
    """USW's weighting network over every RetinaNet anchor of the batch (2 images, 9 anchors
    per location on P3-P7, 300 positives per image), forward + backward: the forward that
    runs the non-CE branches on the positives only against the concatenating forward."""
    from balanced_det.modeling.usw import SampleWeightingNet
    from balanced_det.ops import usw_features

    h, w = padded(image_size(args))
    R = 2 * 9 * sum(-(-h // s) * -(-w // s) for s in STRIDES)
    P = 600
    g = torch.Generator().manual_seed(0)
    net = SampleWeightingNet().to(device)
    fg_inds = torch.randperm(R, generator=g)[:P].to(device)
    feats = usw_features(R, fg_inds, torch.rand(P, generator=g).to(device),
                         torch.rand(P, generator=g).to(device),
                         torch.rand(R, generator=g).to(device),
                         torch.rand(P, 4, generator=g).to(device))

    def step(idx):
        def run():
            net.zero_grad(set_to_none=True)
            (net(feats) if idx is None else net(feats, idx)).sum().backward()
        return run

    t_all = timeit(step(None), device, args.repeats)
    t_pos = timeit(step(fg_inds), device, args.repeats)
    return [dict(name=f"USW weighting net fwd+bwd over {R} anchors ({P} positives): non-CE "
                      f"branches on the positives only", ours=t_pos, ref=t_all,
                 ref_name="all four branches on every anchor", kind="speedup", target=None)]


# ----------------------------------------------------------------------------- report
def fmt_value(v, kind):
    if kind == "mem_ratio":
        return f"{v / 2 ** 20:.0f} MiB"
    return f"{v * 1e3:.1f} ms" if v < 10 else f"{v:.2f} s"


def row(r):
    ours, ref, kind, target = r["ours"], r["ref"], r["kind"], r["target"]
    if kind == "speedup":
        value = ref / ours
        shown, goal, ok = f"{value:.1f}x faster", (f">= {target:g}x" if target else "-"), (
            value >= target if target else None)
    elif kind in ("ratio", "mem_ratio"):
        value = ours / ref
        shown, goal, ok = f"{value:.2f}x", f"<= {target:g}x", value <= target
    else:
        value = ours / ref
        shown, goal, ok = f"{100 * value:.1f} %", f"<= {100 * target:g} %", value <= target
    verdict = "-" if ok is None else ("yes" if ok else "NO")
    return (f"| {r['name']} | {fmt_value(ours, kind)} | {r['ref_name']}: {fmt_value(ref, kind)} "
            f"| {shown} | {goal} | {verdict} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--amp", action="store_true", help="bf16 (CPU) / fp16 (CUDA) autocast")
    p.add_argument("--quick", action="store_true", help="320 x 544 inputs, 1 repeat")
    p.add_argument("--num-gt", type=int, default=15)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--only", choices=["dw", "steps", "ghm", "usw_net", "retinanet_methods"],
                   action="append")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        return memory_worker(args)
    if args.quick:
        args.repeats = 1
    device = torch.device(args.device)
    h, w = image_size(args)
    print(f"# bench_dense: 2 images {h}x{w}, {args.num_gt} GTs/image, {args.num_classes} classes,"
          f" R50-FPN P3-P7, device {device} ({machine(device)}), amp={args.amp}, "
          f"median of {args.repeats} after 1 warm-up; {load_at_start()}\n", flush=True)
    rows = []
    only = set(args.only or ["dw", "steps", "ghm", "usw_net", "retinanet_methods"])
    if "dw" in only:
        rows += bench_dw(args, device)
    if "steps" in only:
        rows += bench_steps(args, device)
    if "ghm" in only:
        rows += bench_ghm(args, device)
    if "usw_net" in only:
        rows += bench_usw_net(args, device)
    if "retinanet_methods" in only:
        rows += bench_retinanet_methods(args, device)
    print("| benchmark | ours | reference | result | target | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(row(r))
    if device.type == "cpu":
        print("\nCPU peak memory: fresh subprocess per model, after a warm-up step and "
              "malloc_trim: peak RSS (VmHWM, reset before the step) of a training step minus the "
              "RSS before it (minimum over 3 steps; 1 with --quick).")


if __name__ == "__main__":
    main()
