#!/usr/bin/env python
"""The evidence at a glance: the paired ΔAP [95 % CI] of every method against its family's
baseline in the recorded comparisons (``tools/compare.py --records``), one column per setting,
as a Markdown table and a forest plot. Nothing is trained: a fresh clone redraws both from
``docs/results/runs/``.

    python tools/evidence.py --out docs/results/evidence.md --figure docs/figures/evidence_delta_ap.png

A setting (``SETTINGS``) names, per detector family, the records folder of the schedule at
which that family's baseline converged; a setting with several folders per family is a
learning-rate sweep, read as :mod:`tools.recipe_sweep` reads it (each config at the learning
rate of its highest mean AP over the sweep's seeds, the same rule for methods and baselines).
A cell pairs the seeds that both runs recorded (:func:`tools.compare.paired_delta`: the mean of
the per-seed differences and its Student-t interval) and says when either mean AP curve had
not converged by the 0.5-AP rule (:func:`tools.compare.convergence_point`).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.compare import (MIN_SEEDS, SUITES, convergence_point, family, format_delta,  # noqa: E402
                           paired_delta, seed_folders, write_markdown)
from tools.recipe_sweep import ap_by_seed, best_arm, read_arm  # noqa: E402

RECORDS = os.path.join(ROOT, "docs", "results", "runs")
SWEEP = ("synthetic-conv600", "synthetic-conv600-lr0.005", "synthetic-conv600-lr0.02",
         "synthetic-conv600-lr0.04")


class Setting(NamedTuple):
    label: str  # column title
    suite: str  # tools/compare.py suite whose names and descriptions the records use
    records: Dict[str, Tuple[str, ...]]  # family -> records folder(s) under the records root
    seeds: Optional[Tuple[int, ...]] = None  # a sweep's seeds (one folder: every recorded seed)


SETTINGS = (
    Setting("trees, 600 iterations", "trees",
            {fam: ("trees-conv600",) for fam in ("fcos", "retinanet", "faster_rcnn")}),
    Setting("synthetic, 600 iterations (Faster R-CNN family 1200)", "synthetic",
            {"fcos": ("synthetic-conv600",), "retinanet": ("synthetic-conv600",),
             "faster_rcnn": ("synthetic-conv1200",)}),
    Setting("synthetic, best of the LR sweep (600 iterations)", "synthetic",
            {"fcos": SWEEP, "retinanet": SWEEP}, seeds=(0, 1, 2)),
)


class Cell(NamedTuple):
    delta: dict  # paired_delta of AP
    converged: bool  # both mean AP curves converged by the 0.5-AP rule
    lrs: Optional[Tuple[float, float]] = None  # best-of-sweep learning rates (baseline, method)


def baseline_of(suite: str, name: str) -> str:
    """The family's baseline: the suite's first entry of ``name``'s detector family."""
    return next(n for n, _, _ in SUITES[suite] if family(n) == family(name))


def recorded_arm(folder: str, names: Sequence[str]) -> Optional[dict]:
    """The runs of ``names`` in a records folder as one :func:`tools.recipe_sweep.read_arm`
    arm over every seed recorded there (its checks included: one learning rate, one schedule),
    or None when the folder holds none of them."""
    seeds = sorted({s for n in names for s in seed_folders(os.path.join(folder, n))})
    return read_arm(folder, names, seeds) if seeds else None


def _converged(runs: Sequence[dict]) -> bool:
    return convergence_point([r["curve"] for r in runs])["converged_at"] is not None


def setting_cell(setting: Setting, name: str, root: str) -> Optional[Cell]:
    """The cell of method ``name`` in ``setting`` (None where the setting has no records of
    the pair)."""
    base = baseline_of(setting.suite, name)
    folders = [os.path.join(root, f) for f in setting.records.get(family(name), ())]
    folders = [f for f in folders if os.path.isdir(f)]
    if not folders:
        return None
    arms = [a for a in (recorded_arm(f, [base, name]) for f in folders) if a is not None]
    if len(folders) == 1:
        if not arms or base not in arms[0]["runs"] or name not in arms[0]["runs"]:
            return None
        arm = arms[0]
        d = paired_delta(ap_by_seed(arm, base), ap_by_seed(arm, name))
        return Cell(d, _converged(arm["runs"][base].values())
                    and _converged(arm["runs"][name].values()))
    seeds = setting.seeds or (0, 1, 2)
    swept = [a for a in arms if set(ap_by_seed(a, name)) >= set(seeds)]
    if len(swept) < 2:  # the method was not swept (one learning rate or none): no cell
        return None
    best_b, best_m = best_arm(arms, base, seeds), best_arm(swept, name, seeds)
    if best_b is None:
        return None
    d = paired_delta({s: ap_by_seed(best_b, base)[s] for s in seeds},
                     {s: ap_by_seed(best_m, name)[s] for s in seeds})
    conv = _converged([best_b["runs"][base][s] for s in seeds]) and \
        _converged([best_m["runs"][name][s] for s in seeds])
    return Cell(d, conv, (best_b["lr"], best_m["lr"]))


def evidence(settings: Sequence[Setting], root: str) -> Tuple[List[str], Dict]:
    """The rows, the methods with some cell in suite order, and the cells
    ``{(setting label, method): Cell}``."""
    cells = {}
    for s in settings:
        for name, _, _ in SUITES[s.suite]:
            if family(name) in s.records and baseline_of(s.suite, name) != name:
                c = setting_cell(s, name, root)
                if c is not None:
                    cells[(s.label, name)] = c
    order = [n for n, _, _ in SUITES["synthetic"]]
    rows = sorted({n for _, n in cells}, key=order.index)
    return rows, cells


def _desc(name: str) -> str:
    return next(d for n, _, d in SUITES["synthetic"] if n == name)


def cell_text(c: Optional[Cell]) -> str:
    if c is None:
        return "-"
    text = f"{format_delta(c.delta)} {c.delta['reading']} (n = {c.delta['n']})"
    if c.lrs:
        text += f", LR {c.lrs[1]:g} vs {c.lrs[0]:g}"
    return text + ("" if c.converged else ", not converged")


def evidence_table(settings: Sequence[Setting], rows: Sequence[str], cells: Dict,
                   root: str) -> str:
    lines = [
        "Paired ΔAP (method − baseline, same seed; box AP, percent) with its Student-t 95 % "
        f"confidence interval, n = seeds both runs recorded; 'better' / 'worse' when the "
        f"interval excludes 0, 'no difference shown' when it contains 0, none under "
        f"{MIN_SEEDS} seeds. 'not converged': the method's or the baseline's mean AP curve "
        "still gained 0.5 AP or more at its last evaluation. Best of the LR sweep: each config "
        "at the learning rate of its highest mean AP (method's LR vs the baseline's). Records: "
        f"`{os.path.relpath(root, ROOT)}/`; `python tools/evidence.py`.", "",
        "| method | baseline | " + " | ".join(s.label for s in settings) + " |",
        "|---|---|" + "---|" * len(settings)]
    for name in rows:
        base = baseline_of("synthetic", name)
        lines.append(f"| {_desc(name)} | {_desc(base)} | "
                     + " | ".join(cell_text(cells.get((s.label, name))) for s in settings) + " |")
    return "\n".join(lines) + "\n"


COLOURS = {"better": "#2a8c3c", "worse": "#c0392b"}
NEUTRAL = "#3d5a80"


def plot_evidence(settings: Sequence[Setting], rows: Sequence[str], cells: Dict, root: str,
                  path: str) -> str:
    """Forest plot: one panel per setting, one row per method (shared), the mean paired ΔAP
    with its 95 % interval; green / red where the interval excludes 0, open markers where a
    curve had not converged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tools.analysis.runs import finish_figure

    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings) + 2.0,
                                                        0.42 * len(rows) + 1.6),
                             sharey=True, squeeze=False, layout="constrained")
    ys = {name: len(rows) - 1 - k for k, name in enumerate(rows)}
    for ax, s in zip(axes[0], settings):
        for name in rows:
            c = cells.get((s.label, name))
            if c is None or c.delta["n"] == 0:
                continue
            d, y = c.delta, ys[name]
            colour = COLOURS.get(d["reading"], NEUTRAL)
            err = None if d["lo"] != d["lo"] else [[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]]
            ax.errorbar([d["mean"]], [y], xerr=err, fmt="o", ms=6, capsize=3, lw=1.6,
                        color=colour, mfc=colour if c.converged else "white")
            ax.annotate(f"n={d['n']}", (d["mean"], y), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7, color="#555555")
        ax.axvline(0, color="black", lw=0.8)
        for k in range(1, len(rows)):  # a line between detector families
            if family(rows[k]) != family(rows[k - 1]):
                ax.axhline(ys[rows[k]] + 0.5, color="#bbbbbb", lw=0.8)
        ax.set_title(s.label, fontsize=10)
        ax.set_xlabel("ΔAP vs the family's baseline (AP points)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks([ys[n] for n in rows],
                          [f"{_desc(n)}\nvs {_desc(baseline_of('synthetic', n))}" for n in rows],
                          fontsize=8)
    axes[0][0].set_ylim(-0.7, len(rows) - 0.3)
    caption = ("Mean of the paired per-seed differences in validation box AP with its Student-t "
               "95 % interval; green: better, red: worse (the interval excludes 0), blue: no "
               "difference shown; open marker: a mean AP curve had not converged; n = seeds. "
               f"Records: {os.path.relpath(root, ROOT)}/. `python tools/evidence.py`.")
    return finish_figure(fig, caption, path)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records-root", default=RECORDS,
                        help="folder holding the settings' records folders (default: "
                             "docs/results/runs)")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--figure", help="also draw the forest plot (PNG)")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.records_root)
    rows, cells = evidence(SETTINGS, root)
    if not rows:
        wanted = sorted({f for s in SETTINGS for fs in s.records.values() for f in fs})
        raise SystemExit(f"--records-root {args.records_root}: no recorded pair in any of "
                         f"{wanted}")
    md = evidence_table(SETTINGS, rows, cells, root)
    if args.out:
        write_markdown(md.rstrip("\n").split("\n"), args.out)
    if args.figure:
        print(plot_evidence(SETTINGS, rows, cells, root, args.figure))
    print(md)
    return md


if __name__ == "__main__":
    main()
