"""balanced_det.ops.box_refine: DW box refinement by deformable 1x1 sampling, against a
per-side ``grid_sample`` reference (docs/methods/dw.md)."""

import pytest
import torch
import torch.nn.functional as F

from balanced_det.ops.box_refine import ltrb_box_maps, refine_ltrb, refine_sampling_offsets


def refine_ltrb_reference(ltrb, offsets, stride, offset=0.5):
    """:func:`refine_ltrb` computed side by side with ``F.grid_sample`` (bilinear, zero padding,
    ``align_corners=True``: pixel k of the map sits at normalised ``2k / (W - 1) - 1``, as
    deform_conv2d samples at integer cell indices plus the offset). Needs H, W >= 2."""
    dt = torch.float64 if ltrb.dtype == torch.float64 else torch.float32
    ltrb, offsets = ltrb.to(dt), offsets.to(dt)
    n, _, h, w = ltrb.shape
    if h < 2 or w < 2:
        raise ValueError(f"refine_ltrb_reference needs H, W >= 2, got {(h, w)}")
    boxes = ltrb_box_maps(ltrb, stride, offset)
    samp = refine_sampling_offsets(ltrb, offsets, stride)
    rows = torch.arange(h, dtype=dt, device=ltrb.device)[None, :, None]
    cols = torch.arange(w, dtype=dt, device=ltrb.device)[None, None, :]
    sides = []
    for k in range(4):  # x1, y1, x2, y2
        py = rows + samp[:, 2 * k]
        px = cols + samp[:, 2 * k + 1]
        grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)  # (x, y)
        sides.append(F.grid_sample(boxes[:, k:k + 1], grid, mode="bilinear",
                                   padding_mode="zeros", align_corners=True)[:, 0])
    x1, y1, x2, y2 = sides
    x = ((torch.arange(w, dtype=dt, device=ltrb.device) + offset) * stride)[None, None, :]
    y = ((torch.arange(h, dtype=dt, device=ltrb.device) + offset) * stride)[None, :, None]
    return F.relu(torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=1))


def random_inputs(n=2, h=5, w=6, stride=8.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ltrb = (torch.rand(n, 4, h, w, generator=g, dtype=torch.float64) * 3 * stride + 0.3).to(dtype)
    off = (torch.randn(n, 8, h, w, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    return ltrb, off


@pytest.mark.parametrize("stride", [8.0, 32.0])
def test_deform_matches_grid_sample_reference(stride):
    ltrb, off = random_inputs(stride=stride)
    torch.testing.assert_close(
        refine_ltrb(ltrb, off, stride),
        refine_ltrb_reference(ltrb, off, stride),
        rtol=1e-10,
        atol=1e-10,
    )
    ltrb32, off32 = ltrb.float(), off.float()
    out = refine_ltrb(ltrb32, off32, stride)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, refine_ltrb_reference(ltrb32, off32, stride), rtol=1e-5, atol=1e-4
    )


def test_sampling_offsets_layout():
    # (dy, dx) per side: x1 at (o0, o1 - l/s), y1 at (o2 - t/s, o3),
    #                    x2 at (o4, o5 + r/s), y2 at (o6 + b/s, o7)
    ltrb = torch.tensor([8.0, 16.0, 24.0, 32.0]).view(1, 4, 1, 1)
    off = torch.arange(8.0).view(1, 8, 1, 1)
    samp = refine_sampling_offsets(ltrb, off, 8.0).flatten()
    torch.testing.assert_close(samp, torch.tensor([0.0, 1 - 1, 2 - 2, 3, 4, 5 + 3, 6 + 4, 7]))
    # box maps: point of cell (0, 0) with stride 8 at (4, 4): (4 - 8, 4 - 16, 4 + 24, 4 + 32)
    torch.testing.assert_close(
        ltrb_box_maps(ltrb, 8.0).flatten(), torch.tensor([-4.0, -12.0, 28.0, 36.0])
    )


def test_zero_inputs_and_consistent_boxes_are_fixed_points():
    s = 8.0
    zero = refine_ltrb(torch.zeros(1, 4, 3, 4), torch.zeros(1, 8, 3, 4), s)
    assert torch.equal(zero, torch.zeros(1, 4, 3, 4))
    # Every point predicts the same absolute box [2.5 s, 1.5 s, 5.5 s, 4.5 s] on an 6 x 8 map:
    # with zero offsets each side is read at its own edge (x1 at column x1/s - 0.5 = 2, ...), where
    # the constant map holds the same value, so the refinement returns relu(ltrb) unchanged.
    h, w = 6, 8
    box = torch.tensor([2.5 * s, 1.5 * s, 5.5 * s, 4.5 * s], dtype=torch.float64)
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * s
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * s
    X, Y = xs[None, :].expand(h, w), ys[:, None].expand(h, w)
    ltrb = torch.stack([X - box[0], Y - box[1], box[2] - X, box[3] - Y])[None]
    out = refine_ltrb(ltrb, torch.zeros(1, 8, h, w, dtype=torch.float64), s)
    torch.testing.assert_close(out, ltrb.clamp(min=0))
    # a whole-cell offset along x for x1 (o1 = +1) reads the same constant map: unchanged as well
    off = torch.zeros(1, 8, h, w, dtype=torch.float64)
    off[:, 1] = 1.0
    torch.testing.assert_close(refine_ltrb(ltrb, off, s), ltrb.clamp(min=0))


def test_sampling_outside_the_map_gives_zero_box_side():
    # a dx of -100 cells for x1 reads outside the map: x1' = 0 -> l' = relu(x - 0) = x
    ltrb, off = random_inputs(n=1, h=3, w=4)
    off = off.clone()
    off[:, 1] = -100.0
    out = refine_ltrb(ltrb, off, 8.0)
    xs = (torch.arange(4, dtype=torch.float64) + 0.5) * 8
    torch.testing.assert_close(out[0, 0], xs[None, :].expand(3, 4))


def test_gradients_reach_ltrb_and_offsets():
    ltrb, off = random_inputs(n=1, h=3, w=4, seed=3)
    ltrb.requires_grad_(True)
    off.requires_grad_(True)
    out = refine_ltrb(ltrb, off, 8.0)
    out.sum().backward()
    assert ltrb.grad.abs().sum() > 0 and off.grad.abs().sum() > 0
    # same gradients as the grid_sample reference
    l2 = ltrb.detach().clone().requires_grad_(True)
    o2 = off.detach().clone().requires_grad_(True)
    refine_ltrb_reference(l2, o2, 8.0).sum().backward()
    torch.testing.assert_close(ltrb.grad, l2.grad)
    torch.testing.assert_close(off.grad, o2.grad)


def test_gradcheck_both_inputs():
    ltrb, off = random_inputs(n=1, h=3, w=3, stride=4.0, seed=7)
    ltrb.requires_grad_(True)
    off.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: refine_ltrb(a, b, 4.0), (ltrb, off), eps=1e-6, atol=1e-5
    )


def test_half_precision_inputs_give_float32():
    ltrb, off = random_inputs(dtype=torch.float32)
    out = refine_ltrb(ltrb.bfloat16(), off.bfloat16(), 8.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out = refine_ltrb(ltrb.half(), off.half(), 8.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="offsets"):
        refine_ltrb(torch.zeros(1, 4, 3, 3), torch.zeros(1, 6, 3, 3), 8.0)
    with pytest.raises(ValueError, match="4 channels"):
        refine_ltrb(torch.zeros(1, 3, 3, 3), torch.zeros(1, 8, 3, 3), 8.0)
    with pytest.raises(ValueError, match="H, W >= 2"):
        refine_ltrb_reference(torch.zeros(1, 4, 1, 3), torch.zeros(1, 8, 1, 3), 8.0)
