"""LVIS v1 through detectron2's builtin registration:
$DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json with the COCO 2017 images in $DETECTRON2_DATASETS/coco/; the COCO loaders' augmentations, LVIS
evaluation (AP, APr, APc, APf; 300 detections per image)."""
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from balanced_det.evaluation import LVISEvaluator

from .coco import dataloader

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(LVISEvaluator)(dataset_name="${..test.dataset.names}")


def repeat_factor_sampling(dataloader, repeat_thresh=0.001):
    """Train with detectron2's ``RepeatFactorTrainingSampler``: image repeat factor
    ``max(1, max_j sqrt(t / f_j))`` over its classes, ``f_j`` the fraction of training images
    with class j, threshold ``t`` (detectron2's LVIS configs: 0.001; the EQL authors' resampling
    config: 0.0005). The training annotations are read once more to compute the factors."""
    dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
        repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
            dataset_dicts=dataloader.train.dataset, repeat_thresh=repeat_thresh))
    return dataloader
