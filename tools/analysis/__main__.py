"""The command line of :mod:`tools.analysis`: one sub-command per figure, and ``all``."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Sequence

from tqdm import tqdm

from . import __doc__ as PACKAGE_DOC
from . import annotations, curves, diagnose, dw, gradients, samplers, sampling_free
from ..compare import SUITES
from .runs import ROOT, MissingRunError, default_compare_dir, relpath

# name -> (module with add_arguments(parser) and run(args), help, reads one model run)
FIGURES = {
    "samplers": (samplers, "IoU vs classification loss of the ROIs per sampler", True),
    "dw": (dw, "DW weight maps of one image", True),
    "sampling_free": (sampling_free, "score distribution and class-adaptive thresholds", True),
    "curves": (curves, "training curves of the comparison runs", False),
    "annotations": (annotations, "the GT boxes of the busiest validation image", False),
    "diagnose": (diagnose, "detections, positives per GT and training ends of a method vs "
                 "its baseline", False),
    "gradients": (gradients, "classification gradient by GHM's gradient norm, positives and "
                  "negatives apart (RetinaNet family)", False),
}


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=sorted(SUITES), default="trees")
    parser.add_argument("--compare-dir", help="runs of tools/compare.py (default: "
                        "output/compare/<suite>)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures"),
                        help="folder of the PNG files (default: docs/figures)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run to load (single-"
                        "model figures; default 0)")
    parser.add_argument("--device", default="cpu")


def figure_parser(name: str) -> argparse.ArgumentParser:
    """The options of figure ``name`` (common ones, the model run's, the figure's own)."""
    module, _, reads_model = FIGURES[name]
    parser = argparse.ArgumentParser(add_help=False)
    common_arguments(parser)
    if reads_model:
        parser.add_argument("--run", help="run name of the suite (default: see the figure)")
        parser.add_argument("--checkpoint", help="a checkpoint instead of the run's "
                            "model_final.pth")
        parser.add_argument("--config", help="the config of --checkpoint (default: the run's "
                            "config in tools/compare.py)")
    module.add_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/analysis.py",
        description=PACKAGE_DOC.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(PACKAGE_DOC.split("\n\n")[1:-1]))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, _) in FIGURES.items():
        sub.add_parser(name, parents=[figure_parser(name)], help=help_text)
    p = sub.add_parser("all", help="every figure of a suite")
    common_arguments(p)
    p.add_argument("--iteration", type=int, default=0, help="samplers: which training batch")
    p.add_argument("--max-images", type=int, help="sampling_free: first N validation images")
    return parser


def run_all(args: argparse.Namespace) -> List[str]:
    """Every figure with its defaults and the options of ``all``; a figure whose runs are
    missing is skipped with the reason."""
    written, skipped = [], []
    for name, (module, _, _) in tqdm(FIGURES.items(), desc="figures", unit="figure"):
        fig_args = figure_parser(name).parse_args([])
        for key in vars(fig_args):
            if hasattr(args, key):
                setattr(fig_args, key, getattr(args, key))
        try:
            written += module.run(fig_args)
        except MissingRunError as e:
            skipped.append(name)
            tqdm.write(f"skipped {name}: {e}")
    if skipped:
        print(f"skipped: {', '.join(skipped)} (missing runs, see above)")
    if not written:
        raise SystemExit("no figure written: every figure's runs are missing (see above)")
    return written


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Parse ``argv``, draw the figure(s), print and return the paths written."""
    args = build_parser().parse_args(argv)
    args.compare_dir = args.compare_dir or default_compare_dir(args.suite)
    try:
        written = run_all(args) if args.command == "all" else FIGURES[args.command][0].run(args)
    except MissingRunError as e:
        raise SystemExit(f"error: {e}")
    for p in written:
        print(relpath(p))
    return written


if __name__ == "__main__":
    main()
