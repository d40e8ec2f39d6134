"""Every dense method config (PISA / GHM / Libra / Sampling-Free RetinaNet, DW-FCOS,
Sampling-Free FCOS; COCO, tree and synthetic versions) trains 2 iterations on synthetic data
through ``do_train`` (the code path of train_net.py), evaluates and checkpoints. The baselines
(retinanet_*, fcos_*) are trained by test_train_smoke.py."""
import math
import os

import pytest
from omegaconf import OmegaConf

from detectron2.config import instantiate
from detectron2.utils.logger import setup_logger

from balanced_det.config import load_config
from balanced_det.engine import do_train

from conftest import all_config_files, rel
from helpers import tiny_cfg

setup_logger(name="balanced_det")
METHOD_PREFIXES = ("pisa_", "ghm_", "libra_", "sampling_free_", "dw_", "usw_", "fl_star_",
                   "noisy_anchor_")
DENSE_METHOD_CONFIGS = [
    p for p in all_config_files()
    if os.path.basename(p).startswith(METHOD_PREFIXES)
    and ("retinanet" in os.path.basename(p) or "fcos" in os.path.basename(p))
]
EXPECTED = {
    f"{d}/{m}_{suffix}"
    for d, suffix in (("COCO-Detection", "R_50_FPN_1x.py"), ("Trees", "effnet_lite0_FPN.py"),
                      ("Synthetic", "effnet_lite0_FPN.py"))
    for m in ("pisa_retinanet", "ghm_retinanet", "libra_retinanet", "sampling_free_retinanet",
              "usw_retinanet", "dw_fcos", "sampling_free_fcos", "fl_star_retinanet",
              "noisy_anchor_retinanet")
} | {"COCO-Detection/dw_fcos_R_50_FPN_refine_1x.py", "Trees/dw_fcos_refine_effnet_lite0_FPN.py",
     "Synthetic/dw_fcos_refine_effnet_lite0_FPN.py"}


def test_all_dense_method_configs_exist():
    assert EXPECTED <= {rel(p) for p in DENSE_METHOD_CONFIGS}


def test_method_configs_change_only_the_method():
    """Tree/synthetic method configs keep their baseline's data, schedule, seed and anchors."""
    for p in DENSE_METHOD_CONFIGS:
        name = rel(p)
        if name.startswith("COCO-"):
            continue
        base = "retinanet" if "retinanet" in name else "fcos"
        base_cfg = load_config(os.path.join(os.path.dirname(p), f"{base}_effnet_lite0_FPN.py"))
        cfg = load_config(p)
        assert cfg.train.seed == base_cfg.train.seed
        assert cfg.train.max_iter == base_cfg.train.max_iter
        assert cfg.optimizer.lr == base_cfg.optimizer.lr
        assert cfg.lr_multiplier == base_cfg.lr_multiplier
        assert cfg.dataloader.train.dataset.names == base_cfg.dataloader.train.dataset.names
        assert cfg.train.output_dir != base_cfg.train.output_dir, name
        if base == "retinanet":
            assert cfg.model.anchor_generator == base_cfg.model.anchor_generator


def test_libra_config_wraps_the_fpn_at_p4():
    name = "Synthetic/libra_retinanet_effnet_lite0_FPN.py"
    p = [p for p in DENSE_METHOD_CONFIGS if rel(p) == name]
    model = instantiate(load_config(p[0]).model)
    assert type(model.backbone).__name__ == "BalancedFPN" and model.backbone.refine_level == 1
    assert model.backbone.output_shape()["p4"].stride == 16


def test_fl_star_config_functions_set_the_loss():
    from balanced_det.modeling import FocalLossStar

    from configs.common.models.dense_methods import fl_star_fcos

    p = [p for p in DENSE_METHOD_CONFIGS if rel(p) == "Trees/fl_star_retinanet_effnet_lite0_FPN.py"]
    loss = instantiate(load_config(p[0]).model).cls_loss
    assert isinstance(loss, FocalLossStar) and (loss.alpha, loss.gamma, loss.beta) == (0.25, 2, 1)
    cfg = load_config(os.path.join(os.path.dirname(p[0]), "fcos_effnet_lite0_FPN.py"))
    loss = instantiate(fl_star_fcos(cfg.model, gamma=4.0, beta=0.0).cls_loss)
    assert isinstance(loss, FocalLossStar) and (loss.gamma, loss.beta) == (4.0, 0.0)


def _tiny(path, out="OUT"):
    # R50 (random init) on 64 px inputs keeps the COCO configs to seconds on a CPU.
    return tiny_cfg(path, out, size=64 if rel(path).startswith("COCO-") else 128)


def _tiny_key(path):
    cfg = _tiny(path)
    return OmegaConf.to_container(cfg, resolve=False)


def _groups():
    """Configs whose tiny jobs are identical (a Trees/ and a Synthetic/ version of a method
    differ only in data and classes, which tiny_cfg replaces) are trained once."""
    groups = []
    for p in DENSE_METHOD_CONFIGS:
        key = _tiny_key(p)
        for g in groups:
            if g[1] == key:
                g[2].append(p)
                break
        else:
            groups.append([p, key, []])
    return {g[0]: g[2] for g in groups}


GROUPS = _groups()


def test_configs_not_trained_separately_give_identical_tiny_jobs():
    covered = set(GROUPS) | {p for same in GROUPS.values() for p in same}
    assert covered == set(DENSE_METHOD_CONFIGS)
    for rep, same in GROUPS.items():
        for p in same:
            assert _tiny_key(p) == _tiny_key(rep), (rel(p), rel(rep))


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(GROUPS), ids=lambda p: "+".join(
    [rel(p)] + [rel(q).split("/")[0] for q in GROUPS[p]]))
def test_dense_method_config_trains_and_evaluates(path, tmp_path):
    cfg = _tiny(path, tmp_path)
    results = do_train(cfg)
    assert results is not None and "bbox" in results
    ap = results["bbox"]["AP"]
    assert math.isnan(ap) or 0.0 <= ap <= 100.0
    assert (tmp_path / "model_final.pth").exists()
