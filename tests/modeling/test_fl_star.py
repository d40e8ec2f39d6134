"""FL* inside the detectors: RetinaNet's classification loss is the FL* sum over the
non-ignored anchors divided by the EMA normaliser; images without GTs and one-image batches
train; FCOS takes it too."""
import torch
import torch.nn.functional as F

from detectron2.layers import cat
from detectron2.utils.events import EventStorage

from balanced_det.modeling import FocalLossStar
from balanced_det.ops import sigmoid_focal_loss_star

from helpers_dense import TWO_IMAGES, batch


def _train_step(model, inputs):
    model.train()
    with EventStorage(0):
        losses = model(inputs)
    total = sum(losses.values())
    total.backward()
    return losses


def test_retinanet_loss_is_the_fl_star_sum_over_valid_anchors(tiny_retinanet):
    torch.manual_seed(0)
    model = tiny_retinanet(cls_loss=FocalLossStar(alpha=0.25, gamma=4.0, beta=0.0))
    model.train()
    inputs = batch(TWO_IMAGES)
    images = model.preprocess_image(inputs)
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(model.head(feats), [3, 4])
    anchors = model.anchor_generator(feats)
    labels, boxes = model.label_anchors(anchors, [x["instances"] for x in inputs])
    with EventStorage(0):
        losses = model.losses(anchors, logits, labels, deltas, boxes)
    labels = torch.stack(labels)
    valid = labels >= 0
    targets = F.one_hot(labels[valid], 4)[:, :3].float()
    expected = sigmoid_focal_loss_star(cat(logits, 1)[valid], targets, 0.25, 4.0, 0.0).sum()
    normalizer = 0.9 * 100 + 0.1 * (valid & (labels != 3)).sum().float()
    torch.testing.assert_close(losses["loss_cls"], expected / normalizer)


def test_zero_gt_image_and_one_image_batch_train(tiny_retinanet):
    torch.manual_seed(0)
    model = tiny_retinanet(cls_loss=FocalLossStar())
    for gts in ([([], [])], [TWO_IMAGES[1]], [TWO_IMAGES[0], ([], [])]):
        model.zero_grad()
        losses = _train_step(model, batch(gts))
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        grad = model.head.cls_score.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert float(losses["loss_box_reg"].detach()) > 0


def test_bfloat16_autocast_training_step(tiny_retinanet):
    torch.manual_seed(0)
    model = tiny_retinanet(cls_loss=FocalLossStar())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _train_step(model, batch(TWO_IMAGES))
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())


def test_fcos_takes_fl_star(tiny_fcos):
    torch.manual_seed(0)
    model = tiny_fcos(cls_loss=FocalLossStar(gamma=2.0, beta=1.0))
    losses = _train_step(model, batch([TWO_IMAGES[0], ([], [])]))
    assert all(torch.isfinite(v) for v in losses.values())
