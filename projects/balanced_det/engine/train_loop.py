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

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..compat import known_warnings_ignored
from ..data.cache import atomic_write_json
from ..data.samplers import ResumableTrainingSampler
from ..stats import prepare_model_with_dataset_stats
from .checkpoint import Checkpointer
from .launch import create_ddp_model
from .trainer import Trainer

__all__ = ["do_train", "do_test", "build_model", "cfg_get"]

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
    ``<output_dir>/eval_results.json`` (atomically) and return the results."""
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
    return results


class _TrainLoaderFromPosition:
    """The training loader, built when the first batch is needed, i.e. after ``--resume``
    has restored ``trainer.iter``. If the config's loader builder takes a ``sampler`` and
    none is configured, a :class:`ResumableTrainingSampler` starting at
    ``start_iter * total_batch_size`` is used, so a resumed run continues the image stream
    where it stopped (augmentation randomness is redrawn)."""

    def __init__(self, loader_cfg, trainer_ref, seed: int):
        self.loader_cfg = loader_cfg
        self.trainer_ref = trainer_ref
        self.seed = seed

    def _build(self):
        cfg = self.loader_cfg
        builder = cfg._target_
        if isinstance(builder, str):
            from detectron2.config.instantiate import locate

            builder = locate(builder)
        params = inspect.signature(builder).parameters
        if "sampler" not in params or cfg.get("sampler") is not None or "dataset" not in cfg:
            return instantiate(cfg)
        kwargs = {k: instantiate(v) if isinstance(v, (DictConfig, ListConfig)) else v
                  for k, v in cfg.items() if k != "_target_"}
        dataset = kwargs["dataset"]
        batch = int(kwargs.get("total_batch_size", 1))
        start = int(self.trainer_ref().iter) * batch
        kwargs["sampler"] = ResumableTrainingSampler(len(dataset), seed=self.seed, start=start)
        if start:
            logger.info("Training data resumes at position %d (iteration %d)", start, start // batch)
        return builder(**kwargs)

    def __iter__(self):
        yield from self._build()


def do_train(cfg, resume: bool = False) -> Optional[Dict[str, Any]]:
    """Train ``cfg.model``; evaluate every ``train.eval_period`` iterations and at the end
    (``train.eval_period <= 0``: no evaluation).

    Returns the last evaluation results (or None if there was no evaluation).
    """
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    trainer_ref = {}
    seed = cfg_get(cfg, "train.seed", -1)
    train_loader = _TrainLoaderFromPosition(
        cfg.dataloader.train, lambda: trainer_ref["trainer"],
        seed=seed if seed is not None and seed >= 0 else comm.shared_random_seed())
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
        model, train_loader, optimizer,
        amp=bool(cfg_get(cfg, "train.amp.enabled", False)),
        amp_dtype=cfg_get(cfg, "train.amp.dtype", None),
        device_type=torch.device(cfg.train.device).type,
        clip_grad_norm=cfg_get(cfg, "train.clip_grad_norm", None),
        nonfinite=cfg_get(cfg, "train.nonfinite", "raise"),
        on_nonfinite=save_last_good,
    )
    trainer_ref["trainer"] = trainer
    checkpointer = Checkpointer(model, cfg.train.output_dir, trainer=trainer)
    checkpointer_holder["ckpt"] = checkpointer
    last_results: Dict[str, Any] = {}

    def test_and_keep():
        res = do_test(cfg, model)
        last_results.clear()
        last_results.update(res or {})
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
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last_results or None


def save_config(cfg, path: str) -> None:
    try:
        LazyConfig.save(cfg, path)
    except Exception as e:  # noqa: BLE001  (unpicklable user objects: keep training)
        logger.warning("Could not save the config to %s: %s", path, e)


def load_eval_results(output_dir: str) -> Dict[str, Any]:
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)
