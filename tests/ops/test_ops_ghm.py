"""balanced_det.ops.ghm: GHM-C / GHM-R with bias-corrected, distributed EMA
(docs/methods/ghm.md)."""

import math

import pytest
import torch

from balanced_det.ops import ghm as ghm_mod
from balanced_det.ops.ghm import GHMC, GHMR


def logit(p):
    return math.log(p / (1 - p))


def batch_from_g(gs):
    """Targets 0 and logits with sigmoid(x) = g, so the gradient norm is exactly g."""
    x = torch.tensor([logit(g) for g in gs], dtype=torch.float64).float()
    return x.clone().requires_grad_(True), torch.zeros(len(gs))


def bce0(gs):
    """BCE of target 0 at probability g: -log(1 - g)."""
    return torch.tensor([-math.log(1 - g) for g in gs])


def test_ghmc_bias_corrected_first_and_second_step():
    m = GHMC()  # bins 30, momentum 0.75
    # step 1: g = 0.01 x3 (bin 0), 0.5 (bin 15), 0.99 x2 (bin 29) -> counts 3, 1, 2; tot 6, n 3.
    # Bias-corrected EMA after one update = raw counts: acc_hat = 0.25 c / (1 - 0.75) = c.
    # w = tot / c / n: bin 0: 6/3/3 = 2/3, bin 15: 6/1/3 = 2, bin 29: 6/2/3 = 1.
    # (mmdet would use acc = 0.25 c, i.e. weights x4.)
    gs = [0.01, 0.01, 0.01, 0.5, 0.99, 0.99]
    x, y = batch_from_g(gs)
    loss = m(x, y)
    w = torch.tensor([2 / 3] * 3 + [2.0] + [1.0] * 2)
    expected = (w * bce0(gs)).sum() / 6
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert m.last_num_nonempty.item() == 3
    acc = torch.zeros(30)
    acc[0], acc[15], acc[29] = 0.75, 0.25, 0.5
    torch.testing.assert_close(m.acc_sum, acc)
    upd = torch.zeros(30, dtype=torch.long)
    upd[[0, 15, 29]] = 1
    assert torch.equal(m.updates, upd)

    # step 2: g = 0.01 (bin 0), 0.72 (bin 21); tot 2, n 2.
    # bin 0: acc = 0.75 * 0.75 + 0.25 * 1 = 0.8125, t = 2, acc_hat = 0.8125 / (1 - 0.5625) = 13/7
    #        w = 2 / (13/7) / 2 = 7/13
    # bin 21: first update -> acc_hat = 1, w = 2 / 1 / 2 = 1
    # bins 15 and 29 are empty this step: untouched.
    gs2 = [0.01, 0.72]
    x2, y2 = batch_from_g(gs2)
    loss2 = m(x2, y2)
    w2 = torch.tensor([7 / 13, 1.0])
    expected2 = (w2 * bce0(gs2)).sum() / 2
    assert loss2.item() == pytest.approx(expected2.item(), rel=1e-5)
    acc[0], acc[21] = 0.8125, 0.25
    torch.testing.assert_close(m.acc_sum, acc)
    upd[0], upd[21] = 2, 1
    assert torch.equal(m.updates, upd)
    assert m.last_num_nonempty.item() == 2
    # gradient: d/dx of w * BCE(x, 0) / tot = w * sigmoid(x) / tot
    loss2.backward()
    torch.testing.assert_close(x2.grad, w2 * torch.tensor(gs2) / 2, rtol=1e-5, atol=1e-7)


def test_ghmc_momentum_zero_is_plain_counts():
    m0 = GHMC(momentum=0.0)
    torch.manual_seed(0)
    for _ in range(3):
        x = torch.randn(50, 4) * 3
        y = (torch.rand(50, 4) < 0.2).float()
        g = (x.sigmoid() - y).abs()
        idx = (g * 30).floor().clamp(max=29).long()
        counts = torch.bincount(idx.flatten(), minlength=30).float()
        n = (counts > 0).sum()
        w = 200 / counts[idx] / n
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
        torch.testing.assert_close(m0(x, y), (w * bce).sum() / 200)


def test_ghmc_valid_mask_broadcast_and_g_equal_one():
    m = GHMC(momentum=0.0)
    # sigmoid(100) == 1.0 in float32, target 0 -> g = 1.0 -> last bin (29),
    # as mmdet's edges[-1] += 1e-6
    x = torch.tensor([[100.0, 0.0], [0.0, 0.0]], requires_grad=True)
    y = torch.zeros(2, 2)
    valid = torch.tensor([[True], [False]])  # second anchor ignored
    loss = m(x, y, valid)
    # valid: g = 1.0 (bin 29), g = 0.5 (bin 15); tot 2, n 2 -> both weights 2/1/2 = 1
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(x[0], y[0], reduction="none")
    ).sum() / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert m.last_num_nonempty.item() == 2
    assert m.acc_sum[29].item() == 1.0 and m.acc_sum[15].item() == 1.0
    loss.backward()
    assert torch.equal(x.grad[1], torch.zeros(2))


def test_ghmc_zero_valid_and_eval_mode():
    m = GHMC()
    x = torch.randn(4, 3, requires_grad=True)
    loss = m(x, torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(4, 3))
    assert torch.equal(m.acc_sum, torch.zeros(30)) and torch.equal(
        m.updates, torch.zeros(30, dtype=torch.long)
    )
    empty = torch.zeros(0, 3, requires_grad=True)
    out = m(empty, torch.zeros(0, 3))
    assert out.item() == 0.0 and out.requires_grad
    # eval: loss computed, EMA untouched
    m.eval()
    out = m(torch.randn(4, 3), torch.zeros(4, 3))
    assert torch.isfinite(out) and torch.equal(m.acc_sum, torch.zeros(30))


def test_ghm_buffers_in_state_dict_and_roundtrip():
    m = GHMC()
    m(torch.randn(10, 2), torch.zeros(10, 2))
    sd = m.state_dict()
    assert set(sd) == {"acc_sum", "updates"}
    m2 = GHMC()
    m2.load_state_dict(sd)
    assert torch.equal(m2.acc_sum, m.acc_sum) and torch.equal(m2.updates, m.updates)
    assert set(GHMR().state_dict()) == {"acc_sum", "updates"}


def test_ghmr_hand_example():
    mu = 0.02
    m = GHMR()  # mu 0.02, bins 10, momentum 0.7, loss weight 10
    # d = pred - target. g = |d| / sqrt(d^2 + mu^2): d = 0 -> 0 (bin 0);
    # d = 0.02 -> 1/sqrt(2) = 0.707 (bin 7); d = -1 -> 0.9998 (bin 9). Third row invalid.
    pred = torch.tensor(
        [[0.0, 0.0, 0.02, -1.0], [0.0, 0.02, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]], requires_grad=True
    )
    target = torch.zeros(3, 4)
    valid = torch.tensor([True, True, False])
    loss = m(pred, target, valid)
    # tot = 8 coordinates; counts bin0 5, bin7 2, bin9 1; n = 3; first step: acc_hat = counts.
    # w: bin0 8/5/3, bin7 8/2/3, bin9 8/1/3.  ASL1: 0 -> 0; 0.02 -> 0.02 (sqrt 2 - 1);
    # -1 -> sqrt(1 + mu^2) - mu.   L = 10 * sum w ASL1 / 8
    a7 = 0.02 * (math.sqrt(2) - 1)
    a9 = math.sqrt(1 + mu * mu) - mu
    expected = 10 * (2 * (8 / 2 / 3) * a7 + (8 / 1 / 3) * a9) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m.last_num_nonempty.item() == 3
    acc = torch.zeros(10)
    acc[0], acc[7], acc[9] = 0.3 * 5, 0.3 * 2, 0.3 * 1
    torch.testing.assert_close(m.acc_sum, acc)
    loss.backward()
    assert torch.equal(pred.grad[2], torch.zeros(4))
    # (M, 4) mask gives the same as (M,)
    m2 = GHMR()
    loss2 = m2(pred, target, valid[:, None].expand(3, 4))
    assert loss2.item() == pytest.approx(loss.item())


def test_ghmr_zero_valid_and_bf16():
    m = GHMR()
    pred = torch.randn(3, 4, requires_grad=True)
    loss = m(pred, torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(m.acc_sum, torch.zeros(10))
    out = m(
        torch.randn(6, 4).bfloat16(), torch.randn(6, 4).bfloat16(), torch.ones(6, dtype=torch.bool)
    )
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out = GHMC()(torch.randn(6, 5).bfloat16(), torch.zeros(6, 5).bfloat16())
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_ghm_distributed_reduces_counts(monkeypatch):
    """Two identical ranks (simulated): counts and tot doubled by the all-reduce, every
    rank's EMA is the global one, and the loss equals the single-process loss of the batch
    (normaliser tot_global / world_size)."""
    torch.manual_seed(1)
    x = torch.randn(20, 3) * 2
    y = (torch.rand(20, 3) < 0.3).float()
    single = GHMC()
    ref = single(x, y)

    calls = []

    def fake_all_reduce(t):
        calls.append(t.clone())
        t.mul_(2)

    monkeypatch.setattr(ghm_mod, "world_size", lambda: 2)
    monkeypatch.setattr(ghm_mod.dist, "all_reduce", fake_all_reduce)
    dist_m = GHMC()
    out = dist_m(x, y)
    # one all-reduce of the 30 bins' counts and the invalid elements' slot
    assert len(calls) == 1 and calls[0].shape == (31,)
    assert calls[0][:30].sum().item() == 60 and calls[0][30].item() == 0
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(dist_m.acc_sum, 2 * single.acc_sum)
    # eval mode: no communication
    dist_m.eval()
    dist_m(x, y)
    assert len(calls) == 1


def test_ghmr_gradient_matches_autograd_of_the_formula():
    """GHM-R's own backward against autograd through sqrt(d^2 + mu^2) - mu with the weights
    computed here (momentum 0: w = tot / count_b / n), for pred and target, with a mask."""
    torch.manual_seed(3)
    mu = 0.02
    pred = (torch.randn(40, 4) * 0.05).requires_grad_(True)
    target = (torch.randn(40, 4) * 0.05).requires_grad_(True)
    valid = torch.rand(40) < 0.6
    loss = GHMR(mu=mu, momentum=0.0, loss_weight=10.0)(pred, target, valid)
    loss.backward()

    p, t = pred.detach().clone().requires_grad_(True), target.detach().clone().requires_grad_(True)
    d = p - t
    g = (d.abs() / torch.sqrt(d * d + mu * mu)).detach()
    idx = (g * 10).floor().clamp(max=9).long()[valid]
    counts = torch.bincount(idx.flatten(), minlength=10).float()
    tot = float(valid.sum() * 4)
    w = torch.zeros(40, 4)
    w[valid] = tot / counts[idx] / (counts > 0).sum()
    ref = 10.0 * (w * (torch.sqrt(d * d + mu * mu) - mu)).sum() / tot
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(pred.grad, p.grad)
    torch.testing.assert_close(target.grad, t.grad)
    assert torch.equal(pred.grad[~valid], torch.zeros(int((~valid).sum()), 4))

    half = torch.randn(6, 4).bfloat16().requires_grad_(True)
    GHMR()(half, torch.zeros(6, 4)).backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()
