"""FL* (ops.sigmoid_focal_loss_star, modeling.FocalLossStar): values and gradients against a
per-element implementation written here, the check table, fvcore's beta-free version, float32
under bfloat16 autocast, bad hyperparameters."""
import math

import pytest
import torch
from fvcore.nn import sigmoid_focal_loss_star as fvcore_fl_star

from balanced_det.modeling import FocalLossStar
from balanced_det.ops import sigmoid_focal_loss_star


def _ref(x, t, alpha, gamma, beta):
    """alpha_t * -log(sigmoid(gamma x_t + beta)) / gamma and its derivative, one element."""
    xt = x if t == 1 else -x
    z = gamma * xt + beta
    softplus_neg_z = max(-z, 0.0) + math.log1p(math.exp(-abs(z)))
    a = alpha if t == 1 else 1.0 - alpha
    sig = 1.0 / (1.0 + math.exp(-z))
    return a * softplus_neg_z / gamma, a * (1.0 if t == 1 else -1.0) * (sig - 1.0)


def _ref_tensors(x, t, alpha, gamma, beta):
    vals, grads = zip(*[_ref(float(a), int(b), alpha, gamma, beta)
                        for a, b in zip(x.flatten().tolist(), t.flatten().tolist())])
    return (torch.tensor(vals, dtype=torch.float64).reshape(x.shape),
            torch.tensor(grads, dtype=torch.float64).reshape(x.shape))


@pytest.mark.parametrize("x, t, gamma, beta, value, grad", [
    (0.0, 1, 2.0, 1.0, 0.039158, -0.067235),
    (0.0, 0, 2.0, 1.0, 0.117473, 0.201706),
    (2.0, 1, 2.0, 1.0, 0.000839, -0.001673),
    (0.0, 1, 4.0, 0.0, 0.043322, -0.125000),
    (1.5, 0, 4.0, 0.0, 1.125464, 0.748146),
])
def test_check_table(x, t, gamma, beta, value, grad):
    xs = torch.tensor([x], requires_grad=True)
    loss = sigmoid_focal_loss_star(xs, torch.tensor([float(t)]), 0.25, gamma, beta)
    loss.sum().backward()
    assert float(loss.detach()) == pytest.approx(value, abs=2e-6)
    assert float(xs.grad) == pytest.approx(grad, abs=2e-6)
    assert _ref(x, t, 0.25, gamma, beta) == pytest.approx((value, grad), abs=2e-6)


@pytest.mark.parametrize("gamma, beta", [(2.0, 1.0), (4.0, 0.0), (0.5, -1.0), (1.0, 0.0)])
def test_values_and_gradients_match_the_per_element_reference(gamma, beta):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 5, generator=g) * 6).requires_grad_()
    t = (torch.rand(7, 5, generator=g) < 0.3).float()
    loss = FocalLossStar(alpha=0.25, gamma=gamma, beta=beta).elements(x, t)
    assert loss.dtype == torch.float32 and loss.shape == x.shape
    w = torch.rand(7, 5, generator=g)
    (loss * w).sum().backward()
    val, grad = _ref_tensors(x.detach(), t, 0.25, gamma, beta)
    torch.testing.assert_close(loss.double(), val, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(x.grad.double(), grad * w.double(), rtol=1e-5, atol=1e-7)


def test_extreme_logits_are_finite_with_ce_slope():
    x = torch.tensor([-1e4, -100.0, 100.0, 1e4], requires_grad=True)
    t = torch.ones(4)
    loss = sigmoid_focal_loss_star(x, t, 0.25, 2.0, 1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    # x_t -> -inf: loss ~ alpha (-x_t - beta / gamma), gradient -> -alpha
    assert float(loss[0]) == pytest.approx(0.25 * (1e4 - 0.5), rel=1e-6)
    assert float(x.grad[0]) == pytest.approx(-0.25)
    assert float(loss[3]) == 0.0


def test_beta_zero_equals_fvcore_and_gamma_one_is_alpha_balanced_bce():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g) * 4
    t = (torch.rand(50, 3, generator=g) < 0.5).float()
    ours = sigmoid_focal_loss_star(x, t, 0.25, 4.0, 0.0)
    torch.testing.assert_close(ours, fvcore_fl_star(x, t, alpha=0.25, gamma=4.0))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss_star(x, t, 0.25, 1.0, 0.0),
                               bce * (0.25 * t + 0.75 * (1 - t)))


def test_bfloat16_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(2)
    x32 = torch.randn(6, 4, generator=g) * 3
    t = (torch.rand(6, 4, generator=g) < 0.4).float()
    xb = x32.to(torch.bfloat16).requires_grad_()
    loss_fn = FocalLossStar(gamma=2.0, beta=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        el = loss_fn.elements(xb, t)
        total = loss_fn(xb, t, normalizer=3.0)
    assert el.dtype == torch.float32 and total.dtype == torch.float32
    total.backward()
    val, grad = _ref_tensors(xb.detach().float(), t, 0.25, 2.0, 1.0)
    torch.testing.assert_close(el.double(), val, rtol=1e-5, atol=1e-7)
    assert float(total) == pytest.approx(float(val.sum()) / 3.0, rel=1e-5)
    torch.testing.assert_close(xb.grad.float(), (grad / 3.0).float(), rtol=1e-2, atol=1e-3)


def test_forward_weights_and_normalizer():
    x = torch.randn(4, 3)
    t = torch.zeros(4, 3)
    t[0, 1] = 1
    w = torch.tensor([1.0, 0.0, 1.0, 2.0])[:, None]
    loss_fn = FocalLossStar()
    assert float(loss_fn(x, t, w, 2.0)) == pytest.approx(
        float((loss_fn.elements(x, t) * w).sum() / 2.0))


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=-1.0), r"gamma=-1.0 is not valid; expected a number in \(0.0, inf\]"),
    (dict(gamma=0.0), r"gamma=0.0 is not valid; expected a number in \(0.0, inf\]"),
    (dict(alpha=1.5), r"alpha=1.5 is not valid; expected a number in \[0.0, 1.0\]"),
    (dict(alpha=-0.1), r"alpha=-0.1 is not valid; expected a number in \[0.0, 1.0\]"),
    (dict(beta=float("nan")), r"beta=nan is not valid"),
])
def test_bad_hyperparameters_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FocalLossStar(**kwargs)
