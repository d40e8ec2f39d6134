#!/usr/bin/env python
"""Fair method comparison: train every method config and its baseline on the same data with the
same schedule and the same seeds, evaluate COCO-style AP at several points of the schedule, and
write one table (Markdown + CSV) with mean ± std over seeds, the paired ΔAP to the family's
baseline with its 95 % confidence interval and reading, time per iteration and peak memory.

    python tools/compare.py --suite trees --seeds 0 1 2
    python tools/compare.py --suite synthetic --seeds 0 1 2 --max-iter 300
    python tools/compare.py --configs configs/Trees/fcos_effnet_lite0_FPN.py configs/Trees/dw_fcos_effnet_lite0_FPN.py
    python tools/compare.py --suite trees --only fcos retinanet faster_rcnn --max-iter 800 --convergence

Each run is ``train_net.py --config-file <cfg> train.seed=<seed> train.output_dir=<out>/<name>/seed<seed>``
(+ ``--max-iter``, + ``train.eval_period`` from ``--eval-points``), so every run's checkpoint,
metrics.json, eval_history.json (AP of every evaluation) and log stay on disk. A finished run
of the same config, seed, schedule and overrides (:func:`is_done`) is not trained again: an
interrupted comparison resumes where it stopped. Outputs: ``<out>/results.md``,
``<out>/results.csv``, ``<out>/runs.json`` (with each run's AP per evaluation) and, with
``--convergence``, ``<out>/convergence.md``.

``--records DIR`` keeps a copy of each finished run's small files (:data:`RECORD_FILES`: the
run key, final and per-evaluation AP, metrics, the final model's validation detections; no
checkpoints) in ``DIR/<name>/seed<k>/``, a
folder meant for version control, and restores a recorded run instead of training it again:
a long comparison can then span machines and sessions (the README's runs are in
``docs/results/runs/``).

Reading of ΔAP (:func:`paired_delta`): the mean over seeds of (method AP − baseline AP) of
the same seed, with a Student-t 95 % interval; "better" / "worse" when the interval lies above
/ below 0, "no difference shown" when it contains 0, and no reading under 3 paired seeds.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
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
        ("ghm_per_level_retinanet", "configs/Trees/ghm_per_level_retinanet_effnet_lite0_FPN.py",
         "GHM RetinaNet, losses per FPN level"),
        ("pisa_retinanet", "configs/Trees/pisa_retinanet_effnet_lite0_FPN.py", "PISA RetinaNet"),
        ("libra_retinanet", "configs/Trees/libra_retinanet_effnet_lite0_FPN.py", "Libra RetinaNet"),
        ("sampling_free_retinanet", "configs/Trees/sampling_free_retinanet_effnet_lite0_FPN.py", "Sampling-Free RetinaNet"),
        ("usw_retinanet", "configs/Trees/usw_retinanet_effnet_lite0_FPN.py", "USW RetinaNet"),
        ("fl_star_retinanet", "configs/Trees/fl_star_retinanet_effnet_lite0_FPN.py", "FL* RetinaNet"),
        ("noisy_anchor_retinanet", "configs/Trees/noisy_anchor_retinanet_effnet_lite0_FPN.py", "Noisy-anchor RetinaNet"),
        ("faster_rcnn", "configs/Trees/faster_rcnn_effnet_lite0_FPN.py", "Faster R-CNN (random)"),
        ("ohem_faster_rcnn", "configs/Trees/ohem_faster_rcnn_effnet_lite0_FPN.py", "OHEM Faster R-CNN"),
        ("libra_faster_rcnn", "configs/Trees/libra_faster_rcnn_effnet_lite0_FPN.py", "Libra Faster R-CNN"),
        ("pisa_faster_rcnn", "configs/Trees/pisa_faster_rcnn_effnet_lite0_FPN.py", "PISA Faster R-CNN"),
        ("sampling_free_faster_rcnn", "configs/Trees/sampling_free_faster_rcnn_effnet_lite0_FPN.py", "Sampling-Free Faster R-CNN"),
        ("usw_faster_rcnn", "configs/Trees/usw_faster_rcnn_effnet_lite0_FPN.py", "USW Faster R-CNN"),
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
    ("usw_mask_rcnn", "configs/Synthetic/usw_mask_rcnn_effnet_lite0_FPN.py", "USW Mask R-CNN"),
    ("faster_rcnn_lt", "configs/Synthetic/faster_rcnn_long_tail_effnet_lite0_FPN.py",
     "Faster R-CNN, long-tail data (softmax)"),
    ("eql_faster_rcnn_lt", "configs/Synthetic/eql_faster_rcnn_effnet_lite0_FPN.py",
     "EQL Faster R-CNN, long-tail data"),
]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# AP of the rare / common / frequent classes (datasets whose classes carry frequency groups)
GROUP_METRICS = ("APr", "APc", "APf")
COLUMNS = METRICS + GROUP_METRICS + ("mask_AP", "s_per_iter", "peak_mem_mb")
EVAL_HISTORY = "eval_history.json"  # written by balanced_det.engine.do_train
RUN_KEY_FILE = "compare_run.json"
# what a table, a curve and the loss figures need of a finished run (not its checkpoints)
DETECTIONS = "val_detections.json.gz"  # balanced_det.evaluation.coco.DETECTIONS_FILE
RECORD_FILES = (RUN_KEY_FILE, "eval_results.json", EVAL_HISTORY, "metrics.json", DETECTIONS)
MIN_SEEDS = 3  # fewest paired seeds for a reading of ΔAP or a convergence point
MIN_GAIN = 0.5  # AP: a schedule has converged when its last evaluation added less
# Two-sided 95 % quantiles of Student's t, t_{0.975}(df), df = 1..30.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def family(name: str) -> str:
    for fam in ("faster_rcnn_lt", "faster_rcnn", "mask_rcnn", "retinanet", "fcos"):
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
        with open(os.path.join(run_dir, RUN_KEY_FILE)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    same = isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in key.items())
    return same and os.path.exists(os.path.join(run_dir, "eval_results.json"))


def records_another_run(record: str, key: dict) -> bool:
    """``record`` holds a complete record (its run key is written last) of another run key."""
    return os.path.exists(os.path.join(record, RUN_KEY_FILE)) and not is_done(record, key)


def copy_record(src: str, dst: str) -> None:
    """Copy the :data:`RECORD_FILES` a run folder has from ``src`` to ``dst``, the run key
    last (a folder with the key is complete)."""
    os.makedirs(dst, exist_ok=True)
    for name in RECORD_FILES[1:] + RECORD_FILES[:1]:
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def set_aside(run_dir: str) -> None:
    """Move an unfinished or different earlier run out of the way, kept as
    ``<run_dir>.previous-<time>``."""
    if os.path.exists(run_dir):
        os.replace(run_dir, f"{run_dir}.previous-{time.strftime('%Y%m%d-%H%M%S')}")


def last_error_line(log_path: str) -> str:
    """The last line of a failed run's log that names an error (e.g. NonFiniteLossError)."""
    try:
        with open(log_path) as f:
            lines = [ln.strip() for ln in f if "Error" in ln or "error" in ln]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def t975(df: int) -> float:
    """Student's t quantile of a two-sided 95 % interval with ``df`` degrees of freedom
    (df > 30: the df = 30 value, slightly conservative)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T975[min(df, len(T975)) - 1]


def paired_delta(base: Dict[int, float], method: Dict[int, float]) -> dict:
    """ΔAP of ``method`` over ``base`` (``{seed: AP}``) on the seeds both finished:
    d_s = method_s − base_s, mean d̄, 95 % interval d̄ ± t975(n − 1)·sd(d)/√n.

    Returns ``{"n", "mean", "lo", "hi", "reading"}``; reading "better" (lo > 0), "worse"
    (hi < 0), "no difference shown", or "n < 3 seeds" (no reading; lo/hi NaN when n < 2)."""
    seeds = sorted(s for s in set(base) & set(method) if base[s] == base[s] and method[s] == method[s])
    d = [method[s] - base[s] for s in seeds]
    nan = float("nan")
    if not d:
        return {"n": 0, "mean": nan, "lo": nan, "hi": nan, "reading": f"n < {MIN_SEEDS} seeds"}
    mean = statistics.mean(d)
    half = t975(len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else nan
    lo, hi = mean - half, mean + half
    if len(d) < MIN_SEEDS:
        reading = f"n < {MIN_SEEDS} seeds"
    else:
        reading = "better" if lo > 0 else "worse" if hi < 0 else "no difference shown"
    return {"n": len(d), "mean": mean, "lo": lo, "hi": hi, "reading": reading}


def eval_period(max_iter: int, points: int) -> int:
    """Evaluation period that gives ``points`` evaluations over ``max_iter`` iterations (the
    last one at the end of training)."""
    return max(1, -(-int(max_iter) // max(1, int(points))))


def select_entries(entries: Sequence[Tuple[str, str, str]],
                   only: Optional[Sequence[str]]) -> List[Tuple[str, str, str]]:
    """The entries named in ``only`` (all when ``only`` is empty), in suite order; an unknown
    name is an error that lists the valid ones."""
    if not only:
        return list(entries)
    unknown = set(only) - {e[0] for e in entries}
    if unknown:
        raise SystemExit(f"--only {sorted(unknown)}: choose from {[e[0] for e in entries]}")
    return [e for e in entries if e[0] in only]


def config_max_iter(config: str) -> int:
    """``train.max_iter`` of a config file (its schedule when ``--max-iter`` is not given)."""
    from balanced_det.config import load_config

    return int(load_config(os.path.join(ROOT, config)).train.max_iter)


def seed_folders(folder: str) -> Dict[int, str]:
    """``{seed: path}`` of the ``seed<k>`` run folders directly under ``folder``, by seed (none
    when it does not exist; a set-aside ``seed<k>.previous-<time>`` folder is not a run)."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    found = {int(d[4:]): os.path.join(folder, d) for d in names
             if d.startswith("seed") and d[4:].isdigit()}
    return dict(sorted(found.items()))


def read_ap_curve(run_dir: str) -> Dict[int, float]:
    """``{iterations done: box AP}`` of every evaluation of a run: ``eval_history.json``, else
    the ``bbox/AP`` rows of ``metrics.json`` (runs from before the history was kept; there
    detectron2 logs the 0-based iteration of a periodic evaluation and ``max_iter`` for the
    final one, so the count is capped at the last training row + 1)."""
    path = os.path.join(run_dir, EVAL_HISTORY)
    if os.path.exists(path):
        with open(path) as f:
            return {int(h["iteration"]): float(h["bbox"]["AP"]) for h in json.load(f)
                    if "bbox" in h}
    rows = []
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a line being written
    except OSError:
        return {}
    last = max((int(r["iteration"]) for r in rows if "total_loss" in r and "iteration" in r),
               default=None)
    return {min(int(r["iteration"]) + 1, last + 1 if last is not None else 1 << 62):
            float(r["bbox/AP"]) for r in rows if "bbox/AP" in r and "iteration" in r}


def convergence_point(curves: Sequence[Dict[int, float]], min_gain: float = MIN_GAIN) -> dict:
    """Where the mean AP curve over seeds stops improving: the first evaluation that no later
    evaluation exceeds by ``min_gain`` or more (iterations evaluated by every seed; a dip
    followed by a rise is not a plateau).

    Returns ``{"n", "iterations", "mean_ap", "converged_at"}`` (``converged_at`` None when no
    evaluation before the last is such a point, e.g. the last still gained ``min_gain`` or more,
    or fewer than 2 evaluations)."""
    curves = [c for c in curves if c]
    its = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
    mean_ap = [statistics.mean(c[i] for c in curves) for i in its]
    at = next((its[k] for k in range(len(its) - 1) if max(mean_ap[k + 1:]) - mean_ap[k] < min_gain),
              None)
    return {"n": len(curves), "iterations": its, "mean_ap": mean_ap, "converged_at": at}


def write_markdown(lines: Sequence[str], path: str) -> str:
    """Write ``lines`` (one Markdown line each) to ``path``, making its folder; the text."""
    md = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(md)
    return md


def write_convergence(out: str, rows: List[dict], family_of: Callable[[str], str] = family) -> str:
    """``convergence.md``: per config, the mean AP at each evaluation and where it converged."""
    lines = [f"Schedule length at which the mean AP over seeds stops improving: the first "
             f"evaluation that no later evaluation exceeds by {MIN_GAIN} AP or more "
             f"(needs >= {MIN_SEEDS} seeds). A point inside a longer run is evaluated before that "
             f"run's LR steps: confirm it with a run of that length.", "",
             "| method | role | seeds | AP at iteration | converged at |", "|---|---|---|---|---|"]
    seen = set()
    for row in rows:
        fam = family_of(row["name"])
        role = "baseline" if fam not in seen else "method"
        seen.add(fam)
        c = convergence_point(list(row["curves"].values()))
        pts = ", ".join(f"{i}: {a:.1f}" for i, a in zip(c["iterations"], c["mean_ap"])) or "-"
        if c["converged_at"] is None:
            verdict = f"not yet (the last evaluation still +{MIN_GAIN} AP or more)" \
                if len(c["iterations"]) >= 2 else "fewer than 2 evaluations"
        else:
            verdict = str(c["converged_at"])
        if c["n"] < MIN_SEEDS:
            verdict += f" (n = {c['n']} < {MIN_SEEDS} seeds)"
        lines.append(f"| {row['desc']} | {role} | {c['n']} | {pts} | {verdict} |")
    return write_markdown(lines, os.path.join(out, "convergence.md"))


def read_run(out: str) -> Dict[str, float]:
    with open(os.path.join(out, "eval_results.json")) as f:
        results = json.load(f)
    bbox, segm = results["bbox"], results.get("segm")
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    times = [r["time"] for r in rows if "time" in r]
    mem = [r["peak_mem_mb"] for r in rows if "peak_mem_mb" in r]
    res = {m: float(bbox[m]) for m in METRICS}
    res.update({m: float(bbox.get(m, float("nan"))) for m in GROUP_METRICS})
    res["mask_AP"] = float(segm["AP"]) if segm else float("nan")
    # detectron2's "time" is the median-filtered seconds per iteration; skip warm-up rows.
    res["s_per_iter"] = statistics.median(times[len(times) // 5:]) if times else float("nan")
    res["peak_mem_mb"] = max(mem) if mem else float("nan")
    res["curve"] = read_ap_curve(out)
    return res


def mean_std(values: List[float]) -> Tuple[float, float]:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return float("nan"), float("nan")
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def format_delta(d: dict) -> str:
    """``+1.0 [-0.2, +2.2]`` (mean and 95 % interval of a :func:`paired_delta`)."""
    if d["n"] == 0:
        return "-"
    if d["lo"] != d["lo"]:
        return f"{d['mean']:+.1f}"
    return f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def write_tables(out: str, rows: List[dict], seeds: Sequence[int], header: str,
                 family_of: Callable[[str], str] = family) -> str:
    """``results.md`` / ``results.csv``: one row per config; ``row["AP_by_seed"]`` (``{seed:
    AP}``) gives the paired ΔAP to the first row of the same family."""
    lines = [header, "",
             "| method | AP | AP50 | AP75 | APs | APm | APl | AP_r | AP_c | AP_f | mask AP "
             "| s/iter | peak MB | ΔAP [95 % CI] | reading |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    baselines: Dict[str, dict] = {}
    deltas = []
    for row in rows:
        base = baselines.setdefault(family_of(row["name"]), row)
        d = None if base is row else paired_delta(base["AP_by_seed"], row["AP_by_seed"])
        deltas.append(d)
        # "-": no value (e.g. APl without large objects in the split, mask AP of a box model)
        cells = ["-" if row[m][0] != row[m][0] else f"{row[m][0]:.1f} ± {row[m][1]:.1f}"
                 for m in METRICS + GROUP_METRICS + ("mask_AP",)]
        lines.append(f"| {row['desc']} | " + " | ".join(cells) +
                     f" | {row['s_per_iter'][0]:.2f} | {row['peak_mem_mb'][0]:.0f} | " +
                     ("baseline | - |" if d is None else f"{format_delta(d)} | {d['reading']} |"))
    md = write_markdown(lines, os.path.join(out, "results.md"))
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "config", "seeds"] + [f"{m}_{s}" for m in COLUMNS
                                                     for s in ("mean", "std")]
                   + ["dAP_mean", "dAP_lo95", "dAP_hi95", "paired_seeds", "reading"])
        for row, d in zip(rows, deltas):
            tail = (["", "", "", "", "baseline"] if d is None else
                    [f"{d[k]:.4f}" for k in ("mean", "lo", "hi")] + [d["n"], d["reading"]])
            w.writerow([row["name"], row["config"], " ".join(map(str, seeds))] +
                       [f"{v:.4f}" for m in COLUMNS for v in row[m]] + tail)
    return md


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), help="a predefined list of configs")
    parser.add_argument("--configs", nargs="+", help="explicit configs (the first is the baseline)")
    parser.add_argument("--only", nargs="+", help="names of the suite to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-iter", type=int, help="same schedule length for every run")
    parser.add_argument("--eval-points", type=int, default=10,
                        help="evaluations per run, evenly spaced (train.eval_period = "
                             "ceil(max_iter / N); the last at the end); 1: at the end only")
    parser.add_argument("--convergence", action="store_true",
                        help="also print and write convergence.md: per config, where the mean "
                             "AP over seeds stops improving (no later gain of 0.5 AP)")
    parser.add_argument("--output", help="default: output/compare/<suite>")
    parser.add_argument("--records", help="keep finished runs' small files here and reuse "
                        "the runs recorded here (a folder under version control)")
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
    entries = select_entries(entries, args.only)
    missing = [c for _, c, _ in entries if not os.path.exists(os.path.join(ROOT, c))]
    if missing:
        raise SystemExit(f"configs not found: {missing}")
    out = args.output or os.path.join(ROOT, "output", "compare", suite)
    os.makedirs(out, exist_ok=True)
    extra = [o for o in (args.opts or []) if o != "--"]
    if not any(o.startswith("train.eval_period=") for o in extra):
        lengths = {args.max_iter or config_max_iter(c) for _, c, _ in entries}
        if len(lengths) > 1:
            raise SystemExit(f"the configs have different schedules {sorted(lengths)}: "
                             "give --max-iter (or train.eval_period=...)")
        extra.append(f"train.eval_period={eval_period(lengths.pop(), args.eval_points)}")

    runs = [(name, cfg, desc, seed) for name, cfg, desc in entries for seed in args.seeds]
    results: Dict[Tuple[str, int], Dict[str, float]] = {}
    start = time.time()
    todo = []
    # per run: config, seed, its folder, its key and its record folder (None without --records)
    plan = [(cfg, seed, os.path.join(out, name, f"seed{seed}"),
             run_key(cfg, seed, args.max_iter, extra),
             os.path.join(args.records, name, f"seed{seed}") if args.records else None)
            for name, cfg, _, seed in runs]
    other = [record for _, _, _, key, record in plan
             if record and records_another_run(record, key)]
    if other:  # never overwrite a recorded run with one of another schedule or overrides
        raise SystemExit(
            f"--records {args.records} holds runs of another schedule or other overrides "
            f"({len(other)}: {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
            f"they would be overwritten: give another --records folder")
    for cfg, seed, run_dir, key, record in plan:
        if record and not is_done(run_dir, key) and is_done(record, key):
            set_aside(run_dir)
            copy_record(record, run_dir)  # recorded elsewhere: not trained again
        if not is_done(run_dir, key):
            todo.append((cfg, run_dir, seed, record))
        elif record and not is_done(record, key):
            copy_record(run_dir, record)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs)) if args.jobs > 1 else None

    failed: Dict[str, str] = {}

    def work(item):
        cfg, run_dir, seed, record = item
        set_aside(run_dir)  # an unfinished or different earlier run: keep it, start clean
        os.makedirs(run_dir)
        try:
            run_one(cfg, run_dir, seed, args.max_iter, extra,
                    os.path.join(run_dir, "stdout.log"), threads)
            with open(os.path.join(run_dir, RUN_KEY_FILE), "w") as f:
                json.dump(run_key(cfg, seed, args.max_iter, extra), f)
            if record:
                copy_record(run_dir, record)
        except RuntimeError as e:  # e.g. a diverged run: record it, go on with the others
            failed[run_dir] = last_error_line(os.path.join(run_dir, "stdout.log")) or str(e)

    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done; {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for _ in tqdm(pool.map(work, todo), total=len(todo), desc="comparison runs", unit="run"):
            pass
    for name, cfg, desc, seed in runs:
        run_dir = os.path.join(out, name, f"seed{seed}")
        results[(name, seed)] = (read_run(run_dir) if run_dir not in failed
                                 else dict({m: float("nan") for m in COLUMNS}, curve={}))

    rows = []
    for name, cfg, desc in entries:
        n_failed = sum(1 for s in args.seeds if os.path.join(out, name, f"seed{s}") in failed)
        row = {"name": name, "config": cfg, "desc": desc + (
            f" ({n_failed}/{len(args.seeds)} seeds failed)" if n_failed else "")}
        for m in COLUMNS:
            row[m] = mean_std([results[(name, s)][m] for s in args.seeds])
        row["AP_by_seed"] = {s: results[(name, s)]["AP"] for s in args.seeds}
        row["curves"] = {s: results[(name, s)]["curve"] for s in args.seeds}
        rows.append(row)
    header = (f"COCO-style box AP (percent) on the {suite} validation split, mean ± std over seeds "
              f"{', '.join(map(str, args.seeds))}" + (f", {args.max_iter} iterations each" if args.max_iter else "")
              + ". ΔAP: mean over seeds of the paired difference (method − baseline, same seed) to "
              "the first config of the same detector family, with its Student-t 95 % confidence "
              "interval; reading: 'better' / 'worse' when the interval excludes 0, 'no difference "
              f"shown' when it contains 0, none under {MIN_SEEDS} seeds.")
    # --configs: the first config is the baseline of all the others
    family_of = (lambda name: "custom") if suite == "custom" else family
    md = write_tables(out, rows, args.seeds, header, family_of=family_of)
    if failed:
        md += "\nFailed runs (excluded from the means):\n" + "".join(
            f"- {os.path.relpath(d, out)}: {msg}\n" for d, msg in sorted(failed.items()))
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(md)
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump({f"{n}/seed{s}": r for (n, s), r in results.items()}, f, indent=1)
    print(md)
    if args.convergence:
        print(write_convergence(out, rows, family_of=family_of))
    print(f"{len(runs)} runs in {(time.time() - start) / 60:.1f} min; tables in {out}")
    return md


if __name__ == "__main__":
    main()
