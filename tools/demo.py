#!/usr/bin/env python
"""The main job (``make demo``): train a baseline detector and a balanced method on the
synthetic shapes on this machine's CPU at the schedule where the baseline has stopped improving,
evaluate COCO-style AP on synthetic_val, print one table and what it shows, and keep everything
in ``output/demo/<timestamp>/`` (checkpoints, metrics, logs, prediction pictures).

    python tools/demo.py                      # the pair in DEMO_RUNS
    python tools/demo.py --only fcos          # one of them
    python tools/demo.py --max-iter 50        # a shorter run (AP will be lower; no reading)

The runs train side by side, one CPU thread each (on 2 cores, two single-thread trainings
finish sooner than two consecutive two-thread ones), with the training settings of seed 0 of
the recorded 3-seed comparison of the same pair (:data:`RECORDS`, ``tools/compare.py
--records``; the demo evaluates once, at the end, where the comparison evaluated every 100
iterations): the printed reading is that comparison's paired ΔAP with its 95 % interval, and
the demo's own seed-0 numbers are shown next to the recorded ones. One seed alone cannot tell
a method from seed noise.
"""
import argparse
import contextlib
import datetime
import io
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects"))
sys.path.insert(0, ROOT)  # tools.compare

# (short name, config, description). The first is the baseline.
DEMO_RUNS = [
    ("fcos", "configs/Synthetic/fcos_effnet_lite0_FPN.py", "FCOS (focal loss), baseline"),
    ("dw_fcos", "configs/Synthetic/dw_fcos_effnet_lite0_FPN.py", "DW-FCOS (dual weighting)"),
]
SUITE, TRAIN_SET, VAL_SET = "synthetic", "synthetic_train", "synthetic_val"
AP50_REQUIRED = 50.0  # detectron2 reports AP in percent
DEMO_ITER = 600  # FCOS's converged synthetic schedule (docs/results/synthetic_conv600.md)
RECORDS = os.path.join("docs", "results", "runs", "synthetic-conv600")  # its 3-seed runs
RECORD_EVAL_POINTS = 6  # the recorded runs were evaluated every 100 iterations


def start_training(name, config, out_dir, extra, threads):
    log_path = os.path.join(out_dir, f"{name}.stdout.log")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
           os.path.join(ROOT, config), f"train.output_dir={os.path.join(out_dir, name)}", *extra]
    print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)
    return proc, open(log_path, "w"), log_path


def follow(runs):
    """Stream the runs' output to their logs; show progress lines (with ETA), tables and
    errors, prefixed by the run's name. Returns {name: exit code}."""
    import selectors

    sel = selectors.DefaultSelector()
    for name, (proc, log, _) in runs.items():
        sel.register(proc.stdout, selectors.EVENT_READ, (name, proc, log))
    open_streams = len(runs)
    while open_streams:
        for key, _ in sel.select():
            name, proc, log = key.data
            line = proc.stdout.readline()
            if not line:
                sel.unregister(proc.stdout)
                open_streams -= 1
                continue
            log.write(line)
            if " eta: " in line or line.startswith("|") or "Error" in line:
                print(f"[{name}] {line}", end="", flush=True)
    codes = {}
    for name, (proc, log, _) in runs.items():
        codes[name] = proc.wait()
        log.close()
    return codes


def trivial_detector_ap50(out_dir) -> float:
    """AP50 on :data:`VAL_SET` of a detector that ignores the image: for each class, a grid of
    boxes of that class's median training box size, all with the same score (the reference the
    baseline must beat)."""
    import numpy as np
    import torch

    from balanced_det.evaluation import COCOEvaluator
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, BoxMode, Instances

    sizes = {}
    for d in DatasetCatalog.get(TRAIN_SET):
        for a in d["annotations"]:
            if not a.get("iscrowd", 0):
                box = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS)
                sizes.setdefault(a["category_id"], []).append(box[2:])
    median_size = {c: np.median(np.array(wh), axis=0) for c, wh in sorted(sizes.items())}
    ev = COCOEvaluator(VAL_SET, distributed=False, output_dir=os.path.join(out_dir, "trivial"))
    ev.reset()
    for d in DatasetCatalog.get(VAL_SET):
        boxes, classes = [], []
        for c, (w, h) in median_size.items():
            xs, ys = np.arange(0, d["width"] - w / 2, w), np.arange(0, d["height"] - h / 2, h)
            boxes += [[x, y, x + w, y + h] for y in ys for x in xs]
            classes += [c] * (len(xs) * len(ys))
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor(classes, dtype=torch.long)
        ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' printed summary
        return float(ev.evaluate()["bbox"]["AP50"])


def reading(runs, table) -> str:
    """What the demo's two numbers show, with the recorded 3-seed comparison of the pair at
    the same training settings (:data:`RECORDS`)."""
    from tools.compare import eval_period, is_done, paired_delta, run_key

    (base_name, base_cfg, _), (name, cfg, _) = runs[:2]
    base_desc, method_desc = table[0][1], table[1][1]
    d_demo = table[1][2]["AP"] - table[0][2]["AP"]
    opts = [f"train.eval_period={eval_period(DEMO_ITER, RECORD_EVAL_POINTS)}"]
    recorded = {}
    for run_name, config in ((base_name, base_cfg), (name, cfg)):
        for seed in (0, 1, 2, 3, 4):
            folder = os.path.join(ROOT, RECORDS, run_name, f"seed{seed}")
            if is_done(folder, run_key(config, seed, DEMO_ITER, opts)):
                with open(os.path.join(folder, "eval_results.json")) as f:
                    recorded.setdefault(run_name, {})[seed] = json.load(f)["bbox"]["AP"]
    command = (f"python tools/compare.py --suite {SUITE} --only {base_name} {name} --seeds 0 1 2 "
               f"--max-iter {DEMO_ITER} --eval-points {RECORD_EVAL_POINTS} --records {RECORDS}")
    lines = [f"This run, seed 0: {method_desc} - {base_desc} = {d_demo:+.1f} AP."]
    d = paired_delta(recorded.get(base_name, {}), recorded.get(name, {}))
    if d["n"] < 3:
        lines.append(f"One seed cannot tell a method from seed noise, and no 3-seed record of "
                     f"this pair at {DEMO_ITER} iterations is in {RECORDS}: `{command}` "
                     f"trains it.")
        return "\n".join(lines)
    lines.append(f"The comparison at this schedule over {d['n']} seeds ({RECORDS}; `{command}`): "
                 f"paired dAP = {d['mean']:+.1f} AP, 95 % interval [{d['lo']:+.1f}, "
                 f"{d['hi']:+.1f}]: {d['reading']}.")
    if 0 in recorded.get(base_name, {}) and 0 in recorded.get(name, {}):
        lines.append(f"Its seed 0: {base_desc} {recorded[base_name][0]:.1f}, {method_desc} "
                     f"{recorded[name][0]:.1f} AP (this demo: {table[0][2]['AP']:.1f}, "
                     f"{table[1][2]['AP']:.1f}; on another CPU a retrained run can differ from "
                     f"its record by a few tenths of AP: float rounding differs from the "
                     f"first iterations on).")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only these (repeatable)")
    parser.add_argument("--max-iter", type=int, help="override train.max_iter for every run")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time")
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
    max_iter = args.max_iter or DEMO_ITER
    extra = ["train.seed=0", f"train.max_iter={max_iter}", f"train.eval_period={max_iter}"]

    import balanced_det  # noqa: F401
    from balanced_det.config import load_config
    from balanced_det.engine import Checkpointer
    from balanced_det.utils.visualize import predict_and_draw
    from detectron2.config import instantiate

    print(f"balanced_det demo -> {out_dir}\n{balanced_det.compat.describe()}", flush=True)
    cores = os.cpu_count() or 1
    jobs = max(1, min(len(runs), args.jobs, cores))
    threads = max(1, cores // jobs)
    table = []
    for i in range(0, len(runs), jobs):
        batch = runs[i:i + jobs]
        start = time.time()
        procs = {name: start_training(name, config, out_dir, extra, threads)
                 for name, config, _ in batch}
        codes = follow(procs)
        seconds = time.time() - start
        failed = [f"{n} (exit {c}, see {procs[n][2]})" for n, c in codes.items() if c != 0]
        if failed:
            raise SystemExit(f"training failed: {', '.join(failed)}")
        for name, config, desc in batch:
            with open(os.path.join(out_dir, name, "eval_results.json")) as f:
                table.append((name, config, desc, json.load(f)["bbox"], seconds))
    for k, (name, config, desc, bbox, seconds) in enumerate(table):
        cfg = load_config(os.path.join(ROOT, config), extra)
        cfg.train.device = "cpu"
        model = instantiate(cfg.model)
        Checkpointer(model).load(os.path.join(out_dir, name, "model_final.pth"))
        picture = predict_and_draw(cfg, model, VAL_SET,
                                   os.path.join(out_dir, f"{name}_{VAL_SET}_predictions.png"))
        table[k] = (name, desc, bbox, seconds, picture)

    lines = [
        "| method | AP | AP50 | AP75 | APs | APm | wall time (side by side) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, desc, b, sec, _ in table:
        lines.append(f"| {desc} | {b['AP']:.1f} | {b['AP50']:.1f} | {b['AP75']:.1f} | "
                     f"{b['APs']:.1f} | {b['APm']:.1f} | {sec / 60:.1f} min |")
    summary = "\n".join(lines)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(f"# {VAL_SET} (COCO-style AP, percent)\n\n{summary}\n")
    print(f"\n{VAL_SET}, COCO-style box AP (percent):\n" + summary)
    for name, _, _, _, pic in table:
        print(f"{name}: predictions vs ground truth -> {pic}")
    base = table[0][2]["AP50"]
    trivial = trivial_detector_ap50(out_dir)
    verdict = "OK" if base >= AP50_REQUIRED else "BELOW the required level"
    print(f"\nBaseline AP50 on {VAL_SET} = {base:.1f}; a trivial detector (a grid of each "
          f"class's median-size boxes) scores {trivial:.1f}; required >= {AP50_REQUIRED:.0f}: "
          f"{verdict}\n"
          f"Outputs: {out_dir}")
    if len(table) == 2 and not args.max_iter:
        print("\n" + reading(runs, table))
    if base < AP50_REQUIRED and not args.max_iter:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
