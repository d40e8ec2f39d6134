"""Pretrained weights named by a URL, on a machine without network access: a clear error that
names the URL, detectron2's cache file and how to supply the file, and a file placed in that
cache is used without any download. The network is blocked in these tests (no real access)."""
import os
import socket

import pytest
import torch

from balanced_det.config import load_config
from balanced_det.engine import Checkpointer, WeightsDownloadError
from balanced_det.engine.checkpoint import download_cache_path

from conftest import CONFIG_DIR

R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (name resolution and connections fail) and an empty download cache."""
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    return attempts


def test_coco_init_checkpoint_offline_names_url_cache_and_remedies(offline, tmp_path):
    cfg = load_config(os.path.join(CONFIG_DIR, "COCO-Detection", "faster_rcnn_R_50_FPN_1x.py"))
    assert cfg.train.init_checkpoint == R50
    cached = tmp_path / "cache" / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    assert download_cache_path(R50) == str(cached)
    with pytest.raises(WeightsDownloadError) as e:
        # As train_net.py's training loop does, with a small model in place of the R50.
        Checkpointer(torch.nn.Linear(2, 2), str(tmp_path / "out")).resume_or_load(
            cfg.train.init_checkpoint, resume=False)
    msg = str(e.value)
    assert offline, "the download was not attempted"
    assert f"cannot download {R50} (https://dl.fbaipublicfiles.com/detectron2/" \
           "ImageNetPretrained/MSRA/R-50.pkl)" in msg
    assert "Name or service not known" in msg
    assert "train.init_checkpoint=/path/R-50.pkl" in msg
    assert f"place it at {cached}" in msg and "$FVCORE_CACHE" in msg
    assert not cached.exists()


def test_file_placed_in_the_cache_is_used_offline(offline, tmp_path):
    url = "https://weights.example/models/tiny.pth"
    model = torch.nn.Linear(2, 2)
    trained = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    cached = download_cache_path(url)
    assert cached == str(tmp_path / "cache" / "models" / "tiny.pth")
    os.makedirs(os.path.dirname(cached))
    torch.save({"model": trained}, cached)
    Checkpointer(model, str(tmp_path / "out")).load(url)
    assert not offline, "a cached file must not be downloaded"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
