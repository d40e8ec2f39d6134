"""EfficientNet-Lite0: the offline ImageNet weights load strictly and classify sensibly."""
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import ResNet50_Weights

from balanced_det.modeling.backbone import (
    EfficientNetLite0,
    EfficientNetLite0Classifier,
    PIXEL_MEAN_RGB_LITE0,
    PIXEL_STD_RGB_LITE0,
    build_efficientnet_lite0_fpn,
)
from balanced_det.modeling.backbone.efficientnet_lite import Conv2dSame


def test_weights_load_strict_and_classify_grace_hopper():
    model = EfficientNetLite0Classifier(pretrained=True).eval()  # strict=True inside
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data",
                        "grace_hopper.jpg")
    img = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32)
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - torch.tensor(PIXEL_MEAN_RGB_LITE0)[:, None, None]) \
        / torch.tensor(PIXEL_STD_RGB_LITE0)[:, None, None]
    with torch.no_grad():
        prob = model(x).softmax(-1)[0]
    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    top5 = [categories[i] for i in prob.topk(5).indices.tolist()]
    assert top5[0] == "military uniform", top5
    assert prob.max() > 0.3


def test_backbone_shapes_and_freezing():
    bb = EfficientNetLite0(("c3", "c4", "c5"), pretrained=True, freeze_at=4)
    out = bb(torch.zeros(1, 3, 128, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "c3": (1, 40, 16, 12), "c4": (1, 112, 8, 6), "c5": (1, 320, 4, 3)}
    shapes = bb.output_shape()
    assert [shapes[k].stride for k in ("c3", "c4", "c5")] == [8, 16, 32]
    frozen = [n for n, p in bb.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert all(n.startswith(("_conv_stem", "_bn0", "_blocks.0.", "_blocks.1.", "_blocks.2.",
                             "_blocks.3.", "_blocks.4.")) for n in frozen)
    assert trainable and all(int(n.split(".")[1]) >= 5 for n in trainable)
    with pytest.raises(ValueError, match="out_features"):
        EfficientNetLite0(("c9",), pretrained=False)


def test_fpn_levels():
    fpn = build_efficientnet_lite0_fpn(out_channels=64, top_block="p6p7", pretrained=False)
    out = fpn(torch.zeros(1, 3, 128, 128))
    assert {k: v.shape[-1] for k, v in out.items()} == {"p3": 16, "p4": 8, "p5": 4, "p6": 2, "p7": 1}
    fpn = build_efficientnet_lite0_fpn(out_channels=64, top_block="maxpool", pretrained=False)
    assert sorted(fpn.output_shape()) == ["p3", "p4", "p5", "p6"]


def test_same_padding_matches_tensorflow_rule():
    # TF SAME, stride 2, kernel 3 on 7 px: out = ceil(7/2) = 4, total pad = 2 -> 1 + 1;
    # on 8 px: out = 4, total pad = 1 -> 0 left/top, 1 right/bottom.
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    y = conv(x)
    assert y.shape[-2:] == (4, 4)
    assert y[0, 0, 0, 0] == x[0, 0, :3, :3].sum()  # no top/left padding
    assert conv(torch.ones(1, 1, 7, 7))[0, 0, 0, 0] == 4  # one row/col of zero padding
