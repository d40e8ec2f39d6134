"""The training step: fp32 or mixed precision, on CUDA or CPU, with a non-finite loss guard."""
from __future__ import annotations

import logging
import random
import resource
import time
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..compat import has_after_backward, known_warnings_ignored, simple_trainer_options
from ..utils.events import (
    flush_tensor_scalars,
    put_tensor_scalars,
    take_tensor_scalars,
    write_tensor_scalars,
)

__all__ = ["Trainer", "NonFiniteLossError", "resolve_amp_dtype"]

logger = logging.getLogger(__name__)

# Options of newer detectron2's SimpleTrainer that Trainer.run_step implements.
_HONOURED_OPTIONS = ("gather_metric_period", "zero_grad_before_forward", "async_write_metrics")
_CALL_AFTER_BACKWARD = has_after_backward()


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration and the losses."""


def resolve_amp_dtype(dtype: Optional[str], device_type: str) -> torch.dtype:
    """``"float16"``/``"bfloat16"``, or ``None``/``"auto"``: float16 on CUDA, bfloat16 on CPU."""
    if dtype in (None, "", "auto"):
        return torch.float16 if device_type == "cuda" else torch.bfloat16
    table = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"train.amp.dtype={dtype!r}: expected one of {sorted(table)} or 'auto'")
    if device_type == "cpu" and table[dtype] == torch.float16:
        raise ValueError("train.amp.dtype='float16' is not supported on CPU; use 'bfloat16'")
    return table[dtype]


class Trainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with optional autocast and a guard against NaN/inf losses.

    * ``amp=True``: forward under ``torch.autocast(device_type, dtype)``; float16 uses a
      ``torch.amp.GradScaler`` (overflowing steps are skipped by the scaler and the scale is
      lowered, no crash), bfloat16 needs none. Works on CUDA and CPU (bfloat16), unlike
      v0.6's CUDA-only ``AMPTrainer``. Heads keep their loss maths in float32.
    * Non-finite losses are detected in the iteration where they appear, on every process
      (the flag is all-reduced, so no process waits on another). ``nonfinite="raise"`` calls
      ``on_nonfinite(iteration, names)`` (``train_net`` saves the last good state there) and
      raises :class:`NonFiniteLossError`; ``"skip"`` drops that iteration's update and goes on
      (at most ``max_consecutive_skips`` times in a row).
    * Tensor statistics recorded by heads with ``put_tensor_scalars`` are written with the
      losses, in one device-to-host transfer.
    * With a detectron2 newer than v0.6: hooks' ``after_backward`` runs after the backward
      pass (before gradient clipping and the optimizer step), and ``SimpleTrainer``'s options
      are honoured: ``zero_grad_before_forward``, ``gather_metric_period`` (losses are still
      checked for NaN/inf every iteration) and ``async_write_metrics`` (the losses' host copy
      stays in the step, for the check; gathering across processes too, to keep collectives
      in order; the statistics' transfer and the writes run in the background).
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        amp: bool = False,
        amp_dtype: Optional[str] = None,
        device_type: Optional[str] = None,
        clip_grad_norm: Optional[float] = None,
        nonfinite: str = "raise",
        max_consecutive_skips: int = 20,
        on_nonfinite: Optional[Callable[[int, list], None]] = None,
        **options,
    ):
        available = simple_trainer_options()
        missing = sorted(set(options) - set(available))
        if missing:
            import detectron2

            raise TypeError(
                f"Trainer options {missing} are not SimpleTrainer options of the detectron2 at "
                f"{detectron2.__path__[0]}, which has {sorted(available) or 'none'} (v0.6 has "
                f"none; newer releases have {', '.join(_HONOURED_OPTIONS)})")
        unsupported = sorted(set(options) - set(_HONOURED_OPTIONS))
        if unsupported:
            raise TypeError(f"Trainer does not implement SimpleTrainer options {unsupported}; "
                            f"it implements {', '.join(_HONOURED_OPTIONS)}")
        options = {**{k: available[k] for k in available if k in _HONOURED_OPTIONS}, **options}
        period = options.get("gather_metric_period", 1)
        if not (isinstance(period, int) and period >= 1):
            raise ValueError(f"gather_metric_period={period!r}: expected an integer >= 1")
        super().__init__(model, data_loader, optimizer, **options)
        self.gather_metric_period = period
        self.zero_grad_before_forward = bool(options.get("zero_grad_before_forward", False))
        self.async_write_metrics = bool(options.get("async_write_metrics", False))
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite={nonfinite!r}: expected 'raise' or 'skip'")
        if device_type is None:
            device_type = next(model.parameters()).device.type
        self.device_type = device_type
        self.amp = bool(amp)
        self.amp_dtype = resolve_amp_dtype(amp_dtype, device_type) if amp else None
        self.grad_scaler = (
            torch.amp.GradScaler(device_type) if self.amp and self.amp_dtype == torch.float16
            else None
        )
        self.clip_grad_norm = clip_grad_norm
        self.nonfinite = nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.on_nonfinite = on_nonfinite
        self._consecutive_skips = 0

    def run_step(self):
        assert self.model.training, "[Trainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp), known_warnings_ignored():
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(v.float() for v in loss_dict.values())

        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        if _CALL_AFTER_BACKWARD:
            self.after_backward()

        if self.clip_grad_norm:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]
                      if p.grad is not None]
            # The norm before clipping, logged with the losses (no extra sync).
            put_tensor_scalars(grad_norm=torch.nn.utils.clip_grad_norm_(params,
                                                                        self.clip_grad_norm))

        finite = self._write_metrics_and_check(loss_dict, data_time)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            if self.grad_scaler is not None and self.clip_grad_norm:
                self.grad_scaler.update()  # closes the unscale_() of this iteration
            return

        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            get_event_storage().put_scalar("amp_grad_scale", self.grad_scaler.get_scale(),
                                           smoothing_hint=False)
        else:
            self.optimizer.step()

    def _write_metrics_and_check(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> bool:
        names = list(loss_dict)
        values = torch.stack([loss_dict[k].detach().float().reshape(()) for k in names])
        local = values.cpu().tolist()  # the one host sync of the step
        bad = [n for n, v in zip(names, local) if not np.isfinite(v)]
        any_bad = bool(bad)
        if comm.get_world_size() > 1:
            flag = torch.tensor([1.0 if any_bad else 0.0],
                                device=values.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            any_bad = bool(flag.item() > 0)
        storage = get_event_storage()
        if any_bad:
            it = storage.iter
            msg = (f"Loss became NaN or infinite at iteration {it}: "
                   f"{', '.join(bad) if bad else 'on another process'} "
                   f"(losses: {dict(zip(names, local))})")
            flush_tensor_scalars(storage)
            if self.nonfinite == "skip" and self._consecutive_skips < self.max_consecutive_skips:
                self._consecutive_skips += 1
                logger.warning(msg + "; update skipped (train.nonfinite='skip').")
                storage.put_scalar("nonfinite_skipped", 1.0, smoothing_hint=False)
                return False
            if self.on_nonfinite is not None:
                self.on_nonfinite(it, bad)
            raise NonFiniteLossError(msg)
        self._consecutive_skips = 0
        pending = take_tensor_scalars(storage)
        if (storage.iter + 1) % self.gather_metric_period:
            return True  # not written this iteration

        metrics = dict(zip(names, local))
        metrics["data_time"] = data_time
        all_metrics = comm.gather(metrics)  # a collective: here, in step with the other processes
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics_to, storage, pending, all_metrics,
                                            cur_iter=storage.iter)
        else:
            self._write_metrics_to(storage, pending, all_metrics)
        return True

    def _write_metrics_to(self, storage, pending, all_metrics, **cur_iter) -> None:
        """Write one iteration's statistics and (main process) gathered losses to ``storage``;
        ``cur_iter=`` when written in the background (newer detectron2's storage takes it)."""
        write_tensor_scalars(storage, pending, **cur_iter)
        if comm.is_main_process():
            data_time = float(np.max([m.pop("data_time") for m in all_metrics]))
            storage.put_scalar("data_time", data_time, **cur_iter)
            mean = {k: float(np.mean([m[k] for m in all_metrics])) for k in all_metrics[0]}
            storage.put_scalar("total_loss", sum(mean.values()), **cur_iter)
            if len(mean) > 1:
                storage.put_scalars(**mean, **cur_iter)
            storage.put_scalar("peak_mem_mb", peak_memory_mb(self.device_type),
                               smoothing_hint=False, **cur_iter)

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["rng"] = rng_state()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        if "rng" in state_dict:
            set_rng_state(state_dict["rng"], offset=comm.get_rank())


def peak_memory_mb(device_type: str) -> float:
    """Peak memory so far: allocated CUDA memory on GPU, the process's peak resident set size
    (everything: model, activations, data) on CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors and plain values (so the
    checkpoint loads with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, offset: int = 0) -> None:
    """Restore :func:`rng_state`. The checkpoint holds the main process's state; process
    ``offset > 0`` of a distributed run reseeds deterministically from it instead."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if offset:
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) + offset
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)
