"""Tree crowns (deepforest 2.1.0 data, converted to ~400 px tiles): trees_train / trees_val.

RGB input (the EfficientNet-Lite0 weights expect RGB); horizontal and vertical flips
(aerial views have no up or down) and multi-scale training around the tiles' own scale.
"""
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader

from balanced_det.data import DatasetMapper, get_detection_dataset_dicts
from balanced_det.evaluation import COCOEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="trees_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(352, 384, 416, 448), sample_style="choice", max_size=640
            ),
            L(T.RandomFlip)(horizontal=True),
            L(T.RandomFlip)(horizontal=False, vertical=True),
        ],
        image_format="RGB",
        use_instance_mask=False,
    ),
    total_batch_size=4,
    num_workers=2,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="trees_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=416, max_size=640)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
