"""Balanced FPN (Libra): shapes, the integrate/refine/strengthen maths, zero-initialised refine."""
import pytest
import torch
import torch.nn.functional as F

from balanced_det.modeling.backbone import build_efficientnet_lite0_fpn
from balanced_det.modeling.necks.balanced_fpn import BalancedFPN, NonLocal2d


@pytest.fixture(scope="module")
def fpn():
    torch.manual_seed(0)
    return build_efficientnet_lite0_fpn(out_channels=32, top_block="p6p7", pretrained=False).eval()


def test_shapes_and_interface(fpn):
    bfp = BalancedFPN(fpn, refine_level=1)
    x = torch.randn(1, 3, 128, 160)
    out = bfp(x)
    ref = fpn(x)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in ref.items()}
    assert bfp.output_shape() == fpn.output_shape()
    assert bfp.size_divisibility == fpn.size_divisibility
    with pytest.raises(ValueError, match="refine_level"):
        BalancedFPN(fpn, refine_level=5)


def test_initial_output_is_fpn_plus_resized_mean(fpn):
    """At init the non-local block is the identity, so P'_l = P_l + resize_l(mean_k resize(P_k))
    (computed here step by step, independently)."""
    bfp = BalancedFPN(fpn, refine_level=1)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        p = fpn(x)
        names = ["p3", "p4", "p5", "p6", "p7"]
        size = p["p4"].shape[-2:]
        to_ref = [F.max_pool2d(p["p3"], 2), p["p4"]] + [
            F.interpolate(p[k], size=size, mode="nearest") for k in names[2:]]
        mean = sum(to_ref) / 5
        out = bfp(x)
    assert torch.allclose(out["p4"], p["p4"] + mean, atol=1e-5)
    assert torch.allclose(out["p3"], p["p3"] + F.interpolate(mean, scale_factor=2, mode="nearest"), atol=1e-5)
    assert torch.allclose(out["p5"], p["p5"] + F.adaptive_max_pool2d(mean, p["p5"].shape[-2:]), atol=1e-5)


def test_non_local_maths_and_gradients():
    torch.manual_seed(0)
    block = NonLocal2d(8, 4)
    x = torch.randn(1, 8, 3, 5, requires_grad=True)
    assert torch.equal(block(x), x)  # zero-initialised output conv
    torch.nn.init.normal_(block.conv_out.weight)
    y = block(x)
    # Independent evaluation of x + W_out(softmax(theta^T phi) g).
    t = block.theta(x).flatten(2)[0]  # C' x HW
    ph = block.phi(x).flatten(2)[0]
    g = block.g(x).flatten(2)[0]
    a = torch.softmax(t.T @ ph, dim=-1)  # HW x HW
    z = (g @ a.T).reshape(1, 4, 3, 5)
    assert torch.allclose(y, x + block.conv_out(z), atol=1e-5)
    y.sum().backward()
    assert block.theta.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
