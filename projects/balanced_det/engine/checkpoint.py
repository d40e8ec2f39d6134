"""Checkpoints that are written atomically and load safely on every torch version."""
from __future__ import annotations

import io
import logging
import os
import pickle
from typing import Any, Dict, List
from urllib.parse import urlparse

import torch
from iopath.common.file_io import get_cache_dir

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import Detectron2Handler, PathManager

from ..compat import UntrustedCheckpointError, torch_load
from ..data.cache import atomic_write_bytes

__all__ = ["Checkpointer", "CheckpointLoadError", "WeightsDownloadError", "download_cache_path"]

logger = logging.getLogger(__name__)


#: (old suffix, new suffix) of state-dict keys renamed since earlier releases
_RENAMED_KEYS = (
    ("class_score_thresh", "class_score_thresholds.values"),
    ("class_score_thresholds", "class_score_thresholds.values"),
    ("ghm_c.", "cls_loss."),
    ("ghm_r.", "box_reg_loss."),
)


def upgrade_state_dict(state_dict: Dict[str, Any], model_keys) -> Dict[str, Any]:
    """Rename keys of checkpoints written before the plug-in classes held their buffers
    (class-adaptive thresholds, GHM's EMA) when the model has the new key and not the old."""
    model_keys = set(model_keys)
    out = dict(state_dict)
    for key in list(state_dict):
        if key in model_keys:
            continue
        for old, new in _RENAMED_KEYS:
            head, sep, tail = key.rpartition(old)
            if sep and (tail == "" or old.endswith(".")) and (head + new + tail) in model_keys:
                out[head + new + tail] = out.pop(key)
                break
    return out


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


class WeightsDownloadError(CheckpointLoadError):
    """Weights named by a URL (``detectron2://...``, ``https://...``) could not be downloaded."""


def _http_url(path: str) -> str:
    """``detectron2://X`` -> the https URL detectron2 downloads it from; other URLs as given."""
    if path.startswith(Detectron2Handler.PREFIX):
        return Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX):]
    return path


def download_cache_path(path: str) -> str:
    """Where detectron2's ``PathManager`` (iopath's ``HTTPURLHandler``) caches the download of
    ``path``: ``$FVCORE_CACHE`` (default ``~/.torch/iopath_cache``) + the URL's path. A file
    placed there is used without downloading."""
    url = _http_url(path)
    return os.path.join(get_cache_dir(), os.path.dirname(urlparse(url).path.lstrip("/")),
                        url.split("/")[-1])


class Checkpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` with these changes:

    * ``save`` serialises to memory, writes a temporary file and renames it over the target,
      and only then updates ``last_checkpoint`` (also atomically): an interruption leaves the
      previous checkpoint and pointer intact, never a truncated file in their place;
    * native ``.pth`` files load with :func:`balanced_det.compat.torch_load`
      (``weights_only=True`` explicitly), and a truncated/corrupt file raises
      :class:`CheckpointLoadError` naming it and the other checkpoints in its folder;
    * resuming from ``save_dir`` and ``load(..., strict=True)`` (``--eval-only``) refuse a
      checkpoint of another architecture, listing missing/unexpected keys and shape
      mismatches; initialising from other weights (``train.init_checkpoint``, fine-tuning)
      keeps detectron2's behaviour: matching weights load, the rest is logged;
    * weights named by a URL that cannot be downloaded (no network) raise
      :class:`WeightsDownloadError` naming the URL, the cache file and how to supply it.
    """

    _strict = False

    def load(self, path: str, checkpointables=None, strict: bool = False):
        self._strict = strict
        self._loading = path
        try:
            return super().load(self._local_file(path), checkpointables)
        finally:
            self._strict = False

    def _local_file(self, path: str) -> str:
        """``path`` itself, or for a URL the downloaded (cached) file, with a clear error when
        the download fails (e.g. no network)."""
        if not path or "://" not in path or os.path.isfile(path):
            return path
        try:
            return self.path_manager.get_local_path(path)
        except OSError as e:  # urllib's URLError/HTTPError, timeouts, refused connections
            url = _http_url(path)
            raise WeightsDownloadError(
                f"cannot download {path}"
                + (f" ({url})" if url != path else "")
                + f": {e.__class__.__name__}: {e}. Without network access, download the file "
                f"on another machine and either pass it with train.init_checkpoint=/path/"
                f"{url.split('/')[-1]} or place it at {download_cache_path(path)} (detectron2's "
                "download cache: $FVCORE_CACHE, default ~/.torch/iopath_cache), where it is used "
                "without downloading."
            ) from e

    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file(), strict=True)
        return self.load(path, checkpointables=[])

    def _load_model(self, checkpoint):
        checkpoint["model"] = upgrade_state_dict(checkpoint["model"],
                                                 self.model.state_dict().keys())
        incompatible = super()._load_model(checkpoint)
        if self._strict and incompatible is not None and (
                incompatible.missing_keys or incompatible.unexpected_keys
                or incompatible.incorrect_shapes):
            def short(keys):
                keys = list(keys)
                return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

            shapes = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}"
                      for k, a, b in incompatible.incorrect_shapes]
            raise CheckpointLoadError(
                f"checkpoint {getattr(self, '_loading', '?')} does not match this model "
                f"(written for another architecture or config). Missing keys: "
                f"{short(incompatible.missing_keys) or 'none'}; unexpected keys: "
                f"{short(incompatible.unexpected_keys) or 'none'}; shape mismatches: "
                f"{short(shapes) or 'none'}. Use a new train.output_dir (or run without --resume) "
                "to start this model, or the config that wrote the checkpoint.")
        return incompatible

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
