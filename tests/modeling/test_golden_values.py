"""Every CPU method config computes the recorded losses and detections (tests/golden.py).

The values were recorded before the plug-in redesign; the redesign must not change them.
Tolerance: 1e-6 relative + 1e-6 absolute on losses, thresholds and scores, 1e-4 px absolute
on boxes (coordinates up to 320 px: 3e-7 relative). On the machine that recorded them the
values are reproduced bit for bit (one thread); the tolerance only absorbs float32 rounding
that can differ between the CPU kernels (vector widths) of other machines. Detection classes
and counts must be equal.
"""
import json

import pytest
import torch

import golden

with open(golden.GOLDEN_FILE) as _f:
    GOLDEN = json.load(_f)
TOL = dict(rtol=1e-6, atol=1e-6)
BOX_TOL = dict(rtol=1e-6, atol=1e-4)


def test_every_cpu_config_has_golden_values():
    assert sorted(golden.config_id(p) for p in golden.golden_config_paths()) == sorted(GOLDEN)


def _close(actual, expected, what, tol=TOL):
    torch.testing.assert_close(torch.tensor(actual, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), **tol,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("path", golden.golden_config_paths(), ids=golden.config_id)
def test_config_reproduces_golden_values(path):
    want = GOLDEN[golden.config_id(path)]
    got = golden.run_golden_job(path)
    for it, (g, w) in enumerate(zip(got["losses"], want["losses"])):
        assert sorted(g) == sorted(w), f"iteration {it}: loss names"
        for k in w:
            _close(g[k], w[k], f"iteration {it} {k}")
    assert got["num_detections"] == want["num_detections"]
    assert got["classes"] == want["classes"]
    if want["boxes"]:
        _close(got["boxes"], want["boxes"], "boxes", BOX_TOL)
        _close(got["scores"], want["scores"], "scores")
    assert len(got["class_thresholds"]) == len(want["class_thresholds"])
    for g, w in zip(got["class_thresholds"], want["class_thresholds"]):
        _close(g, w, "class thresholds")
