from .efficientnet_lite import (
    EfficientNetLite0,
    EfficientNetLite0Classifier,
    build_efficientnet_lite0_fpn,
    efficientnet_lite0_weights_path,
)
from .efficientnet_lite import PIXEL_MEAN as PIXEL_MEAN_RGB_LITE0
from .efficientnet_lite import PIXEL_STD as PIXEL_STD_RGB_LITE0

__all__ = [k for k in globals() if not k.startswith("_")]
