"""Override keys nested inside LazyCall objects are checked against what their target accepts:
its signature, base classes reached through ``**kwargs`` + ``super().__init__``, and the keys
already set; a typo is a ConfigKeyError with the closest names, not a TypeError at build time."""
import os

import pytest
from omegaconf import OmegaConf

from balanced_det.config import ConfigKeyError, accepted_keywords, check_override_keys, load_config
from detectron2.config import LazyCall as L

from conftest import CONFIG_DIR


class Base:
    def __init__(self, *, depth, width=1):
        self.depth, self.width = depth, width


class Child(Base):
    def __init__(self, *, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout


class Mixin:
    def __init__(self, **kwargs):  # keeps its kwargs: where they go is not knowable
        self.extra = kwargs


class Leaf:
    def __init__(self, size, /, *, scale=1.0):
        self.size, self.scale = size, scale


def forwarding(channels, **kwargs):
    return Base(depth=channels, **kwargs)


@pytest.fixture
def cfg():
    return OmegaConf.create({
        "model": L(Child)(dropout=0.1, depth=3, head=L(Leaf)(scale=2.0)),
        "builder": L(forwarding)(channels=8, width=2),
        "mixed": L(Mixin)(colour="red"),
        "train": {"max_iter": 10, "stages": [L(Leaf)(scale=1.0)]},
    }, flags={"allow_objects": True})


def test_accepted_keywords_follow_kwargs_up_the_mro():
    assert accepted_keywords(Child) == (["dropout", "depth", "width"], True)
    assert accepted_keywords(Leaf) == (["scale"], True)  # positional-only is not a keyword
    assert accepted_keywords(forwarding) == (["channels"], False)
    assert accepted_keywords(Mixin) == ([], False)


def test_valid_nested_keys_are_accepted(cfg):
    check_override_keys(cfg, [
        "model.dropout=0.5",      # set in the config
        "model.width=4",          # not set: Base's argument, reached through Child's **kwargs
        "model.head.scale=3",
        "builder.width=3",        # set, although forwarding() only has it in **kwargs
        "mixed.colour=blue",
        "train.stages.0.scale=2",
        "+builder.depth_extra=1",  # explicit addition
        "+mixed.size=2",
    ])


@pytest.mark.parametrize("override, message", [
    ("model.widht=4", r"model \(.*test_config_overrides.Child\) has no key 'widht'; did you "
                      r"mean width\? Valid keys: depth, dropout, head, width\."),
    ("model.head.scael=3", r"model.head \(.*Leaf\) has no key 'scael'; did you mean scale\?"),
    ("model.head.size=3", r"model.head \(.*Leaf\) has no key 'size'\. Valid keys: scale\."),
    ("builder.channel=3", r"did you mean channels\?.*forwarding also takes \*\*kwargs, which "
                          r"cannot be checked: write \+builder.channel=\.\.\. to pass one"),
    ("mixed.color=blue", r"did you mean colour\?.*Mixin also takes \*\*kwargs"),
    ("train.stages.0.scal=2", r"train.stages.0 \(.*Leaf\) has no key 'scal'; did you mean scale"),
    ("train.stages.1.scale=2", r"train.stages is a list of 1 items; '1' is not a valid index"),
    ("train.max_iters=2", r"train has no key 'max_iters'; did you mean max_iter\?"),
])
def test_nested_typos_name_the_closest_keys(cfg, override, message):
    with pytest.raises(ConfigKeyError, match=message):
        check_override_keys(cfg, [override])


def test_nested_typos_in_a_real_config():
    path = os.path.join(CONFIG_DIR, "COCO-Detection", "faster_rcnn_R_50_FPN_1x.py")
    with pytest.raises(ConfigKeyError, match=r"model.roi_heads \(.*StandardROIHeads\) has no key "
                                             r"'batch_size_per_imag'; did you mean "
                                             r"batch_size_per_image\?"):
        load_config(path, ["model.roi_heads.batch_size_per_imag=256"])
    with pytest.raises(ConfigKeyError, match=r"model.backbone.bottom_up \(.*ResNet\) has no key "
                                             r"'nonexistent'\. Valid keys: .*freeze_at"):
        load_config(path, ["model.backbone.bottom_up.nonexistent=1"])
    # detectron2's ROIHeads argument, reached through StandardROIHeads' **kwargs, not set.
    cfg = load_config(path, ["model.roi_heads.proposal_append_gt=False",
                             "model.roi_heads.batch_size_per_image=256"])
    assert cfg.model.roi_heads.proposal_append_gt is False
    assert cfg.model.roi_heads.batch_size_per_image == 256
