#!/usr/bin/env python
"""The main job (``make demo``): train detectors on the tree-crown tiles on this machine's
CPU, evaluate COCO-style AP on trees_val, print one table, and keep everything in
``output/demo/<timestamp>/`` (checkpoints, metrics, logs, prediction pictures).

    python tools/demo.py                      # all methods in DEMO_RUNS
    python tools/demo.py --only fcos          # one of them
    python tools/demo.py --max-iter 50        # a shorter run (AP will be lower)
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects"))

# (short name, config, description). The first is the baseline.
DEMO_RUNS = [
    ("fcos", "configs/Trees/fcos_effnet_lite0_FPN.py", "FCOS (focal loss), baseline"),
]
AP50_REQUIRED = 30.0  # detectron2 reports AP in percent


def run_training(name, config, out_dir, extra):
    log_path = os.path.join(out_dir, f"{name}.stdout.log")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
           os.path.join(ROOT, config), f"train.output_dir={os.path.join(out_dir, name)}", *extra]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=ROOT)
        for line in proc.stdout:
            log.write(line)
            # Show progress lines (with ETA) and the evaluation table; the full log is saved.
            if " eta: " in line or "|" in line or "Error" in line or "error" in line:
                print(line, end="", flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {log_path}")
    with open(os.path.join(out_dir, name, "eval_results.json")) as f:
        results = json.load(f)
    return results["bbox"], time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only these (repeatable)")
    parser.add_argument("--max-iter", type=int, help="override train.max_iter for every run")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    args = parser.parse_args()

    runs = [r for r in DEMO_RUNS if not args.only or r[0] in args.only]
    if not runs:
        raise SystemExit(f"--only {args.only}: choose from {[r[0] for r in DEMO_RUNS]}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.join(args.output, stamp)
    os.makedirs(out_dir, exist_ok=False)  # never write over an earlier demo
    latest = os.path.join(args.output, "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(stamp, latest)
    extra = [f"train.max_iter={args.max_iter}"] if args.max_iter else []

    import balanced_det  # noqa: F401
    from balanced_det.config import load_config
    from balanced_det.engine import Checkpointer
    from balanced_det.utils.visualize import predict_and_draw
    from detectron2.config import instantiate

    print(f"balanced_det demo -> {out_dir}\n{balanced_det.compat.describe()}", flush=True)
    table = []
    for name, config, desc in runs:
        bbox, seconds = run_training(name, config, out_dir, extra)
        cfg = load_config(os.path.join(ROOT, config), extra)
        cfg.train.device = "cpu"
        model = instantiate(cfg.model)
        Checkpointer(model).load(os.path.join(out_dir, name, "model_final.pth"))
        picture = predict_and_draw(cfg, model, "trees_val",
                                   os.path.join(out_dir, f"{name}_trees_val_predictions.png"))
        table.append((name, desc, bbox, seconds, picture))

    lines = [
        "| method | AP | AP50 | AP75 | APs | APm | train+eval time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, desc, b, sec, _ in table:
        lines.append(f"| {desc} | {b['AP']:.1f} | {b['AP50']:.1f} | {b['AP75']:.1f} | "
                     f"{b['APs']:.1f} | {b['APm']:.1f} | {sec / 60:.1f} min |")
    summary = "\n".join(lines)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(f"# trees_val (COCO-style AP, percent)\n\n{summary}\n")
    print("\ntrees_val, COCO-style box AP (percent):\n" + summary)
    for name, _, _, _, pic in table:
        print(f"{name}: predictions vs ground truth -> {pic}")
    base = table[0][2]["AP50"]
    verdict = "OK" if base >= AP50_REQUIRED else "BELOW the required level"
    print(f"\nBaseline AP50 on trees_val = {base:.1f} (a trivial detector scores ~0; required "
          f">= {AP50_REQUIRED:.0f}): {verdict}\nOutputs: {out_dir}")
    if base < AP50_REQUIRED and not args.max_iter:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
