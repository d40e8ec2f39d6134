#!/usr/bin/env python
"""Fair method comparison: train every method config and its baseline on the same data with the
same schedule and seeds, evaluate COCO-style AP, and write one table (Markdown + CSV) with
mean ± std over seeds, training time per iteration and peak memory.

    python tools/compare.py --suite trees --seeds 0 1 2
    python tools/compare.py --suite synthetic --seeds 0 1 2 --max-iter 300
    python tools/compare.py --configs configs/Trees/fcos_effnet_lite0_FPN.py configs/Trees/dw_fcos_effnet_lite0_FPN.py

Each run is ``train_net.py --config-file <cfg> train.seed=<seed> train.output_dir=<out>/<name>/seed<seed>``
(+ ``--max-iter``), so every run's checkpoint, metrics.json and log stay on disk. A finished
run of the same config, seed, schedule and overrides (:func:`is_done`) is not trained again:
an interrupted comparison resumes where it stopped. Outputs: ``<out>/results.md``,
``<out>/results.csv``, ``<out>/runs.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config, description); the first entry of each suite is the baseline of the others
# that share its detector family (see FAMILY).
SUITES: Dict[str, List[Tuple[str, str, str]]] = {
    "trees": [
        ("fcos", "configs/Trees/fcos_effnet_lite0_FPN.py", "FCOS (focal)"),
        ("dw_fcos", "configs/Trees/dw_fcos_effnet_lite0_FPN.py", "DW-FCOS"),
        ("dw_fcos_refine", "configs/Trees/dw_fcos_refine_effnet_lite0_FPN.py", "DW-FCOS + box refinement"),
        ("sampling_free_fcos", "configs/Trees/sampling_free_fcos_effnet_lite0_FPN.py", "Sampling-Free FCOS"),
        ("retinanet", "configs/Trees/retinanet_effnet_lite0_FPN.py", "RetinaNet (focal)"),
        ("ghm_retinanet", "configs/Trees/ghm_retinanet_effnet_lite0_FPN.py", "GHM RetinaNet"),
        ("pisa_retinanet", "configs/Trees/pisa_retinanet_effnet_lite0_FPN.py", "PISA RetinaNet"),
        ("libra_retinanet", "configs/Trees/libra_retinanet_effnet_lite0_FPN.py", "Libra RetinaNet"),
        ("sampling_free_retinanet", "configs/Trees/sampling_free_retinanet_effnet_lite0_FPN.py", "Sampling-Free RetinaNet"),
        ("fl_star_retinanet", "configs/Trees/fl_star_retinanet_effnet_lite0_FPN.py", "FL* RetinaNet"),
        ("noisy_anchor_retinanet", "configs/Trees/noisy_anchor_retinanet_effnet_lite0_FPN.py", "Noisy-anchor RetinaNet"),
        ("faster_rcnn", "configs/Trees/faster_rcnn_effnet_lite0_FPN.py", "Faster R-CNN (random)"),
        ("ohem_faster_rcnn", "configs/Trees/ohem_faster_rcnn_effnet_lite0_FPN.py", "OHEM Faster R-CNN"),
        ("libra_faster_rcnn", "configs/Trees/libra_faster_rcnn_effnet_lite0_FPN.py", "Libra Faster R-CNN"),
        ("pisa_faster_rcnn", "configs/Trees/pisa_faster_rcnn_effnet_lite0_FPN.py", "PISA Faster R-CNN"),
        ("sampling_free_faster_rcnn", "configs/Trees/sampling_free_faster_rcnn_effnet_lite0_FPN.py", "Sampling-Free Faster R-CNN"),
    ],
}
SUITES["synthetic"] = [
    (name, cfg.replace("configs/Trees/", "configs/Synthetic/"), desc)
    for name, cfg, desc in SUITES["trees"]
] + [
    ("mask_rcnn", "configs/Synthetic/mask_rcnn_effnet_lite0_FPN.py", "Mask R-CNN (random)"),
    ("pisa_mask_rcnn", "configs/Synthetic/pisa_mask_rcnn_effnet_lite0_FPN.py", "PISA Mask R-CNN"),
    ("sampling_free_mask_rcnn", "configs/Synthetic/sampling_free_mask_rcnn_effnet_lite0_FPN.py",
     "Sampling-Free Mask R-CNN"),
]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COLUMNS = METRICS + ("mask_AP", "s_per_iter", "peak_mem_mb")


def family(name: str) -> str:
    for fam in ("faster_rcnn", "mask_rcnn", "retinanet", "fcos"):
        if name.endswith(fam) or name.endswith(fam + "_refine"):
            return fam
    return name


def run_one(config: str, out: str, seed: int, max_iter: Optional[int], extra: Sequence[str],
            log_path: str, threads: Optional[int] = None) -> None:
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
           os.path.join(ROOT, config), f"train.seed={seed}", f"train.output_dir={out}", *extra]
    if max_iter:
        cmd.append(f"train.max_iter={max_iter}")
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=env).returncode
    if code != 0:
        raise RuntimeError(f"training failed (exit {code}): {' '.join(cmd)}; see {log_path}")


def run_key(config: str, seed: int, max_iter: Optional[int], extra: Sequence[str]) -> dict:
    """What makes two runs the same run: a finished run is reused only when this matches."""
    return {"config": config, "seed": seed, "max_iter": max_iter, "opts": list(extra)}


def is_done(run_dir: str, key: dict) -> bool:
    """True when ``run_dir`` holds a finished run (``eval_results.json`` written) recorded with
    ``key``: a whole :func:`run_key` (same config, seed, schedule and overrides; another
    schedule in the same folder is trained again, the old run kept beside it as
    ``seed<k>.previous-<time>``) or some of its fields (``{"config": ..., "seed": ...}``: that
    run with any schedule)."""
    try:
        with open(os.path.join(run_dir, "compare_run.json")) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    same = isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in key.items())
    return same and os.path.exists(os.path.join(run_dir, "eval_results.json"))


def last_error_line(log_path: str) -> str:
    """The last line of a failed run's log that names an error (e.g. NonFiniteLossError)."""
    try:
        with open(log_path) as f:
            lines = [ln.strip() for ln in f if "Error" in ln or "error" in ln]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def read_run(out: str) -> Dict[str, float]:
    with open(os.path.join(out, "eval_results.json")) as f:
        results = json.load(f)
    bbox, segm = results["bbox"], results.get("segm")
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    times = [r["time"] for r in rows if "time" in r]
    mem = [r["peak_mem_mb"] for r in rows if "peak_mem_mb" in r]
    res = {m: float(bbox[m]) for m in METRICS}
    res["mask_AP"] = float(segm["AP"]) if segm else float("nan")
    # detectron2's "time" is the median-filtered seconds per iteration; skip warm-up rows.
    res["s_per_iter"] = statistics.median(times[len(times) // 5:]) if times else float("nan")
    res["peak_mem_mb"] = max(mem) if mem else float("nan")
    return res


def mean_std(values: List[float]) -> Tuple[float, float]:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return float("nan"), float("nan")
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def write_tables(out: str, rows: List[dict], seeds: Sequence[int], header: str,
                 family_of: Callable[[str], str] = family) -> str:
    lines = [header, "",
             "| method | AP | AP50 | AP75 | APs | APm | APl | mask AP | s/iter | peak MB | ΔAP vs baseline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    baselines: Dict[str, dict] = {}
    for row in rows:
        base = baselines.setdefault(family_of(row["name"]), row)
        if base is row:
            verdict = "baseline"
        else:
            delta = row["AP"][0] - base["AP"][0]
            noise = 2 * max(row["AP"][1], base["AP"][1])
            verdict = f"{delta:+.1f}" + (" (within seed noise)" if abs(delta) <= noise else "")
        # "-": no value (e.g. APl without large objects in the split, mask AP of a box model)
        cells = ["-" if row[m][0] != row[m][0] else f"{row[m][0]:.1f} ± {row[m][1]:.1f}"
                 for m in METRICS + ("mask_AP",)]
        lines.append(f"| {row['desc']} | " + " | ".join(cells) +
                     f" | {row['s_per_iter'][0]:.2f} | {row['peak_mem_mb'][0]:.0f} | {verdict} |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "config", "seeds"] + [f"{m}_{s}" for m in COLUMNS
                                                     for s in ("mean", "std")])
        for row in rows:
            w.writerow([row["name"], row["config"], " ".join(map(str, seeds))] +
                       [f"{v:.4f}" for m in COLUMNS for v in row[m]])
    return md


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), help="a predefined list of configs")
    parser.add_argument("--configs", nargs="+", help="explicit configs (the first is the baseline)")
    parser.add_argument("--only", nargs="+", help="names of the suite to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-iter", type=int, help="same schedule length for every run")
    parser.add_argument("--output", help="default: output/compare/<suite>")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (each with cores/jobs threads); on a 2-core CPU "
                             "2 single-thread runs finish sooner than 2 consecutive 2-thread runs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides for every run")
    args = parser.parse_args(argv)

    if args.configs:
        entries = [(os.path.splitext(os.path.basename(c))[0], c, os.path.basename(c)) for c in args.configs]
        suite = "custom"
    elif args.suite:
        entries, suite = SUITES[args.suite], args.suite
    else:
        raise SystemExit("give --suite or --configs")
    if args.only:
        unknown = set(args.only) - {e[0] for e in entries}
        if unknown:
            raise SystemExit(f"--only {sorted(unknown)}: choose from {[e[0] for e in entries]}")
        entries = [e for e in entries if e[0] in args.only]
    missing = [c for _, c, _ in entries if not os.path.exists(os.path.join(ROOT, c))]
    if missing:
        raise SystemExit(f"configs not found: {missing}")
    out = args.output or os.path.join(ROOT, "output", "compare", suite)
    os.makedirs(out, exist_ok=True)
    extra = [o for o in (args.opts or []) if o != "--"]

    runs = [(name, cfg, desc, seed) for name, cfg, desc in entries for seed in args.seeds]
    results: Dict[Tuple[str, int], Dict[str, float]] = {}
    start = time.time()
    todo = []
    for name, cfg, desc, seed in runs:
        run_dir = os.path.join(out, name, f"seed{seed}")
        if not is_done(run_dir, run_key(cfg, seed, args.max_iter, extra)):
            todo.append((cfg, run_dir, seed))
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs)) if args.jobs > 1 else None

    failed: Dict[str, str] = {}

    def work(item):
        cfg, run_dir, seed = item
        if os.path.exists(run_dir):  # an unfinished or different earlier run: keep it, start clean
            os.replace(run_dir, f"{run_dir}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(run_dir)
        try:
            run_one(cfg, run_dir, seed, args.max_iter, extra,
                    os.path.join(run_dir, "stdout.log"), threads)
            with open(os.path.join(run_dir, "compare_run.json"), "w") as f:
                json.dump(run_key(cfg, seed, args.max_iter, extra), f)
        except RuntimeError as e:  # e.g. a diverged run: record it, go on with the others
            failed[run_dir] = last_error_line(os.path.join(run_dir, "stdout.log")) or str(e)

    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done; {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for _ in tqdm(pool.map(work, todo), total=len(todo), desc="comparison runs", unit="run"):
            pass
    for name, cfg, desc, seed in runs:
        run_dir = os.path.join(out, name, f"seed{seed}")
        results[(name, seed)] = (read_run(run_dir) if run_dir not in failed
                                 else {m: float("nan") for m in COLUMNS})

    rows = []
    for name, cfg, desc in entries:
        n_failed = sum(1 for s in args.seeds if os.path.join(out, name, f"seed{s}") in failed)
        row = {"name": name, "config": cfg, "desc": desc + (
            f" ({n_failed}/{len(args.seeds)} seeds failed)" if n_failed else "")}
        for m in COLUMNS:
            row[m] = mean_std([results[(name, s)][m] for s in args.seeds])
        rows.append(row)
    header = (f"COCO-style box AP (percent) on the {suite} validation split, mean ± std over seeds "
              f"{', '.join(map(str, args.seeds))}" + (f", {args.max_iter} iterations each" if args.max_iter else "")
              + ". ΔAP: difference of means to the first config of the same detector family; "
              "'within seed noise' when |ΔAP| <= 2 × the larger std.")
    # --configs: the first config is the baseline of all the others
    md = write_tables(out, rows, args.seeds, header,
                      family_of=(lambda name: "custom") if suite == "custom" else family)
    if failed:
        md += "\nFailed runs (excluded from the means):\n" + "".join(
            f"- {os.path.relpath(d, out)}: {msg}\n" for d, msg in sorted(failed.items()))
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(md)
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump({f"{n}/seed{s}": r for (n, s), r in results.items()}, f, indent=1)
    print(md)
    print(f"{len(runs)} runs in {(time.time() - start) / 60:.1f} min; tables in {out}")
    return md


if __name__ == "__main__":
    main()
