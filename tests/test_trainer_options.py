"""balanced_det's Trainer on newer detectron2: hooks' after_backward runs, and SimpleTrainer's
zero_grad_before_forward, gather_metric_period and async_write_metrics are honoured. On
detectron2 v0.6 (no such hook or options) those tests are skipped and the options are refused
with a clear error."""
import pytest
import torch

from balanced_det import compat
from balanced_det.engine import Trainer
from detectron2.engine import HookBase

HAS_OPTIONS = set(compat.simple_trainer_options()) >= {
    "gather_metric_period", "zero_grad_before_forward", "async_write_metrics"}
needs_after_backward = pytest.mark.skipif(
    not compat.has_after_backward(), reason="this detectron2 has no HookBase.after_backward")
needs_options = pytest.mark.skipif(
    not HAS_OPTIONS, reason="this detectron2's SimpleTrainer has no such options")


class Quadratic(torch.nn.Module):
    """loss = (w x)^2 on a fixed input; records whether gradients exist at each forward."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.grad_at_forward = []

    def forward(self, batch):
        self.grad_at_forward.append(self.w.grad is not None)
        return {"loss_a": (self.w * batch).sum() ** 2, "loss_b": self.w.abs().sum()}


def _trainer(**options):
    torch.manual_seed(0)
    model = Quadratic()
    batches = [torch.tensor([0.5, 0.25])] * 100
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return Trainer(model, batches, opt, device_type="cpu", **options)


def _logged(trainer, name):
    return [(it, v) for v, it in trainer.storage.history(name).values()]


@needs_after_backward
def test_after_backward_hooks_run_between_backward_and_step():
    class Count(HookBase):
        def __init__(self):
            self.calls, self.seen = 0, []

        def before_step(self):
            self.before = self.trainer.model.w.detach().clone()

        def after_backward(self):
            self.calls += 1
            w = self.trainer.model.w
            # Gradients of this iteration exist; the optimizer has not stepped yet.
            self.seen.append(w.grad is not None and torch.equal(w.detach(), self.before))

    trainer = _trainer()
    hook = Count()
    trainer.register_hooks([hook])
    trainer.train(0, 3)
    assert hook.calls == 3 and all(hook.seen)


@needs_options
@pytest.mark.parametrize("before_forward", [True, False])
def test_zero_grad_before_forward(before_forward):
    trainer = _trainer(zero_grad_before_forward=before_forward)
    trainer.train(0, 3)
    # Gradients of the previous iteration are still there at the forward unless cleared first.
    assert trainer.model.grad_at_forward == [False] + [not before_forward] * 2


@needs_options
def test_gather_metric_period_writes_every_nth_iteration():
    trainer = _trainer(gather_metric_period=2)
    trainer.train(0, 5)
    assert [it for it, _ in _logged(trainer, "total_loss")] == [1, 3]
    with pytest.raises(ValueError, match="gather_metric_period=0: expected an integer >= 1"):
        _trainer(gather_metric_period=0)


@needs_options
def test_async_write_metrics_logs_each_iteration_as_the_synchronous_trainer():
    sync, background = _trainer(), _trainer(async_write_metrics=True)
    sync.train(0, 4)
    background.train(0, 4)  # after_train waits for the background writes
    for name in ("total_loss", "loss_a", "loss_b"):
        assert _logged(background, name) == _logged(sync, name), name
    assert [it for it, _ in _logged(background, "total_loss")] == [0, 1, 2, 3]


@pytest.mark.skipif(HAS_OPTIONS, reason="this detectron2's SimpleTrainer has the options")
def test_options_refused_where_detectron2_lacks_them():
    with pytest.raises(TypeError, match=r"\['zero_grad_before_forward'\] are not SimpleTrainer "
                                        r"options of the detectron2 at .*which has none"):
        _trainer(zero_grad_before_forward=True)


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match=r"\['zero_grad_befor_forward'\]"):
        _trainer(zero_grad_befor_forward=True)
