"""Recorded comparison runs written by hand (the folders ``tools/compare.py --records`` keeps),
for the tests of the tools that read records back."""
import json
import os

from tools import compare as C


def write_record(root, name, seed, ap, curve, lr=None, max_iter=10, suite="synthetic"):
    """``root/<name>/seed<seed>/`` with final box AP ``ap`` (every metric), the evaluation
    history ``curve(ap)`` (``[(iteration, AP)]``) and ``lr`` as an ``optimizer.lr=`` override
    (None: the config's own)."""
    config = {n: cfg for n, cfg, _ in C.SUITES[suite]}[name]
    folder = os.path.join(root, name, f"seed{seed}")
    os.makedirs(folder)
    opts = ([f"optimizer.lr={lr}"] if lr is not None else []) + ["train.eval_period=5"]
    with open(os.path.join(folder, C.RUN_KEY_FILE), "w") as f:
        json.dump({"config": config, "seed": seed, "max_iter": max_iter, "opts": opts}, f)
    with open(os.path.join(folder, "eval_results.json"), "w") as f:
        json.dump({"bbox": {m: ap for m in C.METRICS}}, f)
    with open(os.path.join(folder, C.EVAL_HISTORY), "w") as f:
        json.dump([{"iteration": it, "bbox": {"AP": a}} for it, a in curve(ap)], f)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": max_iter - 1, "total_loss": 1.0, "time": 0.5}) + "\n")
    return folder


def rising(ap):
    """+2 AP over the last evaluation: not converged."""
    return [(5, ap - 2), (10, ap)]


def flat(ap):
    """Converged at the first evaluation."""
    return [(5, ap - 0.1), (10, ap)]
