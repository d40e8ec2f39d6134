"""balanced_det.ops.samplers: random, instance-balanced, IoU-balanced, OHEM
(docs/methods/libra.md, docs/methods/ohem.md)."""
import pytest
import torch

from balanced_det.ops.samplers import (
    instance_balanced_pos_sample,
    iou_balanced_neg_sample,
    ohem_topk,
    random_choice,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_unique(idx):
    assert idx.unique().numel() == idx.numel()


# ---- random ------------------------------------------------------------------------------------
def test_random_choice():
    mask = torch.zeros(100, dtype=torch.bool)
    mask[::3] = True  # 34 available
    idx = random_choice(mask, 10, gen(0))
    assert idx.numel() == 10 and mask[idx].all()
    assert_unique(idx)
    idx = random_choice(mask, 50, gen(0))
    assert sorted(idx.tolist()) == list(range(0, 100, 3))
    assert random_choice(torch.zeros(0, dtype=torch.bool), 5).shape == (0,)
    assert random_choice(mask, 0).shape == (0,)


# ---- instance-balanced positives ---------------------------------------------------------------
def test_instance_balanced_fill_from_big_gt():
    # GT0: 50 candidates, GT1: 5, GT2: 3; P = 20, G = 3 -> cap = round(20/3) + 1 = 8
    # stage 1: 8 + 5 + 3 = 16 < 20 -> 4 more from GT0's unselected: GT0 12, GT1 5, GT2 3
    gt = torch.cat([torch.zeros(50), torch.ones(5), torch.full((3,), 2)]).long()
    gt = gt[torch.randperm(58, generator=gen(5))]
    for seed in range(5):
        idx = instance_balanced_pos_sample(gt, 20, gen(seed))
        assert idx.numel() == 20
        assert_unique(idx)
        assert torch.bincount(gt[idx], minlength=3).tolist() == [12, 5, 3]


def test_instance_balanced_cap_and_subset():
    # 10 GTs x 10 candidates, P = 20: cap = round(2) + 1 = 3 -> 30 capped > 20 -> random 20 of them
    gt = torch.arange(10).repeat_interleave(10)
    counts = torch.zeros(10)
    for seed in range(50):
        idx = instance_balanced_pos_sample(gt, 20, gen(seed))
        assert idx.numel() == 20
        assert_unique(idx)
        c = torch.bincount(gt[idx], minlength=10)
        assert c.max() <= 3
        counts += c
    # uniform over GTs: 50 * 20 / 10 = 100 each
    assert (counts - 100).abs().max() < 25
    # a random GT's members: every member gets picked sometimes (uniform inside a GT)
    seen = torch.zeros(100, dtype=torch.bool)
    for seed in range(50):
        seen[instance_balanced_pos_sample(gt, 20, gen(seed))] = True
    assert seen.all()


@pytest.mark.parametrize("num_expected, num_gts, cap", [
    (147, 98, 3),  # 1.5: ties to 2 (a reciprocal-times-P division gives 1.4999... -> 1)
    (75, 30, 3),  # 2.5: ties to 2
    (91, 14, 7),  # 6.5: ties to 6
    (183, 122, 3),  # 1.5
    (150, 60, 3),  # 2.5
    (100, 30, 4),  # 3.33 -> 3
])
def test_instance_balanced_cap_rounds_ties_to_even(num_expected, num_gts, cap):
    """cap = round(P / G) + 1 with exact ties to even (as Python's round(P / G) + 1): with 8
    candidates per GT, some GT gets exactly cap picks and none more."""
    assert round(num_expected / num_gts) + 1 == cap
    gt = torch.arange(num_gts).repeat_interleave(8)
    most = 0
    for seed in range(5):
        idx = instance_balanced_pos_sample(gt, num_expected, gen(seed))
        assert idx.numel() == num_expected
        most = max(most, int(torch.bincount(gt[idx]).max()))
    assert most == cap


def test_instance_balanced_small_and_empty():
    gt = torch.tensor([3, 3, 7])
    assert instance_balanced_pos_sample(gt, 5).tolist() == [0, 1, 2]
    assert instance_balanced_pos_sample(torch.zeros(0, dtype=torch.long), 5).shape == (0,)
    assert instance_balanced_pos_sample(gt, 0).shape == (0,)


# ---- IoU-balanced negatives --------------------------------------------------------------------
def _bin_of(iou, lo, hi, k=3):
    w = (hi - lo) / k
    return ((iou - lo) / w).floor().clamp(0, k - 1).long()


def test_iou_balanced_every_bin_contributes():
    # 250 at IoU [0, .1), 30 at [.2, .3), 20 at [.4, .45]; max negative IoU .45 -> bins of .15:
    # [0, .15): 250, [.15, .30): 30, [.30, .45]: 20. num_expected 60 -> 20 per bin exactly.
    g = gen(0)
    iou = torch.cat([torch.rand(250, generator=g) * 0.1, 0.2 + torch.rand(30, generator=g) * 0.1,
                     0.4 + torch.rand(19, generator=g) * 0.05, torch.tensor([0.45])])
    bins = _bin_of(iou, 0.0, 0.45)
    for seed in range(10):
        idx = iou_balanced_neg_sample(iou, 60, generator=gen(seed))
        assert idx.numel() == 60
        assert_unique(idx)
        assert torch.bincount(bins[idx], minlength=3).tolist() == [20, 20, 20]
    # the negative with the max IoU is in the (closed) top bin: always taken here
    assert 299 in iou_balanced_neg_sample(iou, 60, generator=gen(1)).tolist()


def test_iou_balanced_shortfall_filled():
    # top bin holds 10 < 20 -> 20 + 20 + 10 + 10 filler from the other bins
    g = gen(1)
    iou = torch.cat([torch.rand(250, generator=g) * 0.1, 0.2 + torch.rand(30, generator=g) * 0.1,
                     0.4 + torch.rand(9, generator=g) * 0.05, torch.tensor([0.45])])
    bins = _bin_of(iou, 0.0, 0.45)
    fill_in_bin1 = 0
    for seed in range(40):
        idx = iou_balanced_neg_sample(iou, 60, generator=gen(seed))
        assert idx.numel() == 60
        assert_unique(idx)
        c = torch.bincount(bins[idx], minlength=3).tolist()
        assert c[2] == 10 and c[0] >= 20 and c[1] >= 20 and c[0] + c[1] == 50
        fill_in_bin1 += c[1] - 20
    # filler is uniform over the 230 + 10 leftover: bin 1 expects 10/240 of 10 per draw
    assert fill_in_bin1 < 40


def test_iou_balanced_no_floor_includes_zero_iou_in_bins():
    # default floor -1: IoU = 0 negatives form part of bin 0 (mmdet's stateful rewrite to 0 would
    # make them filler only). 100 zeros + 100 at .3; max .3 -> bins of .1: 100 zeros in bin 0.
    iou = torch.cat([torch.zeros(100), torch.full((100,), 0.3)])
    idx = iou_balanced_neg_sample(iou, 30, generator=gen(0))
    # bin 0 (zeros) quota 10, bin 1 empty, bin 2 quota 10, then 10 filler from the 90 + 90 left
    for seed in range(5):
        idx = iou_balanced_neg_sample(iou, 30, generator=gen(seed))
        assert idx.numel() == 30
        assert_unique(idx)
        assert (iou[idx] == 0).sum() >= 10 and (iou[idx] > 0).sum() >= 10


def test_iou_balanced_floor_zero():
    # floor_thr = 0: IoU == 0 is the floor set (filler); S = IoU > 0 has 31 <= 60 -> all of S
    iou = torch.cat([torch.zeros(200), torch.full((10,), 0.05), torch.full((10,), 0.2),
                     torch.full((10,), 0.35), torch.tensor([0.45])])
    idx = iou_balanced_neg_sample(iou, 60, floor_thr=0.0, generator=gen(0))
    assert idx.numel() == 60
    assert_unique(idx)
    assert (iou[idx] > 0).sum() == 31


def test_iou_balanced_floor_fraction():
    # floor_thr .1, floor_fraction .5, num_expected 20: n_iou = 10, per bin 3.
    # S = IoU >= .1: 10 at .2, 10 at .35, 1 at .45; bins over [.1, .45]: 10 / 0 / 11 -> 3 + 0 + 3,
    # +4 filler from S -> 10 from S; the other 10 from F = IoU < .1 (200 zeros + 10 at .05).
    iou = torch.cat([torch.zeros(200), torch.full((10,), 0.05), torch.full((10,), 0.2),
                     torch.full((10,), 0.35), torch.tensor([0.45])])
    for seed in range(5):
        idx = iou_balanced_neg_sample(iou, 20, floor_thr=0.1, floor_fraction=0.5,
                                      generator=gen(seed))
        assert idx.numel() == 20
        assert_unique(idx)
        assert (iou[idx] >= 0.1).sum() == 10
        sel = iou[idx]
        assert ((sel == 0.2).sum() >= 3) and ((sel >= 0.35).sum() >= 3)
    # floor set short -> the rest from S
    iou2 = torch.cat([torch.zeros(3), torch.full((40,), 0.3)])
    idx = iou_balanced_neg_sample(iou2, 20, floor_thr=0.1, floor_fraction=0.5, generator=gen(0))
    assert idx.numel() == 20 and (iou2[idx] == 0).sum() == 3


def test_iou_balanced_no_floor_with_floor_fraction():
    # no floor (S = all) and floor_fraction .5, num_expected 60: n_iou = 30, 10 per bin from the
    # bins [0, .15): 200, [.15, .30): 30, [.30, .45]: 20, then 30 uniformly from the 220 left
    g = gen(2)
    iou = torch.cat([torch.rand(200, generator=g) * 0.1, 0.2 + torch.rand(30, generator=g) * 0.1,
                     0.4 + torch.rand(19, generator=g) * 0.05, torch.tensor([0.45])])
    bins = _bin_of(iou, 0.0, 0.45)
    in_bin0 = []
    for seed in range(60):
        idx = iou_balanced_neg_sample(iou, 60, floor_fraction=0.5, generator=gen(seed))
        assert idx.numel() == 60
        assert_unique(idx)
        c = torch.bincount(bins[idx], minlength=3).tolist()
        assert min(c) >= 10
        in_bin0.append(c[0])
    # bin 0 expects 10 + 30 * 190 / 220 = 35.9 (hypergeometric sd 1.6; mean of 60 draws: 0.2)
    assert abs(sum(in_bin0) / len(in_bin0) - (10 + 30 * 190 / 220)) < 1.0


def test_iou_balanced_small_empty_degenerate():
    assert iou_balanced_neg_sample(torch.rand(5), 10).tolist() == [0, 1, 2, 3, 4]
    assert iou_balanced_neg_sample(torch.zeros(0), 10).shape == (0,)
    idx = iou_balanced_neg_sample(torch.zeros(50), 10, generator=gen(0))  # all equal IoU
    assert idx.numel() == 10
    assert_unique(idx)
    idx = iou_balanced_neg_sample(torch.rand(50).bfloat16(), 10, generator=gen(0))
    assert idx.numel() == 10 and idx.dtype == torch.long


# ---- OHEM --------------------------------------------------------------------------------------
def test_ohem_topk_per_kind():
    g = gen(0)
    loss = torch.rand(100, generator=g)
    pos = torch.rand(100, generator=g) < 0.3
    idx = ohem_topk(loss, pos, num_pos=5, num_neg=15)
    assert idx.numel() == 20
    assert_unique(idx)
    p = pos.nonzero().flatten()
    n = (~pos).nonzero().flatten()
    assert idx[:5].tolist() == p[loss[p].argsort(descending=True)[:5]].tolist()
    assert idx[5:].tolist() == n[loss[n].argsort(descending=True)[:15]].tolist()
    # fewer positives than asked: all of them
    pos2 = torch.zeros(100, dtype=torch.bool)
    pos2[[3, 9]] = True
    idx = ohem_topk(loss, pos2, 5, 10)
    assert idx.numel() == 12 and sorted(idx[:2].tolist()) == [3, 9]
    assert ohem_topk(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 5, 5).shape == (0,)


def test_ohem_nms_removes_near_duplicates():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.5], [50, 50, 60, 60], [100, 100, 110, 110],
                          [0, 0, 10, 10]], dtype=torch.float)
    loss = torch.tensor([0.9, 0.8, 0.5, 0.4, 0.95])
    pos = torch.tensor([False, False, False, False, True])  # box 4 duplicates box 0 but is positive
    plain = ohem_topk(loss, pos, 1, 2)
    assert plain.tolist() == [4, 0, 1]
    dedup = ohem_topk(loss, pos, 1, 2, nms_boxes=boxes, nms_thresh=0.7)
    assert dedup.tolist() == [4, 0, 2]  # box 1 (IoU .95 with 0) removed; positive does not suppress
    assert ohem_topk(loss.bfloat16(), pos, 1, 2).tolist() == [4, 0, 1]
