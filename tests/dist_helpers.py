"""Workers for the distributed tests (importable by spawned processes)."""
import os
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "projects"))
sys.path.insert(0, HERE)

import balanced_det  # noqa: E402,F401
from balanced_det.compat import create_local_process_group  # noqa: E402
from balanced_det.config import load_config  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import detectron2.data.transforms as T  # noqa: E402
from balanced_det.data import DatasetMapper, SyntheticSpec, register_synthetic  # noqa: E402

TINY = SyntheticSpec(num_images=6, image_size=128, num_classes=3, max_objects=8, min_size=10,
                     max_size=40, empty_fraction=0.2, clutter=4, seed=7)


def ensure_tiny_registered():
    if "synthetic_tiny_train" not in DatasetCatalog.list():
        register_synthetic("synthetic_tiny_train", TINY, "train")
        register_synthetic("synthetic_tiny_val", TINY, "val")


def batch(num_images=4):
    """The last ``num_images`` images of synthetic_tiny_train (the second of them has no
    objects), mapped without random augmentation."""
    ensure_tiny_registered()
    dicts = DatasetCatalog.get("synthetic_tiny_train")[-num_images:]
    mapper = DatasetMapper(is_train=True, augmentations=[T.ResizeShortestEdge(128, 256)],
                           image_format="RGB", use_instance_mask=False)
    return [mapper(dict(d)) for d in dicts]


def build(config):
    ensure_tiny_registered()
    cfg = load_config(config)
    m = cfg.model
    m.num_classes = 3
    torch.manual_seed(0)
    model = instantiate(m)
    model.train()
    return model


def grads_after_step(model, inputs):
    """Losses of one training forward on ``inputs``, backward; returns flat grads + buffers."""
    with EventStorage(0):
        losses = model(inputs)
    sum(losses.values()).backward()
    net = model.module if hasattr(model, "module") else model
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    return {k: v.detach() for k, v in losses.items()}, grads, buffers


def ddp_worker(rank, world, config, split, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=world,
                            rank=rank)
    create_local_process_group(world)
    torch.set_num_threads(1)
    model = build(config)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=None,
                                                    find_unused_parameters=True)
    data = batch(sum(split))
    start = sum(split[:rank])
    mine = data[start:start + split[rank]]
    losses, grads, buffers = grads_after_step(ddp, mine)
    if rank == 0:
        torch.save({"grads": grads, "buffers": buffers}, out_path)
    dist.barrier()
    dist.destroy_process_group()
