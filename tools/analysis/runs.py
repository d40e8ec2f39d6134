"""The runs the figures read: finished comparison runs of ``tools/compare.py``, their configs
and checkpoints, and the figure file with its caption."""
from __future__ import annotations

import json
import os
import textwrap
from typing import List, Optional, Sequence

import matplotlib.pyplot as plt

from balanced_det.config import load_config
from balanced_det.evaluation.coco import DETECTIONS_FILE
from detectron2.config import instantiate

from ..compare import ROOT, RUN_KEY_FILE, SUITES, is_done, write_markdown

__all__ = ["ROOT", "MissingRunError", "RunRef", "check_runs", "default_compare_dir", "suite_entry",
           "compare_command", "analysis_command", "suite_config", "load_run_config", "load_model",
           "validation_dataset_name", "write_markdown", "finish_figure", "relpath"]


class MissingRunError(FileNotFoundError):
    """A run or checkpoint a figure needs does not exist; the message names the command."""

    def __str__(self):
        return str(self.args[0])


def relpath(path: str) -> str:
    """``path`` relative to the repository root when it is inside it."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def default_compare_dir(suite: str) -> str:
    return os.path.join(ROOT, "output", "compare", suite)


def compare_command(suite: str, names: Sequence[str], seeds: Sequence[int], compare_dir: str
                    ) -> str:
    """The ``tools/compare.py`` command that trains runs ``names`` with ``seeds``."""
    cmd = f"python tools/compare.py --suite {suite}"
    if names:
        cmd += f" --only {' '.join(names)}"
    if seeds:
        cmd += f" --seeds {' '.join(map(str, seeds))}"
    if os.path.abspath(compare_dir) != os.path.abspath(default_compare_dir(suite)):
        cmd += f" --output {relpath(compare_dir)}"
    return cmd


def analysis_command(tool: str, suite: str, names: Sequence[str], seeds: Sequence[int],
                     compare_dir: str) -> str:
    """The ``tools/analysis.py <tool>`` command that reads runs ``names`` with ``seeds`` from
    ``compare_dir`` (``--compare-dir`` only when it is not the suite's default)."""
    cmd = f"python tools/analysis.py {tool} --suite {suite}"
    if os.path.abspath(compare_dir) != os.path.abspath(default_compare_dir(suite)):
        cmd += f" --compare-dir {relpath(compare_dir)}"
    return cmd + f" --runs {' '.join(names)} --seeds {' '.join(map(str, seeds))}"


def suite_entry(suite: str, name: str):
    """``(name, config, description)`` of run ``name`` in ``SUITES[suite]``."""
    for entry in SUITES.get(suite, []):
        if entry[0] == name:
            return entry
    names = [e[0] for e in SUITES.get(suite, [])]
    raise ValueError(f"run {name!r} is not in suite {suite!r} of tools/compare.py (runs: {names})")


def suite_config(suite: str, name: str) -> str:
    """Path of the config of run ``name`` of the suite."""
    return os.path.join(ROOT, suite_entry(suite, name)[1])


class RunRef:
    """One run of the comparison: ``<compare_dir>/<name>/seed<seed>/``, its config (with the
    overrides the run was trained with, :meth:`load_config`), checkpoint and description.
    ``checkpoint``/``config`` replace the run's ``model_final.pth`` and the suite's config
    (``--checkpoint``, ``--config``; an explicit config is taken as it is)."""

    def __init__(self, suite: str, name: str, seed: int, compare_dir: str,
                 checkpoint: Optional[str] = None, config: Optional[str] = None):
        self.suite, self.name, self.seed, self.compare_dir = suite, name, seed, compare_dir
        _, self.suite_config, self.desc = suite_entry(suite, name)
        self.config = config or os.path.join(ROOT, self.suite_config)
        self.run_dir = os.path.join(compare_dir, name, f"seed{seed}")
        self.checkpoint = checkpoint or os.path.join(self.run_dir, "model_final.pth")
        self.explicit_checkpoint = checkpoint is not None
        self.detections = os.path.join(self.run_dir, DETECTIONS_FILE)
        self.explicit_config = config is not None

    def overrides(self) -> List[str]:
        """The config overrides the run was trained with (``tools/compare.py``'s ``opts``, e.g.
        ``optimizer.lr=0.005``, from its run key); none for an explicit ``--config``."""
        if self.explicit_config:
            return []
        try:
            with open(os.path.join(self.run_dir, RUN_KEY_FILE)) as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            return []
        return list(recorded.get("opts", [])) if isinstance(recorded, dict) else []

    def load_config(self, device: str):
        """The run's LazyConfig: its config with its recorded overrides, on ``device``."""
        return load_run_config(self.config, device, self.overrides())

    def use_detections(self) -> bool:
        """No checkpoint (a run restored from its record) but its saved final detections."""
        return (not self.explicit_checkpoint and not os.path.isfile(self.checkpoint)
                and os.path.isfile(self.detections))

    def finished(self) -> bool:
        """``tools/compare.py`` finished this run: the suite's config with this seed, any
        schedule (:func:`tools.compare.is_done`)."""
        return is_done(self.run_dir, {"config": self.suite_config, "seed": self.seed})

    def check(self, detections_ok: bool = False) -> "RunRef":
        """``self``; :class:`MissingRunError` naming the command that trains the run when the
        config, the finished run or its checkpoint is missing (``detections_ok``: or, instead
        of the checkpoint, the run's saved detections)."""
        if not os.path.isfile(self.config):
            raise MissingRunError(f"config {self.config} not found (--config)")
        if self.explicit_checkpoint:
            if not os.path.isfile(self.checkpoint):
                raise MissingRunError(f"checkpoint {self.checkpoint} not found (--checkpoint)")
            return self
        if not (self.finished() and (os.path.isfile(self.checkpoint)
                                     or (detections_ok and self.use_detections()))):
            raise MissingRunError(
                f"missing run {self.name!r} (seed {self.seed}) of suite {self.suite!r}: no "
                f"finished run with {relpath(self.checkpoint)}. Train it with: "
                f"{compare_command(self.suite, [self.name], [self.seed], self.compare_dir)}")
        return self

    def describe(self) -> str:
        return f"{self.desc} ({relpath(self.checkpoint)})"

    def checkpoint_text(self, iteration: Optional[int]) -> str:
        """The checkpoint, and its iteration when known, for a caption."""
        return relpath(self.checkpoint) + (f" (iteration {iteration})"
                                           if iteration is not None else "")


def check_runs(refs: Sequence[RunRef], detections_ok: bool = False) -> None:
    """:meth:`RunRef.check` of each; several missing runs of the suite are named in one error
    with one command that trains them all."""
    errors, absent = [], []
    for r in refs:
        try:
            r.check(detections_ok)
        except MissingRunError as e:
            errors.append(str(e))
            if not r.explicit_checkpoint and os.path.isfile(r.config):
                absent.append(r)
    if len(absent) > 1 and len(absent) == len(errors):
        names = [r.name for r in absent]
        raise MissingRunError(
            f"missing runs {names} (seed {absent[0].seed}) of suite {absent[0].suite!r}: no "
            f"finished runs with {', '.join(relpath(r.checkpoint) for r in absent)}. Train "
            f"them with: "
            f"{compare_command(absent[0].suite, names, [absent[0].seed], absent[0].compare_dir)}")
    if errors:
        raise MissingRunError("; ".join(errors))


def load_run_config(path: str, device: str, overrides: Sequence[str] = ()):
    """The LazyConfig at ``path`` with ``overrides`` and ``train.device = device``."""
    cfg = load_config(path, overrides)
    cfg.train.device = device
    return cfg


def load_model(cfg, checkpoint: Optional[str], device: str = "cpu"):
    """The model of ``cfg`` with the weights (and buffers: class thresholds, EMA normalisers)
    of ``checkpoint`` (strict: a checkpoint of another architecture is an error). Without a
    checkpoint: ``balanced_det.engine.build_model`` (random init + dataset statistics).
    Returns ``(model, iteration)`` (``None`` when the checkpoint does not say)."""
    from balanced_det.engine import Checkpointer, build_model

    if checkpoint is None:
        cfg.train.device = device
        return build_model(cfg), None
    model = instantiate(cfg.model)
    model.to(device)
    extra = Checkpointer(model).load(checkpoint, strict=True) or {}
    return model, extra.get("iteration")


def validation_dataset_name(cfg) -> str:
    """The (first) dataset of ``cfg.dataloader.test``."""
    names = cfg.dataloader.test.dataset.names
    return names if isinstance(names, str) else list(names)[0]


def finish_figure(fig, caption: str, path: str) -> str:
    """Add the caption under the figure, save ``path`` (PNG), close the figure."""
    width_chars = int(fig.get_figwidth() * 15)
    fig.text(0.5, -0.01, textwrap.fill(caption, width=width_chars), ha="center", va="top",
             fontsize=9, style="italic", color="#333333")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path
