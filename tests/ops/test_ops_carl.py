"""balanced_det.ops.carl: classification-aware regression loss (docs/methods/pisa.md)."""
import torch

from balanced_det.ops.carl import carl_loss, carl_weights


def smooth_l1(diff, beta=1.0):
    """Smooth L1 written out (the box loss of PISA's configs)."""
    x = diff.float().abs()
    return x if beta < 1e-5 else torch.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)


def _box(pred, tgt, beta=1.0):
    return smooth_l1(pred - tgt, beta).sum(-1)


def test_carl_hand_value_two_positives():
    # p = [.5, 1.0], b = .2, k = 1: v = [.6, 1.0], mean .8, c = [.75, 1.25]
    # diffs: (.5, 0, 0, 0) -> SmoothL1_1 = .5 * .25 = .125 ; (2, 0, 0, 0) -> 2 - .5 = 1.5
    # L = (.75 * .125 + 1.25 * 1.5) / 2 = (.09375 + 1.875) / 2 = .984375
    p = torch.tensor([0.5, 1.0])
    pred = torch.tensor([[0.5, 0, 0, 0], [2.0, 0, 0, 0]])
    tgt = torch.zeros(2, 4)
    assert torch.allclose(carl_weights(p), torch.tensor([0.75, 1.25]))
    assert torch.allclose(carl_loss(p, _box(pred, tgt)), torch.tensor(0.984375))
    # avg_factor (e.g. 512 sampled ROIs)
    assert torch.allclose(carl_loss(p, _box(pred, tgt), avg_factor=512), torch.tensor(0.984375 * 2 / 512))
    # k = 2: v = [.36, 1], mean .68 -> c = [.5294, 1.4706]
    c = torch.tensor([0.36, 1.0]) / 0.68
    want = (c * torch.tensor([0.125, 1.5])).sum() / 2
    assert torch.allclose(carl_loss(p, _box(pred, tgt), k=2.0), want)
    # beta = 0 -> L1: (.75 * .5 + 1.25 * 2) / 2
    assert torch.allclose(carl_loss(p, _box(pred, tgt, beta=0.0)), torch.tensor((0.375 + 2.5) / 2))


def test_carl_weights_average_one():
    p = torch.rand(37)
    c = carl_weights(p, k=1.5, bias=0.1)
    assert torch.allclose(c.mean(), torch.tensor(1.0))
    assert (c[p.argsort()].diff() >= 0).all()  # higher probability -> higher weight


def _deltas():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(5, 4, generator=g)


def test_gradient_reaches_classifier_softmax():
    logits = torch.randn(5, 4, requires_grad=True)
    gt = torch.tensor([0, 1, 2, 0, 1])
    probs = logits.softmax(-1)[torch.arange(5), gt]
    pred, tgt = _deltas()
    loss = carl_loss(probs, _box(pred, tgt))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_gradient_reaches_classifier_sigmoid():
    logits = torch.randn(5, 3, requires_grad=True)
    gt = torch.tensor([0, 1, 2, 0, 1])
    probs = logits.sigmoid()[torch.arange(5), gt]
    pred, tgt = _deltas()
    carl_loss(probs, _box(pred, tgt)).backward()
    assert logits.grad.abs().sum() > 0


def test_zero_positives_graph_connected_zero():
    logits = torch.randn(0, 4, requires_grad=True)
    probs = logits.softmax(-1)[:, 0]
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = carl_loss(probs, _box(pred, torch.zeros(0, 4)))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bfloat16_inputs():
    logits = torch.randn(6, 3).bfloat16().requires_grad_()
    probs = logits.softmax(-1)[:, 1]
    pred = torch.randn(6, 4).bfloat16().requires_grad_()
    loss = carl_loss(probs, _box(pred, torch.randn(6, 4).bfloat16()))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad.float()).all()
