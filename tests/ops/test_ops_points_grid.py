"""balanced_det.ops.points.grid_inside_pairs: the (box, point) pairs of a point grid from each
box's cell ranges equal, in value and order, the nonzero of the (G, P) strict inside test;
DW's terms and weights are the same with and without the grid; DW-FCOS passes its grid."""

import pytest
import torch

from balanced_det.ops.dw import dw_image_terms, dw_image_weights
from balanced_det.ops.points import grid_inside_pairs, grid_points, point_grid


def mask_pairs(points, boxes):
    """The straightforward form: x1 < x < x2 and y1 < y < y2 for every (box, point)."""
    x, y = points[:, 0], points[:, 1]
    b = boxes[:, :, None]
    inside = (x > b[:, 0]) & (x < b[:, 2]) & (y > b[:, 1]) & (y < b[:, 3])
    return inside.nonzero().unbind(1)


def random_case(g, trial):
    L = int(torch.randint(1, 5, (1,), generator=g))
    strides = [int(s) for s in torch.tensor([6, 8, 12, 16, 32, 64, 128])[
        torch.randint(0, 7, (L,), generator=g)]]
    sizes = [(int(torch.randint(1, 20, (1,), generator=g)),
              int(torch.randint(1, 20, (1,), generator=g))) for _ in strides]
    offset = (0.5, 0.0, 0.25)[trial % 3]
    points, _, _ = grid_points(sizes, strides, offset)
    G = int(torch.randint(0, 12, (1,), generator=g))
    # three kinds of boxes: corners exactly on point coordinates, random (partly or wholly
    # outside the grid), and on-point corners moved by 1e-3
    corner = points[torch.randint(0, points.shape[0], (G, 2), generator=g)]
    on_points = torch.stack([corner[:, 0, 0], corner[:, 0, 1], corner[:, 1, 0], corner[:, 1, 1]], 1)
    kind = torch.randint(0, 3, (G, 1), generator=g)
    boxes = torch.where(kind == 0, on_points, torch.where(
        kind == 1, torch.rand(G, 4, generator=g) * 500 - 50,
        on_points + torch.randn(G, 4, generator=g) * 1e-3))
    if trial % 2:  # ordered corners; otherwise some boxes are empty (x2 <= x1 or y2 <= y1)
        boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]),
                           torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    return sizes, strides, offset, points, boxes


def test_pairs_equal_the_inside_test_on_random_grids_and_boxes_on_the_points():
    g = torch.Generator().manual_seed(0)
    on_edge = 0
    for trial in range(200):
        sizes, strides, offset, points, boxes = random_case(g, trial)
        ref = mask_pairs(points, boxes)
        out = grid_inside_pairs(point_grid(sizes, strides, offset), boxes)
        assert out[0].dtype == out[1].dtype == torch.long
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]), trial
        on_edge += int((points[:, 0][None] == boxes[:, :1]).sum())
    assert on_edge > 100  # the boundary case (a point on an edge: outside) was exercised


@pytest.mark.parametrize("offset", [0.5, 0.0])
def test_pairs_equal_the_inside_test_for_infinite_huge_and_nan_edges(offset):
    sizes, strides = [(5, 7), (3, 4), (1, 1)], [8, 16, 32]
    points, _, _ = grid_points(sizes, strides, offset)
    inf, nan = float("inf"), float("nan")
    boxes = torch.tensor([[0, 0, inf, 50], [-inf, -inf, inf, inf], [nan, 0, 50, 50],
                          [0, 0, 1e20, 50], [-1e30, 5, 1e30, 1e30], [10, 10, 20, nan],
                          [1e20, 0, 2e20, 50], [-2e20, 0, -1e20, 50]])
    ref = mask_pairs(points, boxes)
    out = grid_inside_pairs(point_grid(sizes, strides, offset), boxes)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    assert set(ref[0].tolist()) == {0, 1, 3, 4}


def test_pairs_equal_the_inside_test_with_denormals_flushed():
    """Edges at 0 and +-0 with offset 0 (a point exactly on the edge: outside), also when the
    process flushes denormals to zero, which breaks any nextafter-style comparison."""
    sizes, strides = [(3, 3), (2, 2)], [8, 16]
    points, _, _ = grid_points(sizes, strides, 0.0)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [-0.0, -0.0, 16.0, 16.0],
                          [1e-40, 0.0, 8.0, 1e-45], [-1e-40, -1e-40, 1e-40, 30.0]])
    try:
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            ref = mask_pairs(points, boxes)
            out = grid_inside_pairs(point_grid(sizes, strides, 0.0), boxes)
            assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]), flush
            assert 0 not in out[1][out[0] == 0].tolist()  # the point at (0, 0) is on the edge
    finally:
        torch.set_flush_denormal(False)  # the default


def test_hand_computed_cells():
    # one level, stride 8, offset 0.5: points at x, y = 4, 12, 20, 28 (4 x 2 grid)
    grid = point_grid([(2, 4)], [8])
    boxes = torch.tensor([[4.0, 0.0, 20.5, 12.5],  # x in (4, 20.5): 12, 20; y: 4, 12
                          [0.0, 4.0, 40.0, 12.0],  # y in (4, 12): none
                          [13.0, 5.0, 27.0, 20.0]])  # x: 20; y: 12
    box, point = grid_inside_pairs(grid, boxes)
    # row-major indices: (x=12, y=4) -> 1, (20, 4) -> 2, (12, 12) -> 5, (20, 12) -> 6
    assert box.tolist() == [0, 0, 0, 0, 2]
    assert point.tolist() == [1, 2, 5, 6, 6]


def test_point_grid_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="2 level sizes but 1 strides"):
        point_grid([(2, 2), (1, 1)], [8])


def _dw_inputs(seed, sizes=((12, 14), (6, 7), (3, 4)), strides=(8, 16, 32), G=9, C=3):
    g = torch.Generator().manual_seed(seed)
    points, strd, _ = grid_points(list(sizes), list(strides))
    P = points.shape[0]
    xy = torch.rand(G, 2, generator=g) * 90
    gt = torch.cat([xy, xy + 4 + torch.rand(G, 2, generator=g) * 60], 1)
    gt[0] = torch.tensor([12.0, 4.0, 28.0, 36.0])  # edges on point coordinates
    labels = torch.randint(0, C, (G,), generator=g)
    boxes = gt[torch.randint(0, G, (P,), generator=g)] + torch.randn(P, 4, generator=g) * 4
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1)
    scores = torch.rand(P, C, generator=g) * 0.9 + 0.05
    return point_grid(list(sizes), list(strides)), points, strd, gt, labels, boxes, scores


@pytest.mark.parametrize("chunk", [None, 4])
def test_dw_terms_and_weights_are_identical_with_the_grid(chunk):
    grid, points, strd, gt, labels, boxes0, s0 = _dw_inputs(1)
    results = []
    for use_grid in (False, True):
        s = s0.clone().requires_grad_(True)
        boxes = boxes0.clone().requires_grad_(True)
        t = dw_image_terms(s, boxes, points, strd, gt, labels, gt_chunk_size=chunk,
                           grid=grid if use_grid else None)
        (t.pos_cls + t.pos_loc + t.neg).backward()
        w = dw_image_weights(s0, boxes0, points, strd, gt, labels, gt_chunk_size=chunk,
                             grid=grid if use_grid else None)
        results.append(([t.pos_cls, t.pos_loc, t.neg, t.neg_norm, t.pos_weight, s.grad,
                         boxes.grad], [w.point_idx, w.gt_idx, w.pos, w.neg_idx, w.neg]))
    (terms_a, w_a), (terms_b, w_b) = results
    assert w_a[0].numel() > 20 and bool((w_a[4] < 1).any())  # real bags, real negatives
    for a, b in zip(terms_a + w_a, terms_b + w_b):
        assert torch.equal(a, b)  # bit for bit: the same pairs in the same order


def test_dw_rejects_a_grid_of_other_points():
    grid, points, strd, gt, labels, boxes, s = _dw_inputs(2)
    other = point_grid([(12, 14), (6, 7)], [8, 16])
    with pytest.raises(ValueError, match=r"grid describes 210 points but the scores have 222 rows"):
        dw_image_terms(s, boxes, points, strd, gt, labels, grid=other)


def test_dw_fcos_training_passes_its_grid(monkeypatch):
    """A real (tiny) DWFCOS training forward hands dw_image_terms the PointGrid of its feature
    maps, and the losses are those of the same forward without the grid, bit for bit."""
    from detectron2.utils.events import EventStorage

    from balanced_det.modeling.meta_arch import dw_fcos
    from helpers_dense import TWO_IMAGES, batch, tiny_dw_fcos

    seen = []
    original = dw_fcos.dw_image_terms

    def spy(*args, grid=None, **kwargs):
        seen.append(grid)
        return original(*args, grid=None if drop == "yes" else grid, **kwargs)

    losses = {}
    for drop in ("no", "yes"):
        monkeypatch.setattr(dw_fcos, "dw_image_terms", spy)
        torch.manual_seed(0)
        model = tiny_dw_fcos().train()
        with EventStorage(0):
            losses[drop] = model(batch(TWO_IMAGES))
    assert len(seen) == 4 and all(g is not None for g in seen)  # one call per image
    feats = model.backbone(model.preprocess_image(batch(TWO_IMAGES)).tensor)
    maps = [feats[f] for f in model.head_in_features]
    points, _, _ = model.points(maps)
    grid = point_grid([m.shape[-2:] for m in maps], model.strides, model.anchor_offset)
    assert torch.equal(seen[0].levels, grid.levels) and seen[0].num_points == points.shape[0]
    for k in losses["no"]:
        assert torch.equal(losses["no"][k], losses["yes"][k]), k
