"""A training run killed mid-way and resumed ends in exactly the state of an uninterrupted run;
2-process data-parallel training on CPU (gloo) runs through train_net.py, with images
without boxes on one process, and matches a single process on the combined batch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

TRAIN_NET = os.path.join(ROOT, "train_net.py")
CFG = os.path.join(ROOT, "configs", "Trees", "fcos_effnet_lite0_FPN.py")
# Synthetic 256 px images without random augmentation, main-process loading: the image stream
# is a pure function of the iteration (ResumableTrainingSampler), so runs are comparable.
COMMON = [
    "dataloader.train.dataset.names=synthetic_train",
    "dataloader.test.dataset.names=synthetic_val",
    "dataloader.train.mapper.augmentations=[]",
    "dataloader.test.mapper.augmentations=[]",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "model.num_classes=6",
    "train.device=cpu",
    "train.seed=3",
    "train.log_period=1",
    "train.eval_period=0",  # no evaluation: not under test here
]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # identical kernels in every run
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _train(out, max_iter, extra=(), resume=False, num_procs=1):
    cmd = [sys.executable, TRAIN_NET, "--config-file", CFG]
    if resume:
        cmd.append("--resume")
    if num_procs > 1:
        cmd += ["--num-gpus", str(num_procs), "--dist-backend", "gloo"]
    cmd += COMMON + [f"train.output_dir={out}", f"train.max_iter={max_iter}", *extra]
    return cmd


def _final_state(out):
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    return ckpt


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_state(tmp_path):
    extra = ["train.checkpointer.period=2", "dataloader.train.total_batch_size=2"]
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(_train(a, 10, extra), check=True, env=_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)

    proc = subprocess.Popen(_train(b, 10, extra), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The checkpoint file is renamed into place before ``last_checkpoint`` names it: wait for
    # the pointer, not the file, so the kill lands after a completed save of iteration >= 3.
    pointer, deadline = b / "last_checkpoint", time.time() + 600
    while not (pointer.exists() and pointer.read_text() >= "model_0000003.pth"):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (b / "model_final.pth").exists()
    last = (b / "last_checkpoint").read_text()
    assert last.startswith("model_") and torch.load(b / last, weights_only=True)["iteration"] >= 3

    subprocess.run(_train(b, 10, extra, resume=True), check=True, env=_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    sa, sb = _final_state(a), _final_state(b)
    assert sa["iteration"] == sb["iteration"] == 9
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.allclose(sa["model"][k].float(), sb["model"][k].float(), atol=1e-6, rtol=1e-5), k
    # EMA normaliser, optimizer momentum and LR schedule position travelled too.
    assert torch.equal(sa["model"]["loss_normalizer"], sb["model"]["loss_normalizer"])
    assert sa["trainer"]["hooks"]["LRScheduler"] == sb["trainer"]["hooks"]["LRScheduler"]
    mom_a = [s["momentum_buffer"] for s in sa["trainer"]["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in sb["trainer"]["optimizer"]["state"].values()]
    assert all(torch.allclose(x, y, atol=1e-6, rtol=1e-5) for x, y in zip(mom_a, mom_b))
    with open(b / "metrics.json") as f:
        iters_b = [json.loads(line)["iteration"] for line in f if '"lr"' in line]
    assert iters_b[-1] == 9


@pytest.mark.slow
def test_two_cpu_processes_with_empty_images(tmp_path):
    out = tmp_path / "ddp"
    extra = ["dataloader.train.total_batch_size=2", "dataloader.train.dataset.filter_empty=False"]
    proc = subprocess.run(_train(out, 12, extra, num_procs=2), env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = _final_state(out)
    assert final["iteration"] == 11
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
