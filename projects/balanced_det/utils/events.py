"""Logging tensor-valued training statistics without a host sync inside the forward pass.

``put_scalar`` of detectron2's ``EventStorage`` calls ``float(value)``, which waits for the
GPU. Heads call :func:`put_tensor_scalars` instead; the values are kept as tensors and
:func:`flush_tensor_scalars` (called by ``balanced_det.engine.Trainer`` when it writes the
losses, where it synchronises anyway) converts them all with a single transfer.
"""
from __future__ import annotations

from typing import Dict

import torch

from detectron2.utils.events import get_event_storage

__all__ = ["put_tensor_scalars", "flush_tensor_scalars", "take_tensor_scalars",
           "write_tensor_scalars"]

_ATTR = "_balanced_det_pending_scalars"


def _storage_or_none():
    try:
        return get_event_storage()
    except AssertionError:  # no EventStorage: not training under a detectron2 trainer
        return None


def put_tensor_scalars(**values) -> None:
    """Record scalar statistics (tensors or numbers) for the current iteration, no sync."""
    storage = _storage_or_none()
    if storage is None:
        return
    pending: Dict[str, torch.Tensor] = storage.__dict__.setdefault(_ATTR, {})
    for k, v in values.items():
        pending[k] = v.detach().float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v))


def take_tensor_scalars(storage=None) -> Dict[str, torch.Tensor]:
    """Remove and return the statistics recorded so far (tensors, no sync)."""
    storage = storage or _storage_or_none()
    if storage is None:
        return {}
    return storage.__dict__.pop(_ATTR, {})


def write_tensor_scalars(storage, pending: Dict[str, torch.Tensor],
                         **put_kwargs) -> Dict[str, float]:
    """Write ``pending`` (from :func:`take_tensor_scalars`) to ``storage`` with one
    device-to-host copy; ``put_kwargs`` go to ``storage.put_scalars`` (e.g. ``cur_iter``)."""
    if not pending:
        return {}
    names = list(pending)
    device_vals = [pending[n] for n in names]
    devices = {v.device for v in device_vals}
    if len(devices) > 1:
        device_vals = [v.cpu() for v in device_vals]
    values = torch.stack(device_vals).tolist()
    out = dict(zip(names, values))
    storage.put_scalars(**out, **put_kwargs)
    return out


def flush_tensor_scalars(storage=None) -> Dict[str, float]:
    """Write the recorded statistics to ``storage`` (one device-to-host copy) and clear them."""
    storage = storage or _storage_or_none()
    if storage is None:
        return {}
    return write_tensor_scalars(storage, take_tensor_scalars(storage))
