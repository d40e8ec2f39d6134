"""tools/compare.py: aggregation over seeds, the paired ΔAP with its t interval and reading, the
AP per evaluation and the convergence point, reuse of finished runs only when
config/seed/schedule/overrides match, failed runs kept and reported. The training
subprocess is replaced by a function that writes a run's files (the unit under test is the
runner's bookkeeping; real training runs are covered by the config tests)."""
import csv
import json
import math
import os

import pytest


from balanced_det.evaluation.coco import DETECTIONS_FILE, write_detections
from tools import compare as C

BASE = "configs/Synthetic/retinanet_effnet_lite0_FPN.py"
GHM = "configs/Synthetic/ghm_retinanet_effnet_lite0_FPN.py"
# AP per (config, seed) written by the fake training run
# paired differences 1.0, 0.5, 1.5: mean 1.0, sd 0.5, 95 % CI 1.0 ± 4.303 * 0.5 / sqrt(3)
AP = {(BASE, 0): 10.0, (BASE, 1): 12.0, (BASE, 2): 14.0,
      (GHM, 0): 11.0, (GHM, 1): 12.5, (GHM, 2): 15.5}


def _fake_run_one(calls, fail=()):
    def run_one(config, out, seed, max_iter, extra, log_path, threads=None):
        calls.append((config, seed, max_iter, tuple(extra)))
        with open(log_path, "w") as f:
            f.write("training...\n")
        if (config, seed) in fail:
            with open(log_path, "a") as f:
                f.write("balanced_det.engine.trainer.NonFiniteLossError: loss_cls is nan\n")
            raise RuntimeError("training failed (exit 1)")
        ap = AP[(config, seed)]
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump({"bbox": {m: ap + i for i, m in enumerate(C.METRICS)}}, f)
        # two evaluations: half-way (AP - 2) and at the end
        with open(os.path.join(out, C.EVAL_HISTORY), "w") as f:
            json.dump([{"iteration": 5, "bbox": {"AP": ap - 2}},
                       {"iteration": 10, "bbox": {"AP": ap}}], f)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            for it in range(10):
                f.write(json.dumps({"iteration": it, "time": 0.5 + 0.01 * seed,
                                    "peak_mem_mb": 100.0 + it}) + "\n")
        write_detections(os.path.join(out, C.DETECTIONS),
                         [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])
    return run_one


def test_records_name_the_detections_file_the_evaluation_writes():
    assert C.DETECTIONS == DETECTIONS_FILE and C.DETECTIONS in C.RECORD_FILES


def test_mean_std_and_family():
    assert C.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert C.mean_std([2.0, float("nan")]) == (2.0, 0.0)
    assert all(math.isnan(v) for v in C.mean_std([float("nan")]))
    assert C.family("ghm_retinanet") == "retinanet"
    assert C.family("dw_fcos_refine") == "fcos"
    assert C.family("sampling_free_mask_rcnn") == "mask_rcnn"


def test_t_quantiles_match_known_values():
    # t_{0.975}(df) from standard tables
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (29, 2.045), (30, 2.042)):
        assert C.t975(df) == pytest.approx(t, abs=1e-3)
    assert C.t975(100) == C.t975(30)  # conservative above the table
    assert all(a > b for a, b in zip(C.T975, C.T975[1:]))  # decreasing in df
    with pytest.raises(ValueError):
        C.t975(0)


def test_paired_delta_hand_values():
    # d = 1.2, 0.8, 1.0: mean 1.0, sd 0.2, half-width 4.303 * 0.2 / sqrt(3) = 0.4969
    d = C.paired_delta({0: 10.0, 1: 11.0, 2: 12.0}, {0: 11.2, 1: 11.8, 2: 13.0})
    assert d["n"] == 3 and d["mean"] == pytest.approx(1.0)
    assert d["lo"] == pytest.approx(1.0 - 0.49688, abs=1e-4)
    assert d["hi"] == pytest.approx(1.0 + 0.49688, abs=1e-4)
    assert d["reading"] == "better"
    worse = C.paired_delta({0: 10.0, 1: 11.0, 2: 12.0}, {0: 8.8, 1: 10.2, 2: 11.0})
    assert worse["mean"] == pytest.approx(-1.0) and worse["reading"] == "worse"
    # pairing by seed, not by order; a NaN (failed) seed drops out of the pairs
    two = C.paired_delta({0: 10.0, 1: 11.0, 5: 1.0}, {1: 12.0, 0: 10.0, 5: float("nan")})
    assert two["n"] == 2 and two["mean"] == pytest.approx(0.5)
    assert two["hi"] - two["mean"] == pytest.approx(12.706 * 0.70711 / 2 ** 0.5, abs=1e-3)
    assert two["reading"] == "n < 3 seeds"
    assert C.paired_delta({0: 1.0}, {1: 2.0})["n"] == 0


def test_eval_period_and_convergence_point():
    assert C.eval_period(100, 10) == 10 and C.eval_period(95, 10) == 10
    assert C.eval_period(7, 10) == 1 and C.eval_period(50, 1) == 50
    # mean AP 2, 6, 8, 8.4 (gains 4, 2, 0.4): nothing after 300 adds 0.5 -> converged at 300
    seeds = [{100: 1.0, 200: 5.0, 300: 7.0, 400: 7.5},
             {100: 3.0, 200: 7.0, 300: 9.0, 400: 9.3, 500: 1.0}]  # 500: not every seed
    c = C.convergence_point(seeds)
    assert c["iterations"] == [100, 200, 300, 400]
    assert c["mean_ap"] == pytest.approx([2.0, 6.0, 8.0, 8.4])
    assert c["converged_at"] == 300 and c["n"] == 2
    assert C.convergence_point(seeds, min_gain=2.5)["converged_at"] == 200  # 8.4 - 6 < 2.5
    # a dip is not a plateau: 12.4, 10.7, 13.2, 13.2 converges at 500, not at 400
    dip = [{300: 12.4, 400: 10.7, 500: 13.2, 600: 13.2}]
    assert C.convergence_point(dip)["converged_at"] == 500
    assert C.convergence_point([{10: 1.0, 20: 5.0}])["converged_at"] is None
    assert C.convergence_point([])["converged_at"] is None


def test_read_ap_curve_falls_back_to_metrics(tmp_path):
    # as detectron2 writes it for max_iter 10, evaluation period 5: the periodic evaluation at
    # the 0-based iteration 4, the final one at iteration 10 (= max_iter)
    with open(tmp_path / "metrics.json", "w") as f:
        f.write(json.dumps({"iteration": 4, "total_loss": 2.0, "bbox/AP": 3.0}) + "\n")
        f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 10, "bbox/AP": 3.5}) + "\n{\"iter")
    assert C.read_ap_curve(str(tmp_path)) == {5: 3.0, 10: 3.5}
    (tmp_path / C.EVAL_HISTORY).write_text(json.dumps([{"iteration": 5, "bbox": {"AP": 4.0}}]))
    assert C.read_ap_curve(str(tmp_path)) == {5: 4.0}


def test_is_done_matches_a_whole_key_or_some_fields(tmp_path):
    key = C.run_key(BASE, 1, 7, ["train.amp.enabled=True"])
    assert not C.is_done(str(tmp_path), key)  # nothing recorded
    with open(tmp_path / "compare_run.json", "w") as f:
        json.dump(key, f)
    assert not C.is_done(str(tmp_path), key)  # recorded, not evaluated (training or failed)
    (tmp_path / "eval_results.json").write_text("{}")
    assert C.is_done(str(tmp_path), key)
    assert C.is_done(str(tmp_path), {"config": BASE, "seed": 1})  # any schedule
    for other in (C.run_key(BASE, 1, 9, ["train.amp.enabled=True"]),
                  C.run_key(BASE, 1, 7, []), {"config": GHM, "seed": 1},
                  {"config": BASE, "seed": 0}):
        assert not C.is_done(str(tmp_path), other), other


def test_table_reuse_and_noise_reading(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(C, "run_one", _fake_run_one(calls))
    argv = ["--configs", BASE, GHM, "--seeds", "0", "1", "2", "--max-iter", "7",
            "--output", str(tmp_path)]
    md = C.main(argv + ["--convergence"])
    assert len(calls) == 6 and all(c[2] == 7 for c in calls)
    # 10 evaluations over 7 iterations: every iteration
    assert all(c[3] == ("train.eval_period=1",) for c in calls)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    base_row = next(ln for ln in lines if "retinanet_effnet" in ln and "ghm" not in ln)
    ghm_row = next(ln for ln in lines if "ghm_retinanet" in ln)
    assert "| 12.0 ± 2.0 | 13.0 ± 2.0 |" in base_row and "| 13.0 ± 2.3 |" in ghm_row and "| baseline | - |" in base_row
    # paired d = 1.0, 0.5, 1.5: 1.0 ± 4.303 * 0.5 / sqrt(3) = [-0.24, +2.24]
    assert "| +1.0 [-0.2, +2.2] | no difference shown |" in ghm_row
    assert "| 0.51 | 109 |" in base_row  # median s/iter over seeds' means, max peak memory
    # AP per evaluation in runs.json; convergence: mean AP 10 -> 12 at iteration 10 (+2)
    with open(tmp_path / "runs.json") as f:
        assert json.load(f)["ghm_retinanet_effnet_lite0_FPN/seed1"]["curve"] == {"5": 10.5, "10": 12.5}
    conv = (tmp_path / "convergence.md").read_text()
    assert "| retinanet_effnet_lite0_FPN.py | baseline | 3 | 5: 10.0, 10: 12.0 | not yet" in conv
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["retinanet_effnet_lite0_FPN",
                                           "ghm_retinanet_effnet_lite0_FPN"]
    assert float(rows[1]["AP_mean"]) == pytest.approx(13.0)
    assert float(rows[1]["AP_std"]) == pytest.approx(5.25 ** 0.5, abs=1e-4)
    assert float(rows[1]["dAP_lo95"]) == pytest.approx(1.0 - 4.303 * 0.5 / 3 ** 0.5, abs=1e-3)
    assert rows[1]["reading"] == "no difference shown" and rows[0]["reading"] == "baseline"

    # same command again: every run is reused, nothing retrains
    calls.clear()
    assert C.main(argv) == md and calls == []
    # another schedule: retrained, the earlier runs kept beside the new ones
    C.main(argv[:-4] + ["--max-iter", "9", "--output", str(tmp_path)])
    assert len(calls) == 6 and all(c[2] == 9 for c in calls)
    kept = [d for d in os.listdir(tmp_path / "ghm_retinanet_effnet_lite0_FPN")
            if d.startswith("seed0.previous-")]
    assert len(kept) == 1


def test_failed_run_is_reported_and_excluded(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(C, "run_one", _fake_run_one(calls, fail={(GHM, 1)}))
    md = C.main(["--configs", BASE, GHM, "--seeds", "0", "1", "--output", str(tmp_path)])
    assert len(calls) == 4
    assert "(1/2 seeds failed)" in md
    assert "ghm_retinanet_effnet_lite0_FPN/seed1: balanced_det.engine.trainer.NonFiniteLossError" in md
    # the mean uses the seed that finished: AP 11
    ghm_row = next(ln for ln in md.splitlines() if ln.startswith("| ghm_retinanet"))
    assert "| 11.0 ± 0.0 |" in ghm_row
    # the failed run is not "done": the next call trains it again (and only it)
    calls.clear()
    monkeypatch.setattr(C, "run_one", _fake_run_one(calls))
    C.main(["--configs", BASE, GHM, "--seeds", "0", "1", "--output", str(tmp_path)])
    assert len(calls) == 1 and calls[0][:3] == (GHM, 1, None)
    # the config's own schedule (300 iterations) -> an evaluation every 30
    assert calls[0][3] == ("train.eval_period=30",)


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit, match="--only .*'nope'.*choose from"):
        C.main(["--suite", "trees", "--only", "nope"])
    with pytest.raises(SystemExit, match="configs not found"):
        C.main(["--configs", "configs/Synthetic/missing.py"])


def test_records_are_kept_and_reused_in_another_output(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(C, "run_one", _fake_run_one(calls))
    records = tmp_path / "records"
    argv = ["--configs", BASE, GHM, "--seeds", "0", "1", "2", "--max-iter", "7"]
    md = C.main(argv + ["--output", str(tmp_path / "a"), "--records", str(records)])
    assert len(calls) == 6
    rec = records / "ghm_retinanet_effnet_lite0_FPN" / "seed2"
    assert sorted(os.listdir(rec)) == sorted(C.RECORD_FILES)  # no log, no checkpoint
    # another machine: empty output folder, the records only -> nothing trains, same table
    calls.clear()
    assert C.main(argv + ["--output", str(tmp_path / "b"), "--records", str(records)]) == md
    assert calls == []
    # a record of another schedule is neither reused nor overwritten: refused before training
    with pytest.raises(SystemExit, match="another schedule or other overrides .*seed"):
        C.main(argv[:-1] + ["9", "--output", str(tmp_path / "c"), "--records", str(records)])
    assert calls == [] and C.is_done(str(rec), C.run_key(GHM, 2, 7, ["train.eval_period=1"]))
    # runs finished before --records was given are recorded when it is
    calls.clear()
    C.main(argv + ["--output", str(tmp_path / "a"), "--records", str(tmp_path / "late")])
    assert calls == [] and (tmp_path / "late" / "retinanet_effnet_lite0_FPN" / "seed0" /
                            C.RUN_KEY_FILE).exists()


def test_overrides_reach_every_run_and_key_its_record(tmp_path, monkeypatch):
    """``make compare-lr``: an override after the options goes to every run, and a record of
    another learning rate is not restored for it."""
    calls = []
    monkeypatch.setattr(C, "run_one", _fake_run_one(calls))
    records = tmp_path / "records"
    argv = ["--configs", BASE, GHM, "--seeds", "0", "1", "2", "--max-iter", "7",
            "--records", str(records)]
    C.main(argv + ["--output", str(tmp_path / "a")])
    calls.clear()
    with pytest.raises(SystemExit, match="give another --records folder"):
        C.main(argv + ["--output", str(tmp_path / "b"), "optimizer.lr=0.02"])
    assert calls == []
    argv[-1] = str(tmp_path / "records-lr0.02")
    C.main(argv + ["--output", str(tmp_path / "b"), "optimizer.lr=0.02"])
    assert len(calls) == 6 and all("optimizer.lr=0.02" in c[3] for c in calls)


def test_seed_folders_lists_runs_by_seed_not_set_aside_ones(tmp_path):
    for d in ("seed10", "seed2", "seed2.previous-20261207", "notes", "seedx"):
        os.makedirs(tmp_path / "fcos" / d)
    assert C.seed_folders(str(tmp_path / "fcos")) == {
        2: str(tmp_path / "fcos" / "seed2"), 10: str(tmp_path / "fcos" / "seed10")}
    assert list(C.seed_folders(str(tmp_path / "fcos"))) == [2, 10]
    assert C.seed_folders(str(tmp_path / "missing")) == {}
