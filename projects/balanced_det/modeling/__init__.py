"""detectron2 adapters: backbones, necks, heads and meta-architectures."""
from .backbone import EfficientNetLite0, build_efficientnet_lite0_fpn
from .dense_heads import FCOSStyleHead
from .meta_arch.fcos import FCOS

__all__ = [k for k in globals() if not k.startswith("_")]
