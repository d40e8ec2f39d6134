"""Shared fixtures: an isolated cache folder, tiny synthetic datasets, and config helpers."""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects"))
if ROOT not in sys.path:  # the tools package (tools.compare, tools.analysis)
    sys.path.append(ROOT)
# Converted/generated data of a test session goes to its own cache, created from scratch.
_CACHE = tempfile.mkdtemp(prefix="balanced_det_test_cache_")
os.environ["BALANCED_DET_CACHE"] = _CACHE

import pytest  # noqa: E402
import torch  # noqa: E402

import balanced_det  # noqa: E402,F401
from balanced_det.data import SyntheticSpec, register_synthetic  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = SyntheticSpec(num_images=6, image_size=128, num_classes=3, max_objects=8, min_size=10,
                     max_size=40, empty_fraction=0.2, clutter=4, seed=7)
register_synthetic("synthetic_tiny_train", TINY, "train")
register_synthetic("synthetic_tiny_val", TINY, "val")

CONFIG_DIR = os.path.join(ROOT, "configs")


def all_config_files():
    out = []
    for dirpath, _, files in os.walk(CONFIG_DIR):
        if os.path.basename(dirpath) == "common" or "/common" in dirpath:
            continue
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(out)


def rel(path):
    return os.path.relpath(path, CONFIG_DIR)


@pytest.fixture(scope="session")
def root_dir():
    return ROOT


@pytest.fixture(autouse=True)
def _third_party_warnings_ignored():
    """detectron2's, fvcore's and pycocotools' own warnings (compat.KNOWN_WARNINGS) stay
    ignored in tests that call models directly, also under ``pytest -W default``."""
    from balanced_det.compat import known_warnings_ignored

    with known_warnings_ignored():
        yield


# Tiny models (random features, a few channels) for unit tests of the hosts and plug-ins: each
# fixture is the builder, called with the options under test.
@pytest.fixture
def tiny_retinanet():
    from helpers_dense import tiny_retinanet as build

    return build


@pytest.fixture
def tiny_fcos():
    from helpers_dense import tiny_fcos as build

    return build


@pytest.fixture
def tiny_roi_heads():
    from helpers_two_stage import balanced_roi_heads as build

    return build


@pytest.fixture
def tiny_rpn():
    from helpers_two_stage import balanced_rpn as build

    return build
