"""Faults: a NaN loss stops the run with the iteration, the loss name and the last good state
(or is skipped), an fp16 overflow is absorbed by the grad scaler, checkpoints of another
architecture are refused on resume."""
import pytest
import torch

from balanced_det.engine import CheckpointLoadError, Checkpointer, NonFiniteLossError, Trainer, do_train
from balanced_det.engine.train_loop import build_model
from balanced_det.modeling.meta_arch.fcos import FCOS
from detectron2.utils.events import EventStorage

from conftest import all_config_files, rel
from helpers import tiny_cfg

CFG = [p for p in all_config_files() if rel(p) == "Trees/fcos_effnet_lite0_FPN.py"][0]


@pytest.fixture
def nan_at_iteration(monkeypatch):
    """Make FCOS's classification loss NaN from a given iteration on (counted per call)."""
    state = {"calls": 0, "from": None}
    original = FCOS.losses

    def losses(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if state["from"] is not None and state["calls"] >= state["from"]:
            out["loss_fcos_cls"] = out["loss_fcos_cls"] * float("nan")
        state["calls"] += 1
        return out

    monkeypatch.setattr(FCOS, "losses", losses)
    return state


@pytest.mark.slow
def test_nan_stops_with_iteration_name_and_last_good_state(tmp_path, nan_at_iteration):
    nan_at_iteration["from"] = 2
    cfg = tiny_cfg(CFG, tmp_path, max_iter=5)
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: loss_fcos_cls"):
        do_train(cfg)
    good = torch.load(tmp_path / "model_last_good.pth", weights_only=True)
    assert good["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_nan_skip_policy_continues(tmp_path, nan_at_iteration):
    nan_at_iteration["from"] = 1  # NaN at every iteration from 1 on
    cfg = tiny_cfg(CFG, tmp_path, max_iter=3, overrides=["train.nonfinite=skip"])
    do_train(cfg)  # skipped updates do not stop training
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    logged = (tmp_path / "metrics.json").read_text()
    assert '"nonfinite_skipped": 1.0' in logged


def test_fp16_overflow_is_skipped_by_grad_scaler():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    batches = iter([[torch.ones(2, 4)]] * 10)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, batch):
            return {"loss": self.m(batch[0]).pow(2).mean()}

    net = Wrap()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = Trainer(net, batches, opt, device_type="cpu")
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    before = model.weight.detach().clone()
    # An overflowing gradient (as float16 would produce): the scaler skips the step.
    handle = model.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    with EventStorage(0) as storage:
        trainer.iter = 0
        storage.iter = 0
        trainer.run_step()
    handle.remove()
    assert torch.equal(model.weight, before), "the overflowing step was not applied"
    assert trainer.grad_scaler.get_scale() < 2.0 ** 16, "the scale was lowered"
    with EventStorage(1) as storage:
        storage.iter = 1
        trainer.run_step()
    assert not torch.equal(model.weight, before), "training goes on"


def test_resume_refuses_checkpoint_of_another_architecture(tmp_path):
    cfg = tiny_cfg(CFG, tmp_path)
    model = build_model(cfg)
    Checkpointer(model, str(tmp_path)).save("model_0000009", iteration=9)
    other_cfg = tiny_cfg(CFG, tmp_path, overrides=["model.head.conv_dims=[128]"])
    other = build_model(other_cfg)
    with pytest.raises(CheckpointLoadError, match=r"does not match this model.*unexpected keys: .*cls_tower"):
        Checkpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    # Fine-tuning from other weights (not a resume) loads what matches and goes on.
    Checkpointer(other, str(tmp_path / "new")).resume_or_load(
        str(tmp_path / "model_0000009.pth"), resume=True)
