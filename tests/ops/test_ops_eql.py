"""balanced_det.ops.eql: equalization weight and sigmoid equalization loss
(docs/methods/eql.md), against a per-element implementation written out here."""
import math

import pytest
import torch

from balanced_det.ops.eql import eql_loss, eql_roi_losses, eql_weights, tail_classes


def reference_weight(g, j, frequencies, lam):
    """w_ij = 1 - E(r_i) T_lambda(f_j) (1 - y_ij), one element at a time."""
    num_classes = len(frequencies)
    e = 1.0 if g != num_classes else 0.0
    t = 1.0 if frequencies[j] < lam else 0.0
    y = 1.0 if g == j else 0.0
    return 1.0 - e * t * (1.0 - y)


def reference_loss(logits, gt, frequencies, lam):
    """sum_ij w_ij BCE(x_ij, y_ij) / R with BCE written as -y log s - (1 - y) log(1 - s)."""
    num_rois, num_classes = logits.shape
    total = logits.new_zeros(())
    for i in range(num_rois):
        for j in range(num_classes):
            x = logits[i, j].double()
            y = 1.0 if int(gt[i]) == j else 0.0
            log_p = -torch.log1p(torch.exp(-x)) if x >= 0 else x - torch.log1p(torch.exp(x))
            log_1mp = -x + log_p
            bce = -(y * log_p + (1 - y) * log_1mp)
            total = total + reference_weight(int(gt[i]), j, frequencies, lam) * bce
    return total / num_rois


FREQ = [0.5, 0.001, 0.02, 0.0005, 0.3]  # C = 5
LAM = 0.01                               # tail: classes 1 and 3


def _batch(num_rois=9, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num_rois, len(FREQ), generator=g) * scale)
    gt = torch.tensor([0, 1, 2, 3, 4, 5, 5, 1, 3][:num_rois])
    return logits, gt


def test_tail_classes_strict_threshold():
    f = torch.tensor(FREQ + [LAM])
    assert tail_classes(f, LAM).tolist() == [False, True, False, True, False, False]


def test_weights_match_the_per_element_formula():
    _, gt = _batch()
    w = eql_weights(gt, tail_classes(torch.tensor(FREQ), LAM))
    assert w.dtype == torch.float32 and w.shape == (9, 5)
    for i in range(9):
        for j in range(5):
            assert w[i, j] == reference_weight(int(gt[i]), j, FREQ, LAM), (i, j)
    # background rows keep weight 1 on every class; the GT entry is always 1
    assert (w[gt == 5] == 1).all()
    assert (w[torch.arange(5), gt[:5]] == 1).all()


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
def test_loss_and_gradient_match_the_reference(autocast):
    logits, gt = _batch()
    x = logits.clone().requires_grad_(True)
    tail = tail_classes(torch.tensor(FREQ), LAM)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = eql_loss(x, gt, tail)
    assert loss.dtype == torch.float32
    loss.backward()
    xr = logits.clone().double().requires_grad_(True)
    want = reference_loss(xr, gt, FREQ, LAM)
    want.backward()
    assert torch.allclose(loss.double(), want, rtol=1e-6, atol=1e-6)
    assert torch.allclose(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-7)
    # excluded elements (foreground ROI, other tail class) get no gradient at all
    w = eql_weights(gt, tail)
    assert (x.grad[w == 0] == 0).all() and (w == 0).any()


def test_loss_under_autocast_with_bfloat16_logits_is_float32():
    logits, gt = _batch()
    x = logits.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = eql_loss(x, gt, tail_classes(torch.tensor(FREQ), LAM))
    assert loss.dtype == torch.float32
    want = reference_loss(x.detach().double(), gt, FREQ, LAM)
    assert math.isclose(float(loss.detach()), float(want), rel_tol=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad.float()).all()


def test_no_tail_class_is_plain_sigmoid_bce():
    logits, gt = _batch()
    tail = torch.zeros(5, dtype=torch.bool)
    onehot = torch.nn.functional.one_hot(gt, 6)[:, :5].float()
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / 9
    assert torch.allclose(eql_loss(logits, gt, tail), want)


def test_extreme_logits_are_finite():
    logits = torch.tensor([[80.0, -80.0, 0.0], [-80.0, 80.0, 30.0]], requires_grad=True)
    loss = eql_loss(logits, torch.tensor([1, 3]), torch.tensor([False, True, True]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_zero_rois_give_zero_with_a_graph():
    x = torch.zeros(0, 5, requires_grad=True)
    loss = eql_loss(x, torch.zeros(0, dtype=torch.long), torch.ones(5, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad is not None and x.grad.shape == (0, 5)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), "0.1"])
def test_bad_lambda_names_value_and_range(bad):
    with pytest.raises(ValueError,
                       match=r"lambda_=.* is not valid; expected a number in \(0.0, 1.0\)"):
        tail_classes(torch.tensor(FREQ), bad)


def test_per_roi_losses_sum_to_the_loss_and_match_the_formula():
    logits, gt = _batch()
    tail = tail_classes(torch.tensor(FREQ), LAM)
    per_roi = eql_roi_losses(logits, gt, tail)
    assert per_roi.shape == (9,) and per_roi.dtype == torch.float32
    for i in range(9):
        want = reference_loss(logits[i:i + 1], gt[i:i + 1], FREQ, LAM)  # R = 1: l_i itself
        assert float(per_roi[i]) == pytest.approx(float(want), rel=1e-5), i
    assert torch.allclose(per_roi.sum() / 9, eql_loss(logits, gt, tail))
