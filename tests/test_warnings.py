"""Warnings that detectron2 and pycocotools raise about their own code (numpy 2's
``__array__`` copy deprecation) do not reach a user who runs with ``-W error`` through
balanced_det, and balanced_det does not hide the same warning from the user's own code."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from balanced_det.compat import known_warnings_ignored

from conftest import ROOT

# detectron2's COCO mask encoding (np.array of a tensor) and pycocotools' polygon decoding.
THIRD_PARTY_CALLS = """
import torch
import pycocotools.mask as mask_util
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances
out = Instances((8, 8))
out.pred_boxes = Boxes(torch.tensor([[1.0, 1.0, 5.0, 5.0]]))
out.scores = torch.tensor([0.9])
out.pred_classes = torch.tensor([0])
out.pred_masks = torch.zeros(1, 8, 8, dtype=torch.bool)
instances_to_coco_json(out, 1)
mask_util.decode(mask_util.frPyObjects([[1, 1, 5, 1, 5, 5, 1, 5]], 8, 8))
"""


def test_third_party_copy_warnings_are_ignored_where_balanced_det_calls_them():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as `pytest -W error` sets for each test
        with pytest.raises(DeprecationWarning, match="copy keyword"):
            exec(THIRD_PARTY_CALLS, {})
        with known_warnings_ignored():
            exec(THIRD_PARTY_CALLS, {})
            # The same warning from the user's own code still shows.
            with pytest.raises(DeprecationWarning, match="copy keyword"):
                np.array(torch.ones(2))


def test_python_W_error_user_script_sees_only_its_own_warnings():
    script = "import balanced_det\n" + THIRD_PARTY_CALLS + (
        "import numpy as np\n"
        "try:\n"
        "    np.array(torch.ones(2))  # the user's own code\n"
        "except DeprecationWarning as e:\n"
        "    print('user warning raised:', 'copy keyword' in str(e))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "projects"),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "user warning raised: True"


@pytest.mark.slow
def test_train_net_runs_under_W_error(tmp_path):
    """One training iteration and an evaluation of a Trees config under ``python -W error``:
    detectron2's, fvcore's and pycocotools' own warnings do not stop the user's run."""
    cmd = [sys.executable, "-W", "error", os.path.join(ROOT, "train_net.py"), "--config-file",
           os.path.join(ROOT, "configs", "Trees", "fcos_effnet_lite0_FPN.py"),
           "train.device=cpu", "train.max_iter=1", "train.eval_period=1",
           f"train.output_dir={tmp_path}", "dataloader.train.total_batch_size=2",
           "dataloader.train.num_workers=0", "dataloader.test.num_workers=0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (tmp_path / "eval_results.json").exists()
