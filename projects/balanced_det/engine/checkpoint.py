"""Checkpoints that are written atomically and load safely on every torch version."""
from __future__ import annotations

import io
import logging
import os
import pickle
from typing import Any, Dict, List

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..compat import UntrustedCheckpointError, torch_load
from ..data.cache import atomic_write_bytes

__all__ = ["Checkpointer", "CheckpointLoadError"]

logger = logging.getLogger(__name__)


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


class Checkpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` with two changes:

    * ``save`` serialises to memory, writes a temporary file and renames it over the target,
      and only then updates ``last_checkpoint`` (also atomically): an interruption leaves the
      previous checkpoint and pointer intact, never a truncated file in their place;
    * native ``.pth`` files load with :func:`balanced_det.compat.torch_load`
      (``weights_only=True`` explicitly), and a truncated/corrupt file raises
      :class:`CheckpointLoadError` naming it and the other checkpoints in its folder.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        buffer = io.BytesIO()
        torch.save(data, buffer)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write_bytes(save_file, buffer.getvalue())
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"),
                           last_filename_basename.encode())

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)
        try:
            with PathManager.open(filename, "rb") as f:
                loaded = torch_load(f, map_location="cpu")
        except UntrustedCheckpointError:
            raise
        except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError) as e:
            folder = os.path.dirname(filename) or "."
            others: List[str] = sorted(
                p for p in (os.listdir(folder) if os.path.isdir(folder) else [])
                if p.endswith(".pth") and p != os.path.basename(filename)
            )
            raise CheckpointLoadError(
                f"cannot read checkpoint {filename}: {e.__class__.__name__}: {e}. The file is "
                f"truncated or not a torch checkpoint. Other checkpoints in {folder}: "
                f"{others or 'none'} (pass one with train.init_checkpoint=..., or fix "
                f"{os.path.join(folder, 'last_checkpoint')} to resume from it)."
            ) from e
        if not isinstance(loaded, dict):
            raise CheckpointLoadError(f"{filename} holds a {type(loaded).__name__}, not a dict")
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded
