"""Methods with cross-process state match one process on the combined batch where the method
defines it so: GHM's EMA counts and normaliser are all-reduced; DW's num_gt and negative
normaliser are averaged over processes. Two gloo CPU processes, one of them with an image
without objects (no deadlock)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import ROOT

import dist_helpers

CONFIGS = {
    "ghm_retinanet": os.path.join(ROOT, "configs", "Synthetic", "ghm_retinanet_effnet_lite0_FPN.py"),
    "dw_fcos": os.path.join(ROOT, "configs", "Synthetic", "dw_fcos_effnet_lite0_FPN.py"),
}


def _port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_processes_equal_one_process_on_the_combined_batch(name, tmp_path):
    config = CONFIGS[name]
    split = (1, 2)  # rank 0: one image; rank 1: an image without objects and another
    data = dist_helpers.batch(3)
    assert len(data[1]["instances"]) == 0, "rank 1 should get an image without objects"
    out = tmp_path / "rank0.pth"
    mp.start_processes(dist_helpers.ddp_worker, nprocs=2, start_method="spawn",
                       args=(2, config, split, _port(), str(out)))
    ddp = torch.load(out, weights_only=True)

    torch.set_num_threads(1)
    model = dist_helpers.build(config)
    _, grads, buffers = dist_helpers.grads_after_step(model, data)
    assert ddp["grads"].keys() == grads.keys()
    for k in grads:
        assert torch.allclose(ddp["grads"][k], grads[k], rtol=1e-4, atol=1e-6), k
    # The EMA buffers (GHM acc_sum/updates) are identical to the single-process update.
    for k, v in buffers.items():
        if k.endswith(("acc_sum", "updates")):
            assert torch.allclose(ddp["buffers"][k].float(), v.float()), k
