"""Sampling-Free Faster R-CNN R50-FPN 1x (docs/methods/sampling_free.md). Reference COCO box
AP 36.8 -> 38.4.

Differs from faster_rcnn_R_50_FPN_1x in the method's parts only:
* no sampling: every anchor / proposal with label >= 0 trains; 2000 RPN proposals per image in
  training (baseline 1000);
* guided classification losses (w_cls 1 for the RPN, 2 for the ROI head), box losses averaged
  over the positives;
* optimal bias initialisation (RPN sigmoid, ROI softmax) and class-adaptive score thresholds
  (instead of test_score_thresh 0.05), from dataset statistics counted before training with
  the model's own matchers (cached; ``train.dataset_stats.max_images`` to count a subset).
"""
from ..common.models.balanced_rcnn import sampling_free
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

sampling_free(model, num_train_proposals=2000)
