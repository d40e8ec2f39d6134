#!/usr/bin/env python
"""The GPU suite: one prepared run (about 10 minutes on one GPU) of what needs a GPU to measure.

1. Step time and peak memory of every COCO R50-FPN config (configs/COCO-Detection,
   configs/COCO-InstanceSegmentation) on COCO-size synthetic batches (2 images of 800 x 1333,
   15 boxes per image, 80 classes; rectangle masks for Mask R-CNN), random initialisation (no
   COCO, no ImageNet weights needed), fp32 and AMP (float16 + GradScaler on CUDA, bfloat16 on
   the CPU), each method's ratio to its baseline (the family's config: Faster R-CNN, RetinaNet,
   FCOS, Mask R-CNN) and AMP's speed-up over fp32.
2. Finiteness: ``--finite-iters`` (default 300) AMP iterations of every config, the first
   iterations of its own recipe (warm-up included, LR scaled linearly to the batch), every
   loss checked each iteration by the project's :class:`~balanced_det.engine.Trainer`;
   ``--finite-jobs`` (default 4 on CUDA) runs at a time, each its own process on the GPU.
3. Optionally (``--comparison trees|synthetic``) the CPU comparison of ``tools/compare.py`` on
   the GPU, ``--comparison-jobs`` runs in parallel.

Sampling-Free models get fixed stand-in dataset statistics (foreground fraction 0.01, equal
class counts): the suite measures speed and stability, not accuracy. Steps run through the
training loop's ``Trainer`` (the AMP and non-finite paths of real training). A time budget
(``--budget-s``) skips what would not fit, and the tables say so.

    python tools/gpu_suite.py                                   # GPU: tables to docs/results/gpu/
    python tools/gpu_suite.py --comparison trees --comparison-jobs 4
    python tools/gpu_suite.py --tiny --device cpu --out /tmp/gpu_suite   # CPU check (seconds)

Outputs in ``--out``: ``steps.md`` (time, memory, ratios), ``finite.md`` (finiteness),
``suite.json`` (all figures), ``comparison_<suite>.md`` (the runs stay in
``output/compare/<suite>-<device>/``).
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "projects") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "projects"))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import balanced_det  # noqa: E402,F401
from balanced_det.config import load_config  # noqa: E402
from balanced_det.data.synthetic import coco_like_gt_boxes  # noqa: E402
from balanced_det.engine import NonFiniteLossError, Trainer  # noqa: E402
from balanced_det.engine.train_loop import cfg_get  # noqa: E402
from balanced_det.stats import dataset_stats_parts  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances, PolygonMasks  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from tools.compare import family  # noqa: E402

CONFIG_DIRS = ("configs/COCO-Detection", "configs/COCO-InstanceSegmentation")
NUM_CLASSES = 80


def coco_configs() -> List[str]:
    """Every COCO R50-FPN config, relative to the repository root."""
    return sorted(os.path.relpath(p, ROOT) for d in CONFIG_DIRS
                  for p in glob.glob(os.path.join(ROOT, d, "*_R_50_FPN*.py")))


def short_name(config: str) -> str:
    """``pisa_faster_rcnn`` of ``configs/COCO-Detection/pisa_faster_rcnn_R_50_FPN_1x.py``."""
    name = os.path.splitext(os.path.basename(config))[0]
    return name.replace("_R_50_FPN", "").replace("_1x", "")


def baseline_of(config: str, configs: List[str]) -> Optional[str]:
    """The family's baseline among ``configs`` (the config named after the family)."""
    fam = family(short_name(config))
    return next((c for c in configs if short_name(c) == fam), None)


def synthetic_batch(size, num_images: int, num_gt: int, masks: bool, seed: int) -> List[dict]:
    """COCO-size random images with random GT boxes (:func:`coco_like_gt_boxes`) and, with
    ``masks``, the boxes as polygon masks."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(num_images):
        boxes, classes = coco_like_gt_boxes(size, num_gt, NUM_CLASSES, g)
        inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=classes)
        if masks:
            inst.gt_masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].numpy()] for b in boxes])
        batch.append({"image": torch.rand(3, h, w, generator=g) * 255, "instances": inst,
                      "height": h, "width": w})
    return batch


def build(config: str, device: str):
    """Model (random init, stand-in dataset statistics, train mode) and the config."""
    cfg = load_config(os.path.join(ROOT, config))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    for part in dataset_stats_parts(model).values():
        part.apply_dataset_stats(0.01, [100] * NUM_CLASSES)
    return model.to(device).train(), cfg


def make_trainer(model, cfg, batches, amp: bool, device: str, batch_size: int,
                 nonfinite: str = "raise"):
    """The project's Trainer over ``batches`` (cycled) with the config's optimizer, its LR
    scaled linearly from ``dataloader.train.total_batch_size`` to ``batch_size``."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    ref = int(cfg_get(cfg, "dataloader.train.total_batch_size", 16))
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * batch_size / ref
    return Trainer(model, itertools.cycle(batches), optimizer, amp=amp, amp_dtype="auto",
                   device_type=torch.device(device).type, nonfinite=nonfinite,
                   max_consecutive_skips=10 ** 6)


def recipe_steps(trainer, cfg, storage, iters: int):
    """Generator running ``iters`` steps of ``trainer`` at the LR of the config's schedule for
    those iterations (warm-up included); yields each iteration after its step."""
    sched = instantiate(cfg.lr_multiplier)
    max_iter = int(cfg.train.max_iter)
    base = [g["lr"] for g in trainer.optimizer.param_groups]
    for i in range(iters):
        for g, lr in zip(trainer.optimizer.param_groups, base):
            g["lr"] = lr * sched(i / max_iter)
        storage.iter = trainer.iter = i
        trainer.run_step()
        yield i


def batches_for(config: str, size, batch: int, num_gt: int, _cache={}) -> list:
    """4 synthetic batches (cycled by the trainer), with masks for Mask R-CNN configs."""
    masks = "mask_rcnn" in short_name(config)
    key = (masks, tuple(size), batch, num_gt)
    if key not in _cache:
        _cache[key] = [synthetic_batch(size, batch, num_gt, masks, seed) for seed in range(4)]
    return _cache[key]


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(config: str, args, batches, amp: bool) -> Dict[str, float]:
    """Median step time (ms) over ``args.steps`` steps after ``args.warmup``, and the peak
    memory (MiB; CUDA only, NaN on the CPU) of those steps; the first steps of the config's
    recipe (a non-finite step is skipped, not fatal, and counted)."""
    model, cfg = build(config, args.device)
    trainer = make_trainer(model, cfg, batches, amp, args.device, args.batch, nonfinite="skip")
    cuda = torch.device(args.device).type == "cuda"
    times = []
    with EventStorage(0) as storage:
        sync(args.device)
        t = time.perf_counter()
        for i in recipe_steps(trainer, cfg, storage, args.warmup + args.steps):
            sync(args.device)
            if i >= args.warmup:
                times.append(1e3 * (time.perf_counter() - t))
            if i + 1 == args.warmup and cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
        skipped = len(storage.history("nonfinite_skipped").values()) \
            if "nonfinite_skipped" in storage.histories() else 0
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return {"ms": statistics.median(times), "peak_mib": peak, "nonfinite_steps": skipped}


def finite_run(config: str, args, batches) -> Dict[str, object]:
    """``args.finite_iters`` AMP iterations of the config's recipe; the first non-finite
    iteration, or None."""
    model, cfg = build(config, args.device)
    trainer = make_trainer(model, cfg, batches, True, args.device, args.batch)
    first_bad, extra = None, {}
    with EventStorage(0) as storage:
        try:
            for _ in recipe_steps(trainer, cfg, storage, args.finite_iters):
                pass
        except NonFiniteLossError as e:
            first_bad, extra = storage.iter, {"error": str(e)[:300]}
        hist = storage.histories().get("total_loss")
        loss = hist.latest() if hist is not None else float("nan")
    return {"iters": args.finite_iters, "first_nonfinite": first_bad,
            "last_total_loss": loss, **extra}


def ratio(a: float, b: Optional[float]) -> str:
    """``a / b`` with two decimals; "-" when either is missing (NaN: no CUDA memory figure)."""
    return "-" if b is None or b != b or a != a or b == 0 else f"{a / b:.2f}"


def mib(v: float) -> str:
    return "-" if v != v else f"{v:.0f}"


def write_tables(out: str, results: Dict[str, dict], args, header: str) -> str:
    """``steps.md`` and ``finite.md``; returns both as one text."""
    names = list(results)
    lines = [header, "", "| config | fp32 ms | AMP ms | AMP speed-up | fp32 peak MiB | AMP peak MiB "
             "| fp32 / baseline | AMP / baseline | AMP memory / baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in names:
        r = results[c]
        if "fp32" not in r:
            lines.append(f"| {short_name(c)} | not run ({r.get('skipped', '')}) |" + " - |" * 7)
            continue
        b = results.get(r["baseline"] or "", {})
        bf, ba = b.get("fp32", {}), b.get("amp", {})
        lines.append(
            f"| {short_name(c)} | {r['fp32']['ms']:.1f} | {r['amp']['ms']:.1f} | "
            f"{ratio(r['fp32']['ms'], r['amp']['ms'])} | {mib(r['fp32']['peak_mib'])} | "
            f"{mib(r['amp']['peak_mib'])} | {ratio(r['fp32']['ms'], bf.get('ms'))} | "
            f"{ratio(r['amp']['ms'], ba.get('ms'))} | "
            f"{ratio(r['amp']['peak_mib'], ba.get('peak_mib'))} |")
    steps = "\n".join(lines) + "\n"
    lines = [header, "", "| config | AMP iterations | finite | last total loss | note |",
             "|---|---|---|---|---|"]
    for c in names:
        f = results[c].get("finite")
        if f is None:
            lines.append(f"| {short_name(c)} | - | not run | - | {results[c].get('skipped', '')} |")
            continue
        ok = "NO, crashed" if f.get("crashed") else "yes" if f["first_nonfinite"] is None \
            else f"NO, at iteration {f['first_nonfinite']}"
        lines.append(f"| {short_name(c)} | {f['iters']} | {ok} | "
                     f"{f['last_total_loss']:.3f} | {f.get('error', '')} |")
    finite = "\n".join(lines) + "\n"
    for name, text in (("steps.md", steps), ("finite.md", finite)):
        with open(os.path.join(out, name), "w") as fh:
            fh.write(text)
    return steps + "\n" + finite


def machine_line(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and few iterations: a check that runs on the CPU")
    parser.add_argument("--configs", nargs="+", help="a subset (default: every COCO R50-FPN config)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "gpu"))
    parser.add_argument("--steps", type=int, help="timed steps per config and precision "
                        "(default 10; --tiny 1)")
    parser.add_argument("--finite-iters", type=int, help="AMP iterations of the finiteness "
                        "check (default 300; --tiny 2)")
    parser.add_argument("--finite-jobs", type=int, help="finiteness runs at a time, each its own "
                        "process on the one device (default: 4 on CUDA, 1 otherwise)")
    parser.add_argument("--finite-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="time budget of parts 1-2; what would start after it is skipped")
    parser.add_argument("--comparison", choices=("trees", "synthetic"),
                        help="also run tools/compare.py's suite on the device")
    parser.add_argument("--comparison-jobs", type=int, default=4)
    parser.add_argument("--comparison-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--comparison-iter", type=int, help="--max-iter of the comparison")
    args = parser.parse_args(argv)
    args.steps = args.steps or (1 if args.tiny else 10)
    args.warmup = 0 if args.tiny else 3
    args.finite_iters = args.finite_iters if args.finite_iters is not None else (
        2 if args.tiny else 300)
    size, args.batch, num_gt = ((96, 128), 1, 3) if args.tiny else ((800, 1333), 2, 15)
    if args.finite_jobs is None:
        args.finite_jobs = 4 if torch.device(args.device).type == "cuda" else 1
    if args.finite_worker:  # one finiteness run, its result as JSON to --out
        res = finite_run(args.finite_worker, args, batches_for(args.finite_worker, size,
                                                               args.batch, num_gt))
        with open(args.out, "w") as f:
            json.dump(res, f)
        return ""
    os.makedirs(args.out, exist_ok=True)
    configs = args.configs or coco_configs()
    unknown = [c for c in configs if not os.path.exists(os.path.join(ROOT, c))]
    if unknown:
        raise SystemExit(f"configs not found: {unknown}")
    # baselines first, so every ratio has its denominator when the budget runs out
    configs = sorted(configs, key=lambda c: (baseline_of(c, configs) != c, c))
    start = time.time()
    results: Dict[str, dict] = {c: {"baseline": baseline_of(c, configs)} for c in configs}

    def over_budget(c: str, part: str) -> bool:
        if time.time() - start <= args.budget_s:
            return False
        results[c]["skipped"] = f"{part}: time budget {args.budget_s:.0f} s"
        return True

    # 1. step times, one config at a time (the device to itself)
    for c in tqdm(configs, desc="step times", unit="config"):
        if not over_budget(c, "steps"):
            batches = batches_for(c, size, args.batch, num_gt)
            results[c]["fp32"] = time_steps(c, args, batches, amp=False)
            results[c]["amp"] = time_steps(c, args, batches, amp=True)
    # 2. finiteness, --finite-jobs configs at a time (subprocesses sharing the device)
    todo = [c for c in configs if "fp32" in results[c]]

    def finite(c: str):
        if over_budget(c, "finiteness"):
            return
        if args.finite_jobs <= 1:
            results[c]["finite"] = finite_run(c, args, batches_for(c, size, args.batch, num_gt))
            return
        res_path = os.path.join(args.out, f".finite-{short_name(c)}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--finite-worker", c, "--device",
               args.device, "--finite-iters", str(args.finite_iters), "--out", res_path]
        proc = subprocess.run(cmd + (["--tiny"] if args.tiny else []), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            results[c]["finite"] = {"iters": args.finite_iters, "first_nonfinite": None,
                                    "last_total_loss": float("nan"), "crashed": True,
                                    "error": proc.stderr.strip().splitlines()[-1][:300]}
        else:
            with open(res_path) as f:
                results[c]["finite"] = json.load(f)
            os.remove(res_path)

    with ThreadPoolExecutor(max_workers=max(1, args.finite_jobs)) as pool:
        for _ in tqdm(pool.map(finite, todo), total=len(todo), desc="finiteness", unit="config"):
            pass
    header = (f"{machine_line(args.device)}; {'tiny check' if args.tiny else 'COCO-size'} "
              f"synthetic batches of {args.batch} x {size[0]} x {size[1]}, {num_gt} boxes per "
              f"image, {NUM_CLASSES} classes, random init; median of {args.steps} steps after "
              f"{args.warmup}; {time.time() - start:.0f} s.")
    md = write_tables(args.out, results, args, header)
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump({"header": header, "results": results}, f, indent=1, default=str)
    if args.comparison:
        from tools import compare

        runs = os.path.join(ROOT, "output", "compare", f"{args.comparison}-{args.device}")
        cmd = ["--suite", args.comparison, "--seeds", *map(str, args.comparison_seeds),
               "--jobs", str(args.comparison_jobs), "--output", runs]
        if args.comparison_iter:
            cmd += ["--max-iter", str(args.comparison_iter)]
        table = compare.main(cmd + [f"train.device={args.device}"])
        with open(os.path.join(args.out, f"comparison_{args.comparison}.md"), "w") as f:
            f.write(table)  # the runs themselves stay in output/compare/
        md += "\n" + table
    print(md)
    print(f"tables in {args.out}")
    return md


if __name__ == "__main__":
    main()
