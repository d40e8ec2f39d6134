"""Every config under configs/ loads and its model instantiates; overrides are checked."""
import pytest
import torch

from balanced_det.config import ConfigKeyError, load_config
from detectron2.config import instantiate

from conftest import all_config_files, rel

CONFIGS = all_config_files()


def test_there_are_configs():
    names = {rel(p) for p in CONFIGS}
    for required in ("COCO-Detection/faster_rcnn_R_50_FPN_1x.py",
                     "COCO-Detection/retinanet_R_50_FPN_1x.py",
                     "COCO-Detection/fcos_R_50_FPN_1x.py",
                     "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
                     "Trees/fcos_effnet_lite0_FPN.py"):
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_config_loads_and_model_builds(path):
    cfg = load_config(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, f"{rel(path)} lacks {key}"
    for key in ("train", "test", "evaluator"):
        assert key in cfg.dataloader
    cfg.train.device = "cpu"
    model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    cfg.optimizer.params.model = model
    assert isinstance(instantiate(cfg.optimizer), torch.optim.Optimizer)
    instantiate(cfg.lr_multiplier)


def test_override_typo_is_refused_with_suggestion():
    path = [p for p in CONFIGS if rel(p) == "Trees/fcos_effnet_lite0_FPN.py"][0]
    with pytest.raises(ConfigKeyError, match=r"train has no key 'max_iters'; did you mean max_iter"):
        load_config(path, ["train.max_iters=10"])
    with pytest.raises(ConfigKeyError, match="test_score_thres"):
        load_config(path, ["model.test_score_thres=0.1"])
    # A constructor argument not written in the config is a valid key (target signature).
    cfg = load_config(path, ["model.loss_normalizer_momentum=0.5", "train.max_iter=7",
                             "+train.my_new_key=1"])
    assert cfg.model.loss_normalizer_momentum == 0.5 and cfg.train.max_iter == 7
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_config("configs/nope.py")
