"""balanced_det.compat: the shims that let detectron2 v0.6 run on today's libraries."""
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from balanced_det import compat


class NotATensor:
    """An arbitrary object that weights_only unpickling must refuse."""


def test_pillow_and_numpy_aliases_present():
    assert Image.LINEAR == Image.BILINEAR
    for name in ("bool", "int", "float", "str"):
        assert hasattr(np, name)
    import detectron2.data.transforms  # noqa: F401  (used Image.LINEAR at import in v0.6)


def test_detectron2_imports_everywhere():
    import detectron2.evaluation  # noqa: F401
    import detectron2.layers  # noqa: F401
    import detectron2.modeling  # noqa: F401
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


@pytest.mark.skipif(compat.HAS_CPP_OPS, reason="detectron2 built with its C++ extension")
def test_missing_cpp_op_fails_clearly():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(compat.MissingCppOpError, match="box_iou_rotated.*rotated box IoU"):
        pairwise_iou_rotated(boxes, boxes)
    assert compat.coco_evaluator_kwargs() == {"use_fast_impl": False}


@pytest.mark.skipif(compat.HAS_CPP_OPS, reason="detectron2 built with its C++ extension")
def test_fast_coco_eval_refuses_with_hint():
    import detectron2._C as C

    with pytest.raises(compat.MissingCppOpError, match="use_fast_impl=False"):
        C.InstanceAnnotation


def test_torch_load_weights_only_and_trust(tmp_path, monkeypatch):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(2)}, "iteration": 3}, path)
    assert compat.torch_load(str(path))["iteration"] == 3

    bad = tmp_path / "custom.pth"
    torch.save({"obj": NotATensor()}, bad)
    with pytest.raises(compat.UntrustedCheckpointError, match="BALANCED_DET_TRUST_CHECKPOINTS"):
        compat.torch_load(str(bad))
    monkeypatch.setenv("BALANCED_DET_TRUST_CHECKPOINTS", "1")
    assert "obj" in compat.torch_load(str(bad))


def test_torch_load_truncated_is_not_called_untrusted(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(100)}, buf)
    path = tmp_path / "trunc.pth"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(Exception) as e:
        compat.torch_load(str(path))
    assert not isinstance(e.value, compat.UntrustedCheckpointError)


def test_group_norm_checks_divisibility():
    assert compat.group_norm(64).num_groups == 32
    with pytest.raises(ValueError, match="num_channels=1"):
        compat.group_norm(1)


def test_describe_and_model_zoo_configs():
    assert "detectron2" in compat.describe()
    assert compat.model_zoo_config_file("Base-RCNN-FPN.yaml").endswith("Base-RCNN-FPN.yaml")
    with pytest.raises(FileNotFoundError):
        compat.model_zoo_config_file("nope.yaml")
    assert pickle  # keep import
