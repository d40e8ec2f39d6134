"""balanced_det.ops.sampling_free: prior biases, thresholds, guided loss, BCE
(docs/methods/sampling_free.md)."""

import math

import pytest
import torch

from balanced_det.modeling.losses import GuidedLoss, SigmoidBCELoss
from balanced_det.ops.sampling_free import (
    class_adaptive_thresholds,
    guided_loss_ratio,
    sigmoid_prior_bias,
    softmax_prior_bias,
)


@pytest.mark.parametrize("f,c", [(0.01, 80), (1e-4, 1), (0.5, 3), (0.3, 1)])
def test_sigmoid_prior_bias_gives_pi(f, c):
    b = sigmoid_prior_bias(f, c)
    assert torch.sigmoid(torch.tensor(b, dtype=torch.float64)).item() == pytest.approx(
        f / c, rel=1e-9
    )


def test_sigmoid_prior_bias_hand_value():
    # f = 0.02, C = 1 -> pi = 0.02, b = -log(0.98 / 0.02) = -log(49)
    assert sigmoid_prior_bias(0.02, 1) == pytest.approx(-math.log(49.0))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_prior_bias_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="fg_fraction"):
        sigmoid_prior_bias(bad, 3)
    with pytest.raises(ValueError, match="fg_fraction"):
        softmax_prior_bias(bad, 3)


@pytest.mark.parametrize("c", [0, -2])
def test_prior_bias_rejects_bad_num_classes(c):
    with pytest.raises(ValueError, match="num_classes"):
        sigmoid_prior_bias(0.1, c)
    with pytest.raises(ValueError, match="num_classes"):
        softmax_prior_bias(0.1, c)


@pytest.mark.parametrize("f,c", [(0.25, 80), (0.1, 3), (0.5, 1), (0.9, 2)])
def test_softmax_prior_bias_initial_probabilities(f, c):
    fg, bg = softmax_prior_bias(f, c)
    logits = torch.tensor([fg] * c + [bg], dtype=torch.float64)  # detectron2: background last
    p = logits.softmax(0)
    torch.testing.assert_close(p[:c], torch.full((c,), f / c, dtype=torch.float64))
    assert p[c].item() == pytest.approx(1 - f)


def test_softmax_prior_bias_hand_value():
    # C = 3, f = 0.25: e^b = C/f - C = 12 - 3 = 9 -> p_fg = 1 / (3 + 9) = 1/12 = f / C
    fg, bg = softmax_prior_bias(0.25, 3)
    assert fg == 0.0 and bg == pytest.approx(math.log(9.0))


def test_class_adaptive_thresholds_hand_example():
    # f = 0.1, N = [1, 3, 0, 6], sum 10 -> theta = 0.1 * N / 10 = [0.01, 0.03, -, 0.06];
    # the empty class gets the smallest positive threshold (0.01) by default
    th = class_adaptive_thresholds(0.1, [1, 3, 0, 6])
    assert th.dtype == torch.float32
    torch.testing.assert_close(th, torch.tensor([0.01, 0.03, 0.01, 0.06]))
    th0 = class_adaptive_thresholds(0.1, torch.tensor([1, 3, 0, 6]), empty_class_threshold=0.0)
    torch.testing.assert_close(th0, torch.tensor([0.01, 0.03, 0.0, 0.06]))


def test_class_adaptive_thresholds_errors():
    with pytest.raises(ValueError, match="all zero"):
        class_adaptive_thresholds(0.1, [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        class_adaptive_thresholds(0.1, [1, -1])
    with pytest.raises(ValueError, match="1-D"):
        class_adaptive_thresholds(0.1, [[1, 2]])
    with pytest.raises(ValueError, match="fg_fraction"):
        class_adaptive_thresholds(1.0, [1, 2])


def test_guided_ratio_value_and_detached():
    reg = torch.tensor(2.0, requires_grad=True)
    cls = torch.tensor(4.0, requires_grad=True)
    r = guided_loss_ratio(reg, cls)
    assert r.item() == pytest.approx(0.5) and not r.requires_grad
    assert guided_loss_ratio(reg, cls, w_reg=3.0).item() == pytest.approx(1.5)
    # L = w_cls * r * L_cls; dL/dL_cls = w_cls * r, nothing flows to L_reg through r
    out, _ = GuidedLoss(w_cls=2.0).classification(cls, reg, True)
    assert out.item() == pytest.approx(2.0 * 0.5 * 4.0)  # = w_reg * L_reg * w_cls = 4
    out.backward()
    assert cls.grad.item() == pytest.approx(2.0 * 0.5)
    assert reg.grad is None


def test_guided_ratio_is_one_without_foreground_or_cls_loss():
    reg = torch.tensor(2.0)
    cls = torch.tensor(4.0)
    assert guided_loss_ratio(reg, cls, has_foreground=torch.tensor(False)).item() == 1.0
    assert guided_loss_ratio(reg, cls, has_foreground=False).item() == 1.0
    assert guided_loss_ratio(reg, cls, has_foreground=torch.tensor(True)).item() == pytest.approx(
        0.5
    )
    assert guided_loss_ratio(reg, torch.tensor(0.0)).item() == 1.0
    cls_g = torch.tensor(4.0, requires_grad=True)
    out, _ = GuidedLoss().classification(cls_g, reg, torch.tensor(False))
    assert out.item() == pytest.approx(4.0)
    out.backward()
    assert cls_g.grad.item() == pytest.approx(1.0)


def test_guided_ratio_half_precision_inputs():
    r = guided_loss_ratio(
        torch.tensor(2.0, dtype=torch.bfloat16), torch.tensor(4.0, dtype=torch.float16)
    )
    assert r.dtype == torch.float32 and r.item() == pytest.approx(0.5)


def _sampling_free_bce(logits, targets, num_pos, valid=None):
    """RetinaNet-None's loss as the RPN / RetinaNet call it: BCE summed over the valid
    elements, divided by max(num_pos, 1)."""
    weights = None if valid is None else valid.float()
    return SigmoidBCELoss()(logits, targets, weights,
                            torch.as_tensor(num_pos, dtype=torch.float32).clamp(min=1))


def test_bce_sampling_free_normalisation_hand_example():
    # 2 anchors x 2 classes, logits [[ln 3, 0], [0, -ln 3]], targets [[1, 0], [0, 0]]
    # sigmoid(ln 3) = 0.75: BCE = -ln 0.75; sigmoid(0) = 0.5: BCE = ln 2 (both targets);
    # sigmoid(-ln 3) = 0.25, target 0: BCE = -ln 0.75.
    # sum = 2 (-ln 0.75) + 2 ln 2 ; divided by max(num_pos, 1)
    logits = torch.tensor([[math.log(3), 0.0], [0.0, -math.log(3)]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    total = -2 * math.log(0.75) + 2 * math.log(2)
    assert _sampling_free_bce(logits, targets, 1).item() == pytest.approx(total, rel=1e-6)
    assert _sampling_free_bce(logits, targets, 2).item() == pytest.approx(total / 2, rel=1e-6)
    assert _sampling_free_bce(logits, targets, 0.0).item() == pytest.approx(total, rel=1e-6)
    # second anchor ignored (label < 0): only row 0 counts: -ln 0.75 + ln 2
    valid = torch.tensor([[True], [False]])
    assert _sampling_free_bce(logits, targets, 1, valid).item() == pytest.approx(
        -math.log(0.75) + math.log(2), rel=1e-6
    )


def test_bce_sampling_free_empty_and_bf16():
    logits = torch.randn(0, 4, requires_grad=True)
    loss = _sampling_free_bce(logits, torch.zeros(0, 4), 0)
    assert loss.item() == 0.0
    loss.backward()
    x = torch.randn(5, 3, requires_grad=True)
    loss = _sampling_free_bce(x, torch.zeros(5, 3), 0, torch.zeros(5, 1, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(5, 3))
    xb = torch.randn(5, 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _sampling_free_bce(xb.float(), torch.zeros(5, 3), 2)
    assert out.dtype == torch.float32 and torch.isfinite(out)
