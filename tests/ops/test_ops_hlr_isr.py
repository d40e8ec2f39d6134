"""balanced_det.ops.hlr / ops.isr: hierarchical local ranks, ISR-P and ISR-N
(docs/methods/pisa.md)."""
import pytest
import torch

from balanced_det.ops.hlr import hierarchical_rank, iou_hlr_rank, local_rank, nms_cluster_local_rank
from balanced_det.ops.isr import (
    isr_n_select,
    isr_p_weights,
    isr_weights,
    renormalize_to_loss,
    unique_gt_ids_from_pairs,
)

# Crafted batch: 2 classes, 3 GTs, 8 positives.
#   idx : 0    1    2    3    4    5    6    7
#   gt  : 0    1    0    2    0    1    2    2
#   cls : 0    0    0    1    0    0    1    1
#   iou : .9   .8   .6   .95  .7   .5   .3   .4
# IoU-LR  (per GT, IoU desc): gt0: 0->0, 4->1, 2->2; gt1: 1->0, 5->1; gt2: 3->0, 7->1, 6->2
#   LR  = [0, 0, 2, 0, 1, 1, 2, 1]
# IoU-HLR (per class, (LR asc, IoU desc)):
#   class 0: LR0 {0 (.9), 1 (.8)} -> 0, 1; LR1 {4 (.7), 5 (.5)} -> 2, 3; LR2 {2 (.6)} -> 4
#   class 1: 3 -> 0, 7 -> 1, 6 -> 2
#   HLR = [0, 1, 4, 0, 2, 3, 2, 1]    (idx 2 has a higher IoU than idx 5 but ranks after it)
# n_max = 5 (class 0 has 5 positives); u = (5 - r)/5 = [1, .8, .2, 1, .6, .4, .6, .8]
GT = torch.tensor([0, 1, 0, 2, 0, 1, 2, 2])
CLS = torch.tensor([0, 0, 0, 1, 0, 0, 1, 1])
IOU = torch.tensor([0.9, 0.8, 0.6, 0.95, 0.7, 0.5, 0.3, 0.4])
LR = [0, 0, 2, 0, 1, 1, 2, 1]
HLR = [0, 1, 4, 0, 2, 3, 2, 1]
U = torch.tensor([1.0, 0.8, 0.2, 1.0, 0.6, 0.4, 0.6, 0.8])


def test_local_rank_crafted_and_stable_ties():
    assert local_rank(IOU, GT).tolist() == LR
    # ties broken by index: values [1, 2, 2, 1, 2] in one group -> order 1, 2, 4, 0, 3
    v = torch.tensor([1.0, 2.0, 2.0, 1.0, 2.0])
    assert local_rank(v, torch.zeros(5, dtype=torch.long)).tolist() == [3, 0, 1, 4, 2]
    # arbitrary (negative, non-contiguous) group ids
    # group -5: idx 2 (2), 4 (2), 0 (1); group 7: idx 1 (2), 3 (1)
    assert local_rank(v, torch.tensor([-5, 7, -5, 7, -5])).tolist() == [2, 0, 0, 1, 1]


def test_local_rank_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    vals = torch.randint(0, 5, (200,), generator=g).float()
    groups = torch.randint(0, 7, (200,), generator=g)
    got = local_rank(vals, groups)
    for i in range(200):
        same = groups == groups[i]
        better = (vals > vals[i]) | ((vals == vals[i]) & (torch.arange(200) < i))
        assert got[i].item() == int((same & better).sum())


def test_iou_hlr_crafted():
    assert iou_hlr_rank(IOU, GT, CLS).tolist() == HLR
    assert hierarchical_rank(torch.tensor(LR), IOU, CLS).tolist() == HLR
    # one group (Score-HLR): LR0 by value .95 .9 .8, then LR1 .7 .5 .4, then LR2 .6 .3
    assert hierarchical_rank(torch.tensor(LR), IOU).tolist() == [1, 2, 6, 0, 3, 4, 7, 5]


def test_isr_weights_hand_values():
    r = torch.tensor(HLR)
    assert torch.allclose(isr_weights(r, 5, gamma=2.0, beta=0.0), U**2)
    assert torch.allclose(isr_weights(r, torch.tensor(5), gamma=1.0, beta=0.5), 0.5 * U + 0.5)
    # better rank -> higher weight
    w = isr_weights(torch.arange(6), 6, 2.0, 0.0)
    assert (w[:-1] > w[1:]).all()


def test_renormalize_to_loss():
    w = U**2
    ce = torch.tensor([0.1, 0.5, 2.0, 0.3, 0.7, 1.1, 0.2, 0.9], requires_grad=True)
    w2 = renormalize_to_loss(w, ce)
    assert w2.dtype == torch.float32 and not w2.requires_grad
    assert torch.allclose((w2 * ce).sum(), ce.sum())
    assert torch.allclose(w2 / w, torch.full_like(w, (ce.sum() / (w * ce).sum()).item()))
    # zero-sum and zero-length: unchanged
    assert torch.equal(renormalize_to_loss(w, torch.zeros(8)), w)
    assert renormalize_to_loss(torch.zeros(0), torch.zeros(0)).shape == (0,)
    # per-class (sigmoid) losses are summed per sample
    ce2 = torch.rand(8, 3)
    assert torch.allclose((renormalize_to_loss(w, ce2)[:, None] * ce2).sum(), ce2.sum())


def test_isr_p_weights():
    ce = torch.tensor([0.1, 0.5, 2.0, 0.3, 0.7, 1.1, 0.2, 0.9])
    w = isr_p_weights(IOU, GT, CLS, ce)  # gamma 2, beta 0
    raw = U**2  # [1, .64, .04, 1, .36, .16, .36, .64]
    assert torch.allclose(w, raw * ce.sum() / (raw * ce).sum())
    assert torch.allclose((w * ce).sum(), ce.sum())
    # within a class, better HLR rank -> higher weight
    for c in (0, 1):
        idx = (CLS == c).nonzero().flatten()
        order = idx[torch.tensor(HLR)[idx].argsort()]
        assert (w[order][:-1] > w[order][1:]).all()
    # zero positives
    none = torch.zeros(0, dtype=torch.long)
    e = isr_p_weights(torch.zeros(0), none, none, torch.zeros(0))
    assert e.shape == (0,) and e.dtype == torch.float32


def test_isr_p_bfloat16():
    ce = torch.rand(8).bfloat16()
    w = isr_p_weights(IOU.bfloat16(), GT, CLS, ce)
    assert w.dtype == torch.float32 and torch.isfinite(w).all()


def test_unique_gt_ids_are_cumulative_over_images():
    # GT counts 2, 1, 2: offsets 0, 2, 3; mmdet's non-cumulative offset would give image 2 offset 1 -> ids 2, 1 colliding with image 0
    assert unique_gt_ids_from_pairs(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0]),
                                    [2, 1, 2]).tolist() == [0, 1, 2, 4, 3]


# ---- ISR-N -------------------------------------------------------------------------------------
# boxes (score = max fg prob):
#  0 [0,0,10,10]     .9  leader A
#  1 [1,0,11,10]     .8  IoU(0) = 90/110 = .82 -> cluster A, LR 1
#  2 [50,50,60,60]   .7  leader B
#  3 [0,1,10,11]     .6  IoU(0) = .82 -> cluster A, LR 2
#  4 [51,50,61,60]   .3  cluster B, LR 1
#  5 [100,100,110,110] .04 invalid (<= .05)
#  6 [200,200,210,210] .02 invalid
# Score-HLR: LR0: 0 (.9), 2 (.7); LR1: 1 (.8), 4 (.3); LR2: 3 -> order 0, 2, 1, 4, 3
BOXES = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 1, 10, 11],
                      [51, 50, 61, 60], [100, 100, 110, 110], [200, 200, 210, 210]],
                     dtype=torch.float)
S = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3, 0.04, 0.02])
PROBS = torch.stack([S, torch.full_like(S, 0.01)], dim=1)  # (N, C=2) fg probs


def test_box_iou_matrix_equals_torchvision_bitwise_and_loop_values():
    from torchvision.ops import box_iou

    from balanced_det.ops.boxes import box_iou_matrix

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 100
    wh = torch.rand(60, 2, generator=g) * 40
    wh[:5, 0] = 0.0  # zero-width boxes: IoU 0 with the others, not NaN
    boxes = torch.cat([xy, xy + wh], 1)
    a, b = boxes[:25], torch.cat([boxes[25:], boxes[5:9]])  # 4 identical pairs: IoU exactly 1
    got = box_iou_matrix(a, b)
    assert got.shape == (25, 39) and torch.equal(got, box_iou(a, b))
    for i, j in [(5, 35), (6, 36), (0, 3), (12, 20)]:
        x1, y1 = max(a[i, 0], b[j, 0]), max(a[i, 1], b[j, 1])
        x2, y2 = min(a[i, 2], b[j, 2]), min(a[i, 3], b[j, 3])
        inter = max(float(x2 - x1), 0.0) * max(float(y2 - y1), 0.0)
        area = lambda r: float((r[2] - r[0]) * (r[3] - r[1]))  # noqa: E731
        assert abs(got[i, j].item() - inter / (area(a[i]) + area(b[j]) - inter)) < 1e-6
    assert got[5, 35] == 1.0 and got[:5][got[:5] > 0].numel() == 0
    assert box_iou_matrix(a[:0], b).shape == (0, 39)


def test_nms_cluster_local_rank():
    lr, leader = nms_cluster_local_rank(BOXES, S)
    assert leader.tolist() == [0, 0, 2, 0, 2, 5, 6]
    assert lr.tolist() == [0, 1, 0, 2, 1, 0, 0]
    # IoU exactly 0.5 clusters (>=): [0,0,10,10] vs [0,0,10,5] -> 50/100
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float)
    assert nms_cluster_local_rank(b, torch.tensor([0.9, 0.8]))[1].tolist() == [0, 0]
    # class-aware: different labels never cluster
    lr2, leader2 = nms_cluster_local_rank(BOXES, S, torch.tensor([0, 1, 0, 0, 0, 0, 0]))
    assert leader2.tolist() == [0, 1, 2, 0, 2, 5, 6] and lr2.tolist() == [0, 0, 0, 1, 1, 0, 0]
    # a member joins the highest-scoring leader it overlaps: box 2 overlaps leaders 0 and 1
    b = torch.tensor([[0, 0, 10, 10], [6, 0, 16, 10], [3, 0, 13, 10]], dtype=torch.float)
    # IoU(0,1) = 40/160 < .5 -> both leaders; box 2 overlaps 0 (70/130) and 1 (70/130)
    assert nms_cluster_local_rank(b, torch.tensor([0.5, 0.9, 0.4]))[1].tolist() == [0, 1, 1]
    e = nms_cluster_local_rank(torch.zeros(0, 4), torch.zeros(0))
    assert e[0].shape == (0,) and e[1].shape == (0,)


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("with_labels", [False, True])
def test_first_overlapping_equals_a_scan_of_every_candidate(t, with_labels):
    """The windowed search finds, for every box, the first candidate a plain scan over all
    candidates (torchvision's IoU) finds, on clustered boxes of mixed widths."""
    from torchvision.ops import box_iou

    from balanced_det.ops.hlr import first_overlapping

    g = torch.Generator().manual_seed(int(t * 10) + with_labels)
    centres = torch.rand(40, 2, generator=g) * 300
    pick = torch.randint(40, (400,), generator=g)
    wh = 4 + torch.rand(400, 2, generator=g) * torch.tensor([120.0, 60.0])
    xy = centres[pick] + torch.randn(400, 2, generator=g) * 6
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    boxes[:3] = boxes[200:203]  # identical pairs: IoU 1
    labels = torch.randint(3, (400,), generator=g) if with_labels else None
    a, b = boxes[:200], boxes[200:]
    got = first_overlapping(a, b, t, None if labels is None else labels[:200],
                            None if labels is None else labels[200:])
    iou = box_iou(a, b)
    expected = []
    for i in range(200):
        hits = [j for j in range(200) if iou[i, j] >= t
                and (labels is None or labels[i] == labels[200 + j])]
        expected.append(hits[0] if hits else 200)
    assert got.tolist() == expected
    assert 0 < sum(e < 200 for e in expected) < 200  # both cases occur
    assert first_overlapping(a[:0], b, t).shape == (0,)
    assert first_overlapping(a, b[:0], t).tolist() == [0] * 200


def test_box_iou_pairs_equals_the_matrix_entries_bitwise():
    from balanced_det.ops.boxes import box_iou_matrix, box_iou_pairs

    g = torch.Generator().manual_seed(3)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 40], 1)
    m = box_iou_matrix(boxes[:25], boxes[25:])
    i, j = torch.meshgrid(torch.arange(25), torch.arange(25), indexing="ij")
    assert torch.equal(box_iou_pairs(boxes[:25][i.flatten()], boxes[25:][j.flatten()]),
                       m.flatten())


def test_isr_n_picks_leaders_first():
    idx, w = isr_n_select(PROBS, BOXES, num_expected=3)
    assert idx.tolist() == [0, 2, 1]
    # U = max(3, 5) = 5, u = [1, .8, .6], gamma .5
    assert torch.allclose(w, torch.tensor([1.0, 0.8, 0.6]).sqrt())
    assert w.dtype == torch.float32


def test_isr_n_fills_with_minimum_weight():
    g = torch.Generator().manual_seed(1)
    idx, w = isr_n_select(PROBS, BOXES, num_expected=7, generator=g)
    assert idx[:5].tolist() == [0, 2, 1, 4, 3]
    assert sorted(idx[5:].tolist()) == [5, 6]
    # U = max(7, 5) = 7: u = [7, 6, 5, 4, 3]/7, fillers get the minimum 3/7
    u = torch.tensor([7, 6, 5, 4, 3, 3, 3]) / 7.0
    assert torch.allclose(w, u.sqrt())
    # more expected than candidates: k = N
    idx, w = isr_n_select(PROBS, BOXES, num_expected=100, generator=g)
    assert idx.numel() == 7 and idx.unique().numel() == 7


def test_isr_n_threshold_and_beta():
    # threshold .65 -> valid 0, 1, 2 (3 and 4 become invalid); LR 0:0, 1:1, 2:0 -> order 0, 2, 1
    g = torch.Generator().manual_seed(0)
    idx, w = isr_n_select(PROBS, BOXES, num_expected=5, score_threshold=0.65, gamma=1.0, beta=0.5,
                          generator=g)
    assert idx[:3].tolist() == [0, 2, 1]
    assert set(idx[3:].tolist()) <= {3, 4, 5, 6} and idx.unique().numel() == 5
    u = torch.tensor([5, 4, 3, 3, 3]) / 5.0  # U = max(5, 3); fillers get the minimum u = 3/5
    assert torch.allclose(w, 0.5 * u + 0.5)


def test_isr_n_no_valid_is_random_with_unit_weights():
    probs = torch.full((50, 3), 0.01)
    boxes = torch.rand(50, 4) * 10
    boxes[:, 2:] += boxes[:, :2]
    g = torch.Generator().manual_seed(0)
    idx, w = isr_n_select(probs, boxes, 20, generator=g)
    assert idx.numel() == 20 and idx.unique().numel() == 20
    assert torch.equal(w, torch.ones(20))
    idx2, _ = isr_n_select(probs, boxes, 20, generator=torch.Generator().manual_seed(1))
    assert idx2.tolist() != idx.tolist()


def test_isr_n_empty_and_bf16():
    idx, w = isr_n_select(torch.zeros(0, 3), torch.zeros(0, 4), 10)
    assert idx.shape == (0,) and w.shape == (0,) and w.dtype == torch.float32
    idx, w = isr_n_select(PROBS, BOXES, 0)
    assert idx.shape == (0,)
    idx, w = isr_n_select(PROBS.bfloat16(), BOXES.bfloat16(), 4)
    assert idx.tolist() == [0, 2, 1, 4] and w.dtype == torch.float32 and torch.isfinite(w).all()


def test_isr_n_matches_loop_reference_random():
    """Random scene vs. a straightforward loop implementation (greedy NMS + importance key)."""
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(3)
    n = 120
    xy = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * 20 + 5
    boxes = torch.cat([xy, xy + wh], 1)
    probs = torch.rand(n, 4, generator=g) ** 3
    s = probs.max(1).values
    valid = (s > 0.05).nonzero().flatten().tolist()
    # loop reference (mmcv nms_match + mmdet importance)
    order = sorted(valid, key=lambda i: -s[i].item())
    iou = box_iou(boxes, boxes)
    suppressed, imp = set(), {}
    for i in order:
        if i in suppressed:
            continue
        group = [i]
        for j in order:
            if j != i and j not in suppressed and s[j] <= s[i] and order.index(j) > order.index(i) \
                    and iou[i, j] >= 0.5:
                suppressed.add(j)
                group.append(j)
        for r, j in enumerate(group):
            imp[j] = len(valid) - r + s[j].item()
    ref = sorted(valid, key=lambda j: -imp[j])
    k = min(len(valid), 40)
    idx, w = isr_n_select(probs, boxes, k)
    assert idx.tolist() == ref[:k]
    up = max(k, len(valid))
    assert torch.allclose(w, ((up - torch.arange(k).float()) / up).sqrt())
