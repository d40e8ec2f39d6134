"""Learning from Noisy Anchors, ops: top-N candidates, soft targets and weights against the
per-element reference (tests/noisy_anchor_reference.py), the division guards, the
soft-target focal loss (values, gradients, bfloat16 autocast), bad hyperparameters."""

import pytest
import torch
from fvcore.nn import sigmoid_focal_loss

from balanced_det.modeling import NoisyAnchorAssigner, SoftTargetFocalLoss
from balanced_det.ops import noisy_anchor_soft_targets, soft_target_focal_loss, topn_candidates

import noisy_anchor_reference as ref


def test_check_values():
    loc = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9])
    cls = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9])
    count = torch.tensor([1, 1, 1, 1, 0])
    t, r = noisy_anchor_soft_targets(loc, cls, count, 0.75)
    torch.testing.assert_close(t, torch.tensor([0.65, 0.766667, 0.883333, 1.0, 0.0]))
    torch.testing.assert_close(r, torch.tensor([0.671169, 0.813506, 1.041039, 1.474286, 1.0]))


def _random_case(seed, g=3, r=40, n=6):
    gen = torch.Generator().manual_seed(seed)
    iou = torch.rand(g, r, generator=gen)
    iou[:, :2] = iou[:, :2] + 2.0  # anchors 0 and 1 are in every GT's list: duplicates
    return iou, gen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_candidates_soft_targets_and_weights_match_the_reference(seed):
    iou, gen = _random_case(seed)
    n = 6
    count, matched = topn_candidates(iou, n)
    rows = iou.tolist()
    cand = ref.candidate_list(rows, n)
    assert count.tolist() == [cand.count(a) for a in range(iou.shape[1])]
    assert count.max() == 3
    assert matched.tolist() == [ref.matched_gt(rows, a) for a in range(iou.shape[1])]
    loc = torch.rand(iou.shape[1], generator=gen)
    cls = torch.rand(iou.shape[1], generator=gen)
    t, w = noisy_anchor_soft_targets(loc, cls, count, 0.75)
    t_ref, w_ref = ref.soft_targets_and_weights([float(loc[a]) for a in cand],
                                                [float(cls[a]) for a in cand], 0.75)
    exp_t, exp_w = [0.0] * iou.shape[1], [1.0] * iou.shape[1]
    for a, tv, wv in zip(cand, t_ref, w_ref):
        exp_t[a], exp_w[a] = tv, wv
    torch.testing.assert_close(t, torch.tensor(exp_t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, torch.tensor(exp_w), rtol=1e-5, atol=1e-6)
    assert float(t[count > 0].max()) == pytest.approx(1.0)
    assert float(t[count > 0].min()) == pytest.approx(
        sum(float(loc[a]) for a in cand) / len(cand), rel=1e-5)


def test_batched_equals_per_image():
    gen = torch.Generator().manual_seed(3)
    loc, cls = torch.rand(3, 20, generator=gen), torch.rand(3, 20, generator=gen)
    count = torch.randint(0, 3, (3, 20), generator=gen)
    count[2] = 0  # an image without candidates
    t, w = noisy_anchor_soft_targets(loc, cls, count, 0.6)
    for i in range(3):
        ti, wi = noisy_anchor_soft_targets(loc[i], cls[i], count[i], 0.6)
        torch.testing.assert_close(t[i], ti)
        torch.testing.assert_close(w[i], wi)
    assert (t[2] == 0).all() and (w[2] == 1).all()


def test_topn_without_gts_and_with_n_above_the_anchor_count():
    count, matched = topn_candidates(torch.zeros(0, 7), 30)
    assert count.tolist() == [0] * 7 and matched.tolist() == [0] * 7
    iou = torch.tensor([[0.0, 0.1, 0.0], [0.2, 0.0, 0.0]])
    count, matched = topn_candidates(iou, 30)  # no IoU threshold: every anchor, twice
    assert count.tolist() == [2, 2, 2] and matched.tolist() == [1, 0, 0]


@pytest.mark.parametrize("loc, cls, count", [
    ([0.4], [0.3], [1]),                        # one candidate: max s = min s
    ([0.4, 0.4], [0.3, 0.3], [1, 2]),          # all candidates equal
    ([0.0, 0.0, 0.0], [0.2, 0.5, 0.1], [1, 1, 1]),  # mean(loc) = 0
    ([0.3, 0.0], [0.0, 0.0], [1, 1]),          # mean(cls) = 0
    ([1.0, 0.5], [0.2, 1.0], [1, 1]),          # loc = 1, cls = 1: f = 1 / 0
    ([0.5, 0.5], [0.5, 0.5], [0, 0]),          # no candidates
])
def test_division_edge_cases_stay_finite(loc, cls, count):
    loc, cls, count = torch.tensor(loc), torch.tensor(cls), torch.tensor(count)
    t, w = noisy_anchor_soft_targets(loc, cls, count, 0.75)
    assert torch.isfinite(t).all() and torch.isfinite(w).all()
    cand = count > 0
    assert ((t[cand] >= 0) & (t[cand] <= 1 + 1e-6)).all() and (w > 0).all()
    assert (t[~cand] == 0).all() and (w[~cand] == 1).all()
    if cand.any() and bool((loc[cand] == loc[cand][0]).all() & (cls[cand] == cls[cand][0]).all()):
        # equal candidates: no spread to rescale, every target is mean(loc)
        torch.testing.assert_close(t[cand], loc[cand])


def test_inputs_are_detached():
    loc = torch.tensor([0.5, 0.6], requires_grad=True)
    cls = torch.tensor([0.1, 0.2], requires_grad=True)
    t, w = noisy_anchor_soft_targets(loc, cls, torch.tensor([1, 1]))
    assert not t.requires_grad and not w.requires_grad


def test_soft_target_focal_loss_values_and_gradients():
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(6, 4, generator=gen) * 5).requires_grad_()
    t = torch.rand(6, 4, generator=gen)
    t[0] = 0.0
    t[1] = 1.0
    loss = soft_target_focal_loss(x, t, 0.5, 2.0)
    expected = [[ref.soft_focal(float(a), float(b), 0.5, 2.0) for a, b in zip(ra, rb)]
                for ra, rb in zip(x.tolist(), t.tolist())]
    torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    (g,) = torch.autograd.grad(loss.sum(), x)
    x64 = x.detach().double().requires_grad_()
    p = torch.sigmoid(x64)
    straight = (-0.5 * t * (1 - p) ** 2 * torch.log(p)
                - 0.5 * (1 - t) * p ** 2 * torch.log(1 - p))
    (g_ref,) = torch.autograd.grad(straight.sum(), x64)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-6)


def test_soft_target_focal_loss_is_the_focal_loss_for_hard_targets():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 3, generator=gen) * 4
    t = (torch.rand(30, 3, generator=gen) < 0.3).float()
    torch.testing.assert_close(SoftTargetFocalLoss(alpha=0.25).elements(x, t),
                               sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="none"),
                               rtol=1e-5, atol=1e-6)
    big = torch.tensor([-1e4, 1e4])
    assert torch.isfinite(soft_target_focal_loss(big, torch.tensor([1.0, 0.0]))).all()


def test_soft_target_focal_loss_under_bfloat16_autocast():
    gen = torch.Generator().manual_seed(6)
    xb = (torch.randn(5, 3, generator=gen) * 3).to(torch.bfloat16).requires_grad_()
    t = torch.rand(5, 3, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SoftTargetFocalLoss()(xb, t, normalizer=2.0)
    assert loss.dtype == torch.float32
    expected = sum(ref.soft_focal(float(a), float(b), 0.5, 2.0)
                   for a, b in zip(xb.detach().float().flatten().tolist(), t.flatten().tolist()))
    assert float(loss.detach()) == pytest.approx(expected / 2.0, rel=1e-5)
    loss.backward()
    assert torch.isfinite(xb.grad.float()).all()


@pytest.mark.parametrize("build, message", [
    (lambda: NoisyAnchorAssigner(topk=0), r"topk=0 is not valid; expected an integer >= 1"),
    (lambda: NoisyAnchorAssigner(topk=2.5), r"topk=2.5 is not valid; expected an integer >= 1"),
    (lambda: NoisyAnchorAssigner(alpha=1.5),
     r"alpha=1.5 is not valid; expected a number in \[0.0, 1.0\]"),
    (lambda: NoisyAnchorAssigner(alpha=-0.1),
     r"alpha=-0.1 is not valid; expected a number in \[0.0, 1.0\]"),
    (lambda: SoftTargetFocalLoss(alpha=2.0),
     r"alpha=2.0 is not valid; expected a number in \[0.0, 1.0\]"),
    (lambda: SoftTargetFocalLoss(gamma=-1.0),
     r"gamma=-1.0 is not valid; expected a number in \[0.0, inf\]"),
])
def test_bad_hyperparameters_fail_at_build_time(build, message):
    with pytest.raises(ValueError, match=message):
        build()
