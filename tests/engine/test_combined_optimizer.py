"""CombinedOptimizer (USW's Adam next to the detector's SGD): parameter split, one LR schedule
and one clipping norm for every group, and a checkpoint/resume round trip (unit and through
train_net's loop)."""
import copy
import io

import pytest
import torch
from torch import nn

from detectron2.config import instantiate
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from balanced_det.compat import torch_load
from balanced_det.engine import do_train
from balanced_det.engine.optim import CombinedOptimizer, split_param_groups

from conftest import all_config_files, rel
from helpers import tiny_cfg

PATTERN = r"(^|\.)sample_weighting\."


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Module()
        self.head.sample_weighting = nn.Linear(4, 1)

    def forward(self, x):
        return self.head.sample_weighting(self.body(x)).sum()


def _build(model):
    groups = split_param_groups(model, {"sample_weighting": PATTERN}, weight_decay_norm=0.0)
    return CombinedOptimizer(groups, optimizer="torch.optim.SGD", lr=0.1, momentum=0.9,
                             weight_decay=1e-4,
                             parts={"sample_weighting": {"type": "torch.optim.Adam",
                                                         "lr": 1e-3, "weight_decay": 1e-4}})


def _steps(model, opt, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(6, 3, generator=g)).backward()
        opt.step()
        sched.step()


def _sched(opt):
    return LRMultiplier(opt, WarmupParamScheduler(
        MultiStepParamScheduler([1.0, 0.1, 0.01], milestones=[4, 6, 8]), 0.1, 0.25), max_iter=8)


def test_split_and_the_update_rules():
    torch.manual_seed(0)
    model = _Model()
    opt = _build(model)
    assert isinstance(opt, torch.optim.Optimizer)
    sgd, adam = opt.optimizers["default"], opt.optimizers["sample_weighting"]
    assert isinstance(sgd, torch.optim.SGD) and isinstance(adam, torch.optim.Adam)
    ids = lambda o: {id(p) for g in o.param_groups for p in g["params"]}  # noqa: E731
    assert ids(adam) == {id(p) for p in model.head.sample_weighting.parameters()}
    assert ids(sgd) == {id(p) for p in model.body.parameters()}
    # detectron2's default groups: norm layers without weight decay
    assert sorted(g["weight_decay"] for g in sgd.param_groups) == [0.0, 1e-4]
    assert len(opt.param_groups) == 3


def test_one_schedule_scales_every_group_from_its_own_base_lr():
    torch.manual_seed(0)
    model = _Model()
    opt = _build(model)
    sched = _sched(opt)
    _steps(model, opt, sched, 5, seed=1)
    mult = sched.get_last_lr()[0] / 0.1
    assert mult == pytest.approx(0.1)
    assert opt.optimizers["sample_weighting"].param_groups[0]["lr"] == pytest.approx(1e-3 * mult)


def test_checkpoint_and_resume_give_the_same_state_and_updates():
    torch.manual_seed(0)
    model = _Model()
    opt = _build(model)
    sched = _sched(opt)
    _steps(model, opt, sched, 3, seed=1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch_load(buf)  # weights only

    resumed = _Model()
    resumed.load_state_dict(ckpt["model"])
    opt2 = _build(resumed)
    sched2 = _sched(opt2)
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    for name in ("default", "sample_weighting"):
        a, b = opt.optimizers[name].state_dict(), opt2.optimizers[name].state_dict()
        assert a["param_groups"] == b["param_groups"]
        for k in a["state"]:
            for key, v in a["state"][k].items():
                torch.testing.assert_close(v, b["state"][k][key], rtol=0, atol=0)
    _steps(model, opt, sched, 2, seed=2)
    _steps(resumed, opt2, sched2, 2, seed=2)
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]


def test_added_groups_go_to_their_part():
    opt = _build(_Model())
    extra, more = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "part": "sample_weighting"})
    opt.add_param_group({"params": [more], "lr": 0.5})
    assert opt.optimizers["sample_weighting"].param_groups[-1]["params"] == [extra]
    assert opt.optimizers["sample_weighting"].param_groups[-1]["lr"] == 1e-3  # Adam's default
    assert opt.optimizers["default"].param_groups[-1]["params"] == [more]
    assert sum(len(g["params"]) for g in opt.param_groups) == 6 + 2  # the model's 6 + 2 added
    with pytest.raises(ValueError, match="part='head' is not valid"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "part": "head"})


def test_bad_specs_fail_with_the_names():
    model = _Model()
    with pytest.raises(ValueError, match=r"parts\['sample_weighting'\]='nothing' is not valid"):
        split_param_groups(model, {"sample_weighting": "nothing"})
    with pytest.raises(ValueError, match="matches parts 'a' and 'b'"):
        split_param_groups(model, {"a": "sample_weighting", "b": "head"})
    groups = split_param_groups(model, {"sample_weighting": PATTERN})
    with pytest.raises(ValueError, match=r"expected the parameter parts \['sample_weighting'\]"):
        CombinedOptimizer(groups, lr=0.1)
    opt = _build(model)
    with pytest.raises(ValueError, match="does not match this CombinedOptimizer"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


USW = [p for p in all_config_files() if rel(p) == "Synthetic/usw_faster_rcnn_effnet_lite0_FPN.py"]


@pytest.mark.slow
@pytest.mark.parametrize("path", USW, ids=rel)
def test_usw_config_checkpoints_and_resumes_both_optimizers(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(path, tmp_path, max_iter=2)
    cfg.train.eval_period = 0
    do_train(cfg)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    state = saved["trainer"]["optimizer"]["optimizers"]
    assert set(state) == {"default", "sample_weighting"}
    assert state["sample_weighting"]["state"], "Adam's moments are saved"
    assert state["sample_weighting"]["param_groups"][0]["lr"] < 1e-3  # warm-up applied

    # a resumed run restores both optimizers' state exactly
    from balanced_det.engine import Checkpointer, Trainer
    from balanced_det.engine.train_loop import build_model

    cfg2 = copy.deepcopy(cfg)
    model = build_model(cfg2, with_dataset_stats=False)
    cfg2.optimizer.params.model = model
    opt = instantiate(cfg2.optimizer)
    trainer = Trainer(model, iter([]), opt, device_type="cpu")
    Checkpointer(model, str(tmp_path), trainer=trainer).resume_or_load("", resume=True)
    again = opt.state_dict()["optimizers"]
    for name in state:
        assert again[name]["param_groups"] == state[name]["param_groups"]
        for k, s in state[name]["state"].items():
            for key, v in s.items():
                torch.testing.assert_close(again[name]["state"][k][key], v, rtol=0, atol=0)
