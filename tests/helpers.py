"""Turn any config into a tiny CPU job on the synthetic_tiny datasets."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from balanced_det.config import load_config
from balanced_det.engine.train_loop import cfg_get

TINY_CLASSES = 3


def set_num_classes(cfg, n):
    m = cfg.model
    if "roi_heads" in m:
        m.roi_heads.num_classes = n
    if "num_classes" in m:
        m.num_classes = n


def set_score_thresh(cfg, value):
    """So that a barely trained model (random R50: saturated scores, some exactly 0) still
    outputs detections and AP is a number."""
    m = cfg.model
    if "roi_heads" in m:
        m.roi_heads.box_predictor.test_score_thresh = value
    else:
        m.test_score_thresh = value


def tiny_cfg(path, output_dir, max_iter=2, batch=2, size=128, overrides=()):
    cfg = load_config(path, list(overrides))
    set_num_classes(cfg, TINY_CLASSES)
    set_score_thresh(cfg, -1.0)
    dl = cfg.dataloader
    dl.train.dataset.names = "synthetic_tiny_train"
    dl.test.dataset.names = "synthetic_tiny_val"
    dl.train.total_batch_size = batch
    dl.train.num_workers = 0
    dl.test.num_workers = 0
    dl.train.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length=size, max_size=size * 2),
        L(T.RandomFlip)(horizontal=True),
    ]
    dl.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=size, max_size=size * 2)]
    if cfg_get(cfg, "model.roi_heads.mask_head") is not None:
        dl.train.mapper.use_instance_mask = True
    cfg.train.update(
        device="cpu", max_iter=max_iter, output_dir=str(output_dir), init_checkpoint="",
        eval_period=max_iter, log_period=1, seed=0,
    )
    cfg.train.checkpointer.period = 10 ** 6
    # Randomly initialised R50 (no ImageNet weights offline) diverges at the configs' LR.
    cfg.optimizer.lr = 1e-4
    cfg.train.amp.enabled = False
    return cfg
