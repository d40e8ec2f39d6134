"""balanced_det.ops.balanced_l1: Balanced L1 loss (docs/methods/libra.md)."""
import math

import pytest
import torch

from balanced_det.ops.balanced_l1 import balanced_l1_loss


def ref(x, alpha=0.5, gamma=1.5, beta=1.0):
    """Scalar closed form, straight from the formula of docs/methods/libra.md."""
    b = math.exp(gamma / alpha) - 1
    x = abs(x)
    if x < beta:
        return alpha / b * (b * x + 1) * math.log(b * x / beta + 1) - alpha * x
    return gamma * x + gamma / b - alpha * beta


def ref_slope(x, alpha=0.5, gamma=1.5, beta=1.0):
    b = math.exp(gamma / alpha) - 1
    if x < beta:
        return (alpha * math.log(b * x / beta + 1)
                + alpha * (b * x + 1) / (beta * (b * x / beta + 1)) - alpha)
    return gamma


def test_hand_values():
    b = math.e**3 - 1  # 19.0855...
    assert abs(b - 19.0855) < 1e-3
    # x = 2 >= beta: 1.5 * 2 + 1.5 / b - .5 = 2.5 + 0.0786 = 2.5786
    v = balanced_l1_loss(torch.tensor([2.0]), torch.zeros(1))
    assert abs(v.item() - (2.5 + 1.5 / b)) < 1e-5 and abs(v.item() - 2.5786) < 1e-4
    assert balanced_l1_loss(torch.tensor([0.0]), torch.zeros(1)).item() == 0.0


@pytest.mark.parametrize("beta", [1.0, 0.11])
def test_matches_closed_form(beta):
    xs = [-3.0, -1.0, -0.3, -0.05, 0.0, 0.01, 0.1, 0.5, 0.99, 1.5, 4.0]
    inp = torch.tensor(xs) + 0.7
    tgt = torch.full((len(xs),), 0.7)
    got = balanced_l1_loss(inp, tgt, beta=beta, reduction="none")
    want = torch.tensor([ref(x, beta=beta) for x in xs])
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(balanced_l1_loss(inp, tgt, beta=beta), want.sum(), atol=1e-4)
    mean = balanced_l1_loss(inp, tgt, beta=beta, reduction="mean")
    assert torch.allclose(mean, want.mean(), atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 0.11])
def test_value_continuous_at_beta(beta):
    eps = 1e-4
    x = torch.tensor([beta - eps, beta, beta + eps])
    v = balanced_l1_loss(x, torch.zeros(3), beta=beta, reduction="none")
    assert abs(v[0] - v[1]) < 1e-3 and abs(v[2] - v[1]) < 1e-3


def test_slope_jump_at_small_beta_is_reference_behaviour():
    # beta = 1: inner slope at 1 = gamma + alpha((b + 1)/(b + 1) - 1) = gamma (smooth)
    assert abs(ref_slope(1.0 - 1e-9) - 1.5) < 1e-6
    # beta = .11: inner slope at beta = 1.5 + .5 ((.11 b + 1)/(.11 (b + 1)) - 1)
    #           = 1.5 + .5 (3.0994 / 2.2094 - 1) = 1.7014  !=  1.5 outside
    inner = ref_slope(0.11 - 1e-9, beta=0.11)
    assert abs(inner - 1.7014) < 1e-3
    x = torch.tensor([0.11 - 1e-3, 0.11 + 1e-3], requires_grad=True)
    balanced_l1_loss(x, torch.zeros(2), beta=0.11).backward()
    assert abs(x.grad[1].item() - 1.5) < 1e-5 and abs(x.grad[0].item() - inner) < 0.05


@pytest.mark.parametrize("beta", [1.0, 0.11])
def test_gradient_matches_finite_differences(beta):
    xs = torch.tensor([-2.0, -0.5, -0.05, 0.02, 0.08, 0.3, 0.8, 1.7], dtype=torch.float64)
    x = xs.clone().float().requires_grad_()
    balanced_l1_loss(x, torch.zeros_like(x), beta=beta).backward()
    h = 1e-6
    fd = torch.tensor([(ref(v + h, beta=beta) - ref(v - h, beta=beta)) / (2 * h)
                       for v in xs.tolist()])
    assert torch.allclose(x.grad, fd.float(), atol=1e-3, rtol=1e-3)
    # and the autograd of the function against its own float32 finite differences
    x32 = xs.float()
    e = 1e-2
    own = (balanced_l1_loss(x32 + e, torch.zeros(8), beta=beta, reduction="none")
           - balanced_l1_loss(x32 - e, torch.zeros(8), beta=beta, reduction="none")) / (2 * e)
    away = (x32.abs() - beta).abs() > 2 * e
    assert torch.allclose(x.grad[away], own[away], atol=2e-2, rtol=2e-2)


def test_empty_dtype_and_errors():
    e = torch.zeros(0, 4, requires_grad=True)
    for red in ("sum", "mean"):
        v = balanced_l1_loss(e, torch.zeros(0, 4), reduction=red)
        assert v.item() == 0.0 and not torch.isnan(v)
    assert balanced_l1_loss(e, torch.zeros(0, 4), reduction="none").shape == (0, 4)
    a, b = torch.randn(10, 4).bfloat16(), torch.randn(10, 4).bfloat16()
    v = balanced_l1_loss(a, b, reduction="none")
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    with pytest.raises(ValueError):
        balanced_l1_loss(torch.zeros(1), torch.zeros(1), reduction="avg")
