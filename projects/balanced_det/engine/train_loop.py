"""detectron2's LazyConfig training loop, as used by ``train_net.py``.

``cfg`` has the fields of detectron2's LazyConfig convention: ``model``, ``dataloader.train``,
``dataloader.test``, ``dataloader.evaluator``, ``optimizer``, ``lr_multiplier`` and ``train``
(see ``configs/common/train.py`` for the ``train`` fields this loop reads).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, ListConfig

from detectron2.config import instantiate
from detectron2.config.instantiate import locate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..compat import known_warnings_ignored
from ..data.cache import atomic_write_json
from ..data.samplers import ResumableTrainingSampler
from ..evaluation.coco import DETECTIONS_FILE, write_detections
from ..stats import prepare_model_with_dataset_stats
from .checkpoint import Checkpointer
from .launch import create_ddp_model
from .trainer import Trainer

__all__ = ["do_train", "do_test", "build_model", "build_train_loader", "training_seed", "cfg_get",
           "EVAL_HISTORY", "eval_history_entry"]

EVAL_HISTORY = "eval_history.json"

logger = logging.getLogger("balanced_det")


def cfg_get(cfg, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b.c`` or ``default`` when any part is missing."""
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return default
    return default if node is None else node


def build_model(cfg, with_dataset_stats: bool = True) -> torch.nn.Module:
    """Instantiate ``cfg.model``; models that initialise from dataset statistics
    (Sampling-Free) get them here, on the CPU, before moving to ``train.device`` and before
    any checkpoint is loaded. ``with_dataset_stats=False`` (evaluation of a checkpoint: the
    bias is trained and the class-adaptive thresholds are persistent buffers restored from
    the checkpoint) skips counting, so the training annotations need not be present."""
    model = instantiate(cfg.model)
    if with_dataset_stats:
        prepare_model_with_dataset_stats(model, cfg)
    model.to(cfg.train.device)
    return model


def do_test(cfg, model) -> Dict[str, Any]:
    """Run the evaluator of ``cfg.dataloader`` on ``cfg.dataloader.test``; write
    ``<output_dir>/eval_results.json`` and, for COCO box evaluation, the detections
    (``val_detections.json.gz``, :func:`~balanced_det.evaluation.coco.write_detections`)
    (atomically) and return the results."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator = instantiate(cfg.dataloader.evaluator)
    with known_warnings_ignored():
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process() and results:
        print_csv_format(results)
        out = cfg_get(cfg, "train.output_dir")
        if out:
            atomic_write_json(os.path.join(out, "eval_results.json"), results, indent=2)
            if getattr(evaluator, "coco_results", None) is not None:
                write_detections(os.path.join(out, DETECTIONS_FILE), evaluator.coco_results)
    return results


def eval_history_entry(iteration: int, results: Dict[str, Any]) -> Dict[str, Any]:
    """One evaluation of ``<output_dir>/eval_history.json``: ``{"iteration": n, "<task>":
    {metric: value}}`` (``n`` iterations done), the task results as floats."""
    entry: Dict[str, Any] = {"iteration": int(iteration)}
    for task, metrics in results.items():
        if isinstance(metrics, dict):
            entry[task] = {k: float(v) for k, v in metrics.items()}
    return entry


def training_seed(cfg) -> int:
    """``train.seed``, or a random seed shared by all processes when it is unset or negative."""
    seed = cfg_get(cfg, "train.seed", -1)
    return seed if seed >= 0 else comm.shared_random_seed()


def build_train_loader(cfg, start_iter: int = 0, seed: Optional[int] = None):
    """The training loader of ``cfg.dataloader.train``, positioned at iteration ``start_iter``.

    If the loader's builder takes a ``sampler`` and the config sets none, a
    :class:`ResumableTrainingSampler` seeded by ``seed`` (default: :func:`training_seed`) and
    starting at ``start_iter * total_batch_size`` is used, so a resumed run continues the
    image stream where it stopped (augmentation randomness is redrawn); otherwise the config's
    loader as it is.
    """
    loader_cfg = cfg.dataloader.train
    builder = loader_cfg._target_
    if isinstance(builder, str):
        builder = locate(builder)
    params = inspect.signature(builder).parameters
    if ("sampler" not in params or loader_cfg.get("sampler") is not None
            or "dataset" not in loader_cfg):
        return instantiate(loader_cfg)
    kwargs = {k: instantiate(v) if isinstance(v, (DictConfig, ListConfig)) else v
              for k, v in loader_cfg.items() if k != "_target_"}
    dataset = kwargs["dataset"]
    batch = int(kwargs.get("total_batch_size", 1))
    start = int(start_iter) * batch
    kwargs["sampler"] = ResumableTrainingSampler(
        len(dataset), seed=training_seed(cfg) if seed is None else seed, start=start)
    if start:
        logger.info("Training data resumes at position %d (iteration %d)", start, start_iter)
    return builder(**kwargs)


def do_train(cfg, resume: bool = False) -> Optional[Dict[str, Any]]:
    """Train ``cfg.model``; evaluate every ``train.eval_period`` iterations and at the end
    (``train.eval_period <= 0``: no evaluation). Every evaluation is appended to
    ``<output_dir>/eval_history.json`` (:func:`eval_history_entry`, a list ordered by
    iteration; a resumed run keeps the entries before its start), ``eval_results.json`` holds
    the last one.

    Returns the last evaluation results (or None if there was no evaluation).
    """
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    seed = training_seed(cfg)

    def train_batches():
        # The loader is built at the first batch, once --resume has restored trainer.iter.
        yield from build_train_loader(cfg, start_iter=trainer.iter, seed=seed)

    model = create_ddp_model(model, **cfg_get(cfg, "train.ddp", {}))

    checkpointer_holder = {}

    def save_last_good(iteration: int, names):
        ckpt = checkpointer_holder.get("ckpt")
        if ckpt is not None and comm.is_main_process():
            # Parameters were not updated in the failing iteration: this is the state after
            # iteration - 1, the last good one.
            ckpt.save("model_last_good", iteration=iteration - 1)
            logger.error("Saved the last good state to %s/model_last_good.pth",
                         cfg.train.output_dir)

    trainer = Trainer(
        model, train_batches(), optimizer,
        amp=bool(cfg_get(cfg, "train.amp.enabled", False)),
        amp_dtype=cfg_get(cfg, "train.amp.dtype", None),
        device_type=torch.device(cfg.train.device).type,
        clip_grad_norm=cfg_get(cfg, "train.clip_grad_norm", None),
        nonfinite=cfg_get(cfg, "train.nonfinite", "raise"),
        on_nonfinite=save_last_good,
    )
    checkpointer = Checkpointer(model, cfg.train.output_dir, trainer=trainer)
    checkpointer_holder["ckpt"] = checkpointer
    last_results: Dict[str, Any] = {}
    history: list = []
    history_path = os.path.join(cfg.train.output_dir, EVAL_HISTORY)

    def test_and_keep():
        res = do_test(cfg, model)
        last_results.clear()
        last_results.update(res or {})
        if res and comm.is_main_process():
            # after_step: trainer.iter is the finished iteration (0-based); after_train: max_iter
            done = min(trainer.iter + 1, cfg.train.max_iter)
            history[:] = [h for h in history if h["iteration"] < done]
            history.append(eval_history_entry(done, res))
            atomic_write_json(history_path, history, indent=1)
        return res

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep)
        if cfg.train.eval_period and cfg.train.eval_period > 0 else None,
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished; start at the next one.
        start_iter = trainer.iter + 1
        if os.path.exists(history_path):
            with open(history_path) as f:
                history.extend(h for h in json.load(f) if h["iteration"] <= start_iter)
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last_results or None
