"""Checkpoint/resume round trip through train_net's code path; atomic, readable checkpoints."""
import json
import os
import shutil

import pytest
import torch

from balanced_det.engine import CheckpointLoadError, Checkpointer, do_train
from balanced_det.engine.train_loop import build_model

from conftest import all_config_files, rel
from helpers import tiny_cfg

CFG = [p for p in all_config_files() if rel(p) == "Trees/fcos_effnet_lite0_FPN.py"][0]


def _metrics(out):
    """iteration -> logged values (training lines of metrics.json)."""
    rows = {}
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if "lr" in row:
                rows[row["iteration"]] = row
    return rows


@pytest.mark.slow
def test_resume_continues_at_the_right_iteration(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    cfg = tiny_cfg(CFG, run_a, max_iter=4)
    cfg.train.checkpointer.period = 2
    do_train(cfg)  # uninterrupted: model_0000001.pth (after iteration 1), model_final.pth
    ckpt_1 = torch.load(run_a / "model_0000001.pth", weights_only=True)
    assert ckpt_1["iteration"] == 1
    assert "loss_normalizer" in {k.split(".")[-1] for k in ckpt_1["model"]}

    # Run B was interrupted after iteration 1: its folder holds that checkpoint only.
    run_b.mkdir()
    shutil.copy(run_a / "model_0000001.pth", run_b / "model_0000001.pth")
    (run_b / "last_checkpoint").write_text("model_0000001.pth")
    cfg_b = tiny_cfg(CFG, run_b, max_iter=4)
    cfg_b.train.checkpointer.period = 2
    do_train(cfg_b, resume=True)

    a, b = _metrics(run_a), _metrics(run_b)
    assert sorted(a) == [0, 1, 2, 3]
    assert sorted(b) == [2, 3], "resumed at the iteration after the checkpoint"
    for it in (2, 3):  # same LR schedule position
        assert b[it]["lr"] == pytest.approx(a[it]["lr"])
    final_b = torch.load(run_b / "model_final.pth", weights_only=True)
    assert final_b["iteration"] == 3
    final_a = torch.load(run_a / "model_final.pth", weights_only=True)
    assert final_b["trainer"]["iteration"] == final_a["trainer"]["iteration"] == 3
    assert final_b["trainer"]["hooks"]["LRScheduler"] == final_a["trainer"]["hooks"]["LRScheduler"]


def test_save_is_atomic_and_truncated_file_is_reported(tmp_path):
    cfg = tiny_cfg(CFG, tmp_path)
    model = build_model(cfg)
    ck = Checkpointer(model, str(tmp_path))
    ck.save("model_a", iteration=0)
    ck.save("model_b", iteration=1)
    assert (tmp_path / "last_checkpoint").read_text() == "model_b.pth"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    data = (tmp_path / "model_b.pth").read_bytes()
    (tmp_path / "model_b.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointLoadError, match=r"model_b\.pth.*truncated.*model_a\.pth"):
        Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert (tmp_path / "model_a.pth").read_bytes()  # the previous checkpoint is still there
