"""Evaluating a Sampling-Free checkpoint needs no recount: the class-adaptive thresholds are
persistent buffers restored from the checkpoint (strictly: another architecture is refused)."""
import pytest
import torch

from balanced_det.engine import Checkpointer, do_test, do_train
from balanced_det.engine.train_loop import build_model

from conftest import all_config_files, rel
from helpers import tiny_cfg

CFG = [p for p in all_config_files()
       if rel(p) == "Synthetic/sampling_free_retinanet_effnet_lite0_FPN.py"][0]


@pytest.mark.slow
def test_eval_only_uses_checkpoint_thresholds(tmp_path, monkeypatch):
    cfg = tiny_cfg(CFG, tmp_path)
    do_train(cfg)
    trained = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    theta = trained["class_score_thresholds.values"]
    assert theta.shape == (3,) and (theta > 0).all() and (theta < 0.05).all()

    import balanced_det.stats as stats

    def no_recount(*a, **k):
        raise AssertionError("statistics recounted at evaluation")

    monkeypatch.setattr(stats, "compute_dataset_stats", no_recount)
    model = build_model(cfg, with_dataset_stats=False)
    Checkpointer(model).load(str(tmp_path / "model_final.pth"), strict=True)
    assert torch.equal(model.class_score_thresholds.values, theta)
    assert "bbox" in do_test(cfg, model)
