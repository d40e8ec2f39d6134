"""``curves``: total loss (and AP) vs iteration of every finished comparison run, one panel per
detector family."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from ..compare import SUITES, family, read_ap_curve, seed_folders
from .runs import MissingRunError, RunRef, compare_command, finish_figure, relpath

__all__ = ["read_metrics", "read_curves", "seed_band", "plot_curves"]

FAMILY_ORDER = ("fcos", "retinanet", "faster_rcnn", "mask_rcnn")
FAMILY_TITLES = {"fcos": "FCOS family", "retinanet": "RetinaNet family",
                 "faster_rcnn": "Faster R-CNN family", "mask_rcnn": "Mask R-CNN family"}


def read_metrics(run_dir: str) -> Dict[str, Dict[int, float]]:
    """``{"loss": {iteration: total_loss}, "ap": {iteration: box AP}}`` of a run: the loss
    from metrics.json (detectron2's JSONWriter: one JSON object per line), AP of every
    evaluation from :func:`tools.compare.read_ap_curve` (iteration = iterations done)."""
    loss = {}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            it = row.get("iteration")
            if it is None:
                continue
            if "total_loss" in row and math.isfinite(row["total_loss"]):
                loss[int(it)] = float(row["total_loss"])
    ap = {i: v for i, v in read_ap_curve(run_dir).items() if v == v}
    return {"loss": loss, "ap": ap}


def read_curves(suite: str, compare_dir: str) -> Tuple[Dict[str, dict], List[str], List[str]]:
    """Per run name of the suite with at least one finished seed (:meth:`RunRef.finished`):
    ``{"desc", "family", "seeds", "loss": {seed: {it: v}}, "ap": {seed: {it: v}}, "final_ap":
    [per seed]}``; the names without a finished run; and the unfinished run folders (training,
    crashed, another config), not drawn."""
    curves, missing, unfinished = {}, [], []
    for name, _, desc in tqdm(SUITES[suite], desc="runs", unit="run", leave=False):
        runs = []
        for seed, path in seed_folders(os.path.join(compare_dir, name)).items():
            ref = RunRef(suite, name, seed, compare_dir)
            if ref.finished():
                runs.append(ref)
            else:
                unfinished.append(os.path.join(name, os.path.basename(path)))
        if not runs:
            missing.append(name)
            continue
        runs.sort(key=lambda r: r.seed)
        entry = {"desc": desc, "family": family(name), "seeds": [r.seed for r in runs],
                 "loss": {}, "ap": {}, "final_ap": []}
        for r in runs:
            m = read_metrics(r.run_dir)
            entry["loss"][r.seed], entry["ap"][r.seed] = m["loss"], m["ap"]
            with open(os.path.join(r.run_dir, "eval_results.json")) as f:
                entry["final_ap"].append(float(json.load(f)["bbox"]["AP"]))
        curves[name] = entry
    return curves, missing, unfinished


def seed_band(per_seed: Dict[int, Dict[int, float]]):
    """Iterations logged by every seed, and mean / min / max over seeds there."""
    its = sorted(set.intersection(*[set(v) for v in per_seed.values()])) if per_seed else []
    if not its:
        return np.array([]), np.array([]), np.array([]), np.array([])
    vals = np.array([[per_seed[s][i] for i in its] for s in per_seed], dtype=float)
    return np.array(its), vals.mean(0), vals.min(0), vals.max(0)


def plot_curves(curves: Dict[str, dict], path: str, title: str, caption: str) -> str:
    """One column per detector family: the loss curves (mean over seeds, min-max band), and
    below them the AP curves when runs evaluated more than once."""
    fams = [f for f in FAMILY_ORDER if any(c["family"] == f for c in curves.values())]
    fams += sorted({c["family"] for c in curves.values()} - set(fams))
    with_ap = any(len(v) >= 2 for c in curves.values() for v in c["ap"].values())
    rows = 2 if with_ap else 1
    fig, axes = plt.subplots(rows, len(fams), figsize=(5.4 * len(fams), 4.2 * rows),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("tab10")
    for col, fam in enumerate(fams):
        ax = axes[0][col]
        members = [(n, c) for n, c in curves.items() if c["family"] == fam]
        lo, hi = math.inf, 0.0
        for k, (name, c) in enumerate(members):
            its, mean, mn, mx = seed_band(c["loss"])
            if not its.size:
                continue
            color = cmap(k % 10)
            fa = c["final_ap"]
            ap_txt = (f", AP {np.mean(fa):.1f}" + (f" ± {np.std(fa, ddof=1):.1f}" if len(fa) > 1
                                                   else "") if fa else "")
            label = f"{c['desc']} (n={len(c['seeds'])}{ap_txt})"
            ax.plot(its, mean, color=color, lw=1.6, label=label)
            if len(c["seeds"]) > 1:
                ax.fill_between(its, mn, mx, color=color, alpha=0.2, lw=0)
            lo, hi = min(lo, float(mn.min())), max(hi, float(mx.max()))
            if with_ap:
                a_its, a_mean, a_mn, a_mx = seed_band(c["ap"])
                if a_its.size:
                    bx = axes[1][col]
                    bx.plot(a_its, a_mean, "o-", color=color, lw=1.6, ms=4, label=c["desc"])
                    if len(c["seeds"]) > 1:
                        bx.fill_between(a_its, a_mn, a_mx, color=color, alpha=0.2, lw=0)
        if hi > 0 and lo > 0 and hi / lo > 8:
            ax.set_yscale("log")
        ax.set_title(FAMILY_TITLES.get(fam, fam))
        ax.set_xlabel("iteration")
        ax.set_ylabel("total training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper right")
        if with_ap:
            bx = axes[1][col]
            bx.set_xlabel("iteration")
            bx.set_ylabel("validation box AP (%)")
            bx.set_title(f"{FAMILY_TITLES.get(fam, fam)}: AP at the evaluation points")
            bx.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    return finish_figure(fig, caption, path)


def add_arguments(parser) -> None:
    parser.add_argument("--tag", default="", help="file name <suite>_curves_<tag>.png (e.g. "
                        "the comparison's name; default <suite>_curves.png)")


def run(args) -> List[str]:
    """Draw ``<suite>_curves[_<tag>].png`` from every finished run of the suite."""
    curves, missing, unfinished = read_curves(args.suite, args.compare_dir)
    if unfinished:
        print(f"curves: unfinished runs (training, failed or of another config), not drawn: "
              f"{', '.join(unfinished)}")
    if not curves:
        names = [e[0] for e in SUITES[args.suite]]
        raise MissingRunError(
            f"no finished comparison runs of suite {args.suite!r} in "
            f"{relpath(args.compare_dir)}. Train them with: "
            f"{compare_command(args.suite, [], [], args.compare_dir)} (runs: {', '.join(names)})")
    if missing:
        print(f"curves: no runs of {', '.join(missing)} in {relpath(args.compare_dir)} "
              f"(not drawn)")
    seeds = sorted({s for c in curves.values() for s in c["seeds"]})
    tag = getattr(args, "tag", "")
    path = os.path.join(args.out, f"{args.suite}_curves{'_' + tag if tag else ''}.png")
    caption = (
        f"Total training loss (detectron2's metrics.json, median over its 20-iteration window) "
        f"of the comparison runs in {relpath(args.compare_dir)}: mean over seeds "
        f"{', '.join(map(str, seeds))} (n per method in the legend), band = min to max over "
        f"seeds; legend: final validation AP (mean ± std). Losses of different methods are "
        f"different functions (focal / BCE / GHM / DW / ISR-weighted), so compare their shapes "
        f"and stability, not their levels; compare methods by AP. Lower row (runs evaluated "
        f"more than once, tools/compare.py --eval-points): validation box AP at every "
        f"evaluation (eval_history.json), mean over seeds, band = min to max.")
    return [plot_curves(curves, path, f"Training curves of the comparison runs ({args.suite})",
                        caption)]
