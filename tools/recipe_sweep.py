#!/usr/bin/env python
"""Recipe sweep tables: one comparison recorded at several learning rates (``make compare-lr``
and ``make compare-converged``), read back from its records, as three tables:

1. per learning rate: each config's AP (mean ± std over seeds) and its paired ΔAP to the
   family's baseline trained at the *same* learning rate;
2. best of sweep: each config at the learning rate that gave it the highest mean validation
   AP, the same rule for methods and baselines, and the paired ΔAP of a method at its best
   learning rate to its baseline at the baseline's best;
3. where each run's mean AP curve converged (:func:`tools.compare.convergence_point`), per
   learning rate, so that a learning rate whose runs had not converged is seen as such.

    python tools/recipe_sweep.py --suite synthetic --only fcos dw_fcos \\
        --records docs/results/runs/synthetic-conv600 docs/results/runs/synthetic-conv600-lr0.005

Each records folder is one arm of the sweep; its learning rate is read from its runs (the
``optimizer.lr=`` override in each run key, else the config's own ``optimizer.lr``), never
given by hand, and every run of an arm must agree on it and on the schedule length. Nothing
is trained. The best-of-sweep learning rate is chosen on the validation split the AP is
reported on, for every config alike, so that table is optimistic for all of them by the same
rule; the per-learning-rate table is the one without selection.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
from typing import Dict, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.compare import (MIN_SEEDS, RUN_KEY_FILE, SUITES, convergence_point, family,  # noqa: E402
                           format_delta, mean_std, paired_delta, read_run, select_entries,
                           write_markdown)

LR_OPTION = "optimizer.lr="


@functools.lru_cache(maxsize=None)
def config_lr(config: str) -> float:
    """``optimizer.lr`` of a config file (its learning rate without an override); each config
    is loaded once however many of its runs an arm holds."""
    from balanced_det.config import load_config

    return float(load_config(os.path.join(ROOT, config)).optimizer.lr)


def run_lr(key: dict) -> float:
    """Learning rate of a recorded run: the last ``optimizer.lr=`` of its overrides, else its
    config's."""
    given = [o[len(LR_OPTION):] for o in key.get("opts", []) if o.startswith(LR_OPTION)]
    return float(given[-1]) if given else config_lr(key["config"])


def read_arm(records: str, names: Sequence[str], seeds: Sequence[int]) -> dict:
    """One arm of the sweep: ``{"lr", "max_iter", "records", "runs": {name: {seed: run}}}``
    with the runs of ``names`` × ``seeds`` that ``records`` holds (``read_run`` results plus
    ``key``). Raises ``SystemExit`` when its runs disagree on the learning rate or the
    schedule, or when it holds none of them."""
    runs: Dict[str, Dict[int, dict]] = {}
    lrs, lengths = {}, {}
    for name in names:
        for seed in seeds:
            folder = os.path.join(records, name, f"seed{seed}")
            try:
                with open(os.path.join(folder, RUN_KEY_FILE)) as f:
                    key = json.load(f)
            except (OSError, ValueError):
                continue  # not recorded (yet): the cell shows what is missing
            lrs[folder] = run_lr(key)
            lengths[folder] = key.get("max_iter")
            runs.setdefault(name, {})[seed] = dict(read_run(folder), key=key)
    if not runs:
        raise SystemExit(f"--records {records}: no recorded run of {list(names)} with seeds "
                         f"{list(seeds)}")
    for what, values in (("learning rates", lrs), ("schedule lengths", lengths)):
        if len(set(values.values())) > 1:
            shown = ", ".join(f"{os.path.relpath(k, records)}: {v}" for k, v in sorted(values.items()))
            raise SystemExit(f"--records {records}: its runs have different {what} ({shown}); "
                             "one folder must be one arm of the sweep")
    return {"lr": next(iter(lrs.values())), "max_iter": next(iter(lengths.values())),
            "records": records, "runs": runs}


def ap_by_seed(arm: dict, name: str) -> Dict[int, float]:
    return {s: r["AP"] for s, r in arm["runs"].get(name, {}).items()}


def best_arm(arms: Sequence[dict], name: str, seeds: Sequence[int]) -> Optional[dict]:
    """The arm in which ``name`` has its highest mean AP, among the arms that hold all of its
    ``seeds`` (None when no arm does)."""
    complete = [a for a in arms if set(ap_by_seed(a, name)) >= set(seeds)]
    return max(complete, key=lambda a: statistics.mean(ap_by_seed(a, name)[s] for s in seeds),
               default=None)


def _seed_count_note(aps: Dict[int, float], seeds: Sequence[int]) -> str:
    """`` (n = k)`` when ``aps`` lacks some of ``seeds``, else empty."""
    return f" (n = {len(aps)})" if set(seeds) - set(aps) else ""


def _ap_cell(aps: Dict[int, float], seeds: Sequence[int]) -> str:
    if not aps:
        return "-"
    m, sd = mean_std(list(aps.values()))
    return f"{m:.1f} ± {sd:.1f}" + _seed_count_note(aps, seeds)


def _per_lr_entry(lr: str, aps: Dict[int, float], seeds: Sequence[int]) -> str:
    """``lr: mean AP`` of one arm, marked when it lacks some of ``seeds``."""
    return f"{lr}: {statistics.mean(aps.values()):.1f}" + _seed_count_note(aps, seeds)


def _delta_cell(base: Dict[int, float], method: Dict[int, float]) -> str:
    d = paired_delta(base, method)
    return "-" if d["n"] == 0 else f"{format_delta(d)} {d['reading']}"


def sweep_tables(arms: Sequence[dict], entries: Sequence[tuple], seeds: Sequence[int],
                 family_of=family) -> str:
    """The three tables of the module docstring (Markdown), arms in increasing learning rate."""
    arms = sorted(arms, key=lambda a: a["lr"])
    lr = [f"{a['lr']:g}" for a in arms]
    baseline_of: Dict[str, str] = {}
    for name, _, _ in entries:
        baseline_of.setdefault(family_of(name), name)
    desc = {name: d for name, _, d in entries}

    lines = [f"**Per learning rate** (no selection): AP, mean ± std over seeds "
             f"{', '.join(map(str, seeds))}, and the paired ΔAP [95 % CI] to the baseline trained "
             f"at the same learning rate; 'better' / 'worse' when the interval excludes 0, none "
             f"under {MIN_SEEDS} seeds.", "",
             "| method | " + " | ".join(f"AP, LR {v} | ΔAP, LR {v}" for v in lr) + " |",
             "|---|" + "---|---|" * len(arms)]
    for name, _, _ in entries:
        base = baseline_of[family_of(name)]
        cells = []
        for a in arms:
            cells.append(_ap_cell(ap_by_seed(a, name), seeds))
            cells.append("baseline" if name == base else _delta_cell(ap_by_seed(a, base),
                                                                    ap_by_seed(a, name)))
        lines.append(f"| {desc[name]} | " + " | ".join(cells) + " |")

    lines += ["", f"**Best of sweep**: each config at the learning rate of its highest mean AP "
              f"(chosen on the validation split, the same rule for every config; among the "
              f"learning rates with all {len(seeds)} seeds), ΔAP paired by seed to the "
              f"baseline at its own best learning rate.", "",
              "| method | best LR | AP | AP per LR | ΔAP [95 % CI] | reading |",
              "|---|---|---|---|---|---|"]
    best = {name: best_arm(arms, name, seeds) for name, _, _ in entries}
    for name, _, _ in entries:
        a, base = best[name], baseline_of[family_of(name)]
        per_lr = ", ".join(_per_lr_entry(v, ap_by_seed(x, name), seeds)
                           for v, x in zip(lr, arms) if ap_by_seed(x, name))
        if a is None:
            lines.append(f"| {desc[name]} | - | - | {per_lr or '-'} | - | no learning rate with "
                         f"all seeds |")
            continue
        ap = _ap_cell({s: ap_by_seed(a, name)[s] for s in seeds}, seeds)
        if name == base:
            lines.append(f"| {desc[name]} | {a['lr']:g} | {ap} | {per_lr} | baseline | - |")
        elif best[base] is None:
            lines.append(f"| {desc[name]} | {a['lr']:g} | {ap} | {per_lr} | - | baseline "
                         f"incomplete |")
        else:
            d = paired_delta(ap_by_seed(best[base], base), ap_by_seed(a, name))
            lines.append(f"| {desc[name]} | {a['lr']:g} | {ap} | {per_lr} | {format_delta(d)} "
                         f"| {d['reading']} |")

    lines += ["", "**Where the mean AP curve converged** (the first evaluation that no later "
              "one exceeds by 0.5 AP; 'not yet': the last evaluation still added 0.5 AP or "
              "more):", "", "| method | " + " | ".join(f"LR {v}" for v in lr) + " |",
              "|---|" + "---|" * len(arms)]
    for name, _, _ in entries:
        cells = []
        for a in arms:
            curves = [r["curve"] for r in a["runs"].get(name, {}).values()]
            if len(curves) < MIN_SEEDS:
                cells.append("-")
                continue
            c = convergence_point(curves)
            cells.append("not yet" if c["converged_at"] is None else str(c["converged_at"]))
        lines.append(f"| {desc[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shown(path: str) -> str:
    """``path`` relative to the repository when it lies inside it."""
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    return path if rel.startswith("..") else rel


def plot_sweep(arms: Sequence[dict], entries: Sequence[tuple], path: str, title: str,
               family_of=family) -> str:
    """One panel per detector family: each config's final AP against the learning rate (log
    axis), mean over its seeds with the min-max range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tools.analysis.curves import FAMILY_ORDER, FAMILY_TITLES
    from tools.analysis.runs import finish_figure

    arms = sorted(arms, key=lambda a: a["lr"])
    fams = list(dict.fromkeys(family_of(n) for n, _, _ in entries))
    fams.sort(key=lambda f: FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER))
    fig, axes = plt.subplots(1, len(fams), figsize=(5.0 * len(fams), 4.0), squeeze=False,
                             layout="constrained")
    for ax, fam in zip(axes[0], fams):
        for name, _, desc in (e for e in entries if family_of(e[0]) == fam):
            pts = [(a["lr"], list(ap_by_seed(a, name).values())) for a in arms if ap_by_seed(a, name)]
            if not pts:
                continue
            lr = [p[0] for p in pts]
            mean = [statistics.mean(v) for _, v in pts]
            err = [[m - min(v) for m, (_, v) in zip(mean, pts)],
                   [max(v) - m for m, (_, v) in zip(mean, pts)]]
            counts = sorted({len(v) for _, v in pts})
            n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            ax.errorbar(lr, mean, yerr=err, marker="o", ms=4, capsize=3, lw=1.6,
                        label=f"{desc} (n={n})")
        ax.set_xscale("log")
        ax.set_xticks([a["lr"] for a in arms], [f"{a['lr']:g}" for a in arms])
        ax.minorticks_off()
        ax.set_xlabel("SGD learning rate (4 images per batch)")
        ax.set_ylabel("final validation box AP (%)")
        ax.set_title(FAMILY_TITLES.get(fam, fam))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(title, fontsize=12)
    caption = ("Final validation box AP of each config at each learning rate of the sweep (same "
               "warm-up, steps and clipping): mean over seeds, bars = min to max; n = seeds "
               "recorded. Records: " + ", ".join(_shown(a["records"]) for a in arms) + ".")
    return finish_figure(fig, caption, path)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--only", nargs="+", help="names of the suite (default: all it has)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--records", nargs="+", required=True,
                        help="one records folder per learning rate (tools/compare.py --records)")
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    parser.add_argument("--figure", help="also draw AP against the learning rate (PNG)")
    args = parser.parse_args(argv)

    entries = select_entries(SUITES[args.suite], args.only)
    names = [e[0] for e in entries]
    arms = [read_arm(r, names, args.seeds) for r in args.records]
    lrs = [a["lr"] for a in arms]
    if len(set(lrs)) < len(lrs):
        raise SystemExit(f"--records: two folders have the same learning rate ({lrs})")
    if len({a["max_iter"] for a in arms}) > 1:
        shown = ", ".join(f"{a['records']}: {a['max_iter']}" for a in arms)
        raise SystemExit(f"--records: the arms have different schedules ({shown})")
    md = sweep_tables(arms, entries, args.seeds)
    if args.out:
        write_markdown(md.rstrip("\n").split("\n"), args.out)
    if args.figure:
        print(plot_sweep(arms, entries, args.figure,
                         f"Recipe sweep ({args.suite}, {arms[0]['max_iter']} iterations)"))
    print(md)
    return md


if __name__ == "__main__":
    main()
