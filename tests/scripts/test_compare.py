"""tools/compare.py: aggregation over seeds, the seed-noise reading, reuse of finished runs only
when config/seed/schedule/overrides match, failed runs kept and reported. The training
subprocess is replaced by a function that writes a run's files (the unit under test is the
runner's bookkeeping; real training runs are covered by the config tests)."""
import csv
import json
import math
import os

import pytest


from tools import compare as C

BASE = "configs/Synthetic/retinanet_effnet_lite0_FPN.py"
GHM = "configs/Synthetic/ghm_retinanet_effnet_lite0_FPN.py"
# AP per (config, seed) written by the fake training run
AP = {(BASE, 0): 10.0, (BASE, 1): 12.0, (BASE, 2): 14.0,
      (GHM, 0): 11.0, (GHM, 1): 13.0, (GHM, 2): 15.0}


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
        with open(os.path.join(out, "metrics.json"), "w") as f:
            for it in range(10):
                f.write(json.dumps({"iteration": it, "time": 0.5 + 0.01 * seed,
                                    "peak_mem_mb": 100.0 + it}) + "\n")
    return run_one


def test_mean_std_and_family():
    assert C.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert C.mean_std([2.0, float("nan")]) == (2.0, 0.0)
    assert all(math.isnan(v) for v in C.mean_std([float("nan")]))
    assert C.family("ghm_retinanet") == "retinanet"
    assert C.family("dw_fcos_refine") == "fcos"
    assert C.family("sampling_free_mask_rcnn") == "mask_rcnn"


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
    md = C.main(argv)
    assert len(calls) == 6 and all(c[2] == 7 for c in calls)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    # AP: mean of 10, 12, 14 = 12 ± 2 and 13 ± 2; delta +1 is within 2 x std -> seed noise
    base_row = next(ln for ln in lines if "retinanet_effnet" in ln and "ghm" not in ln)
    ghm_row = next(ln for ln in lines if "ghm_retinanet" in ln)
    assert "| 12.0 ± 2.0 | 13.0 ± 2.0 |" in base_row and "baseline" in base_row
    assert "+1.0 (within seed noise)" in ghm_row
    assert "| 0.51 | 109 |" in base_row  # median s/iter over seeds' means, max peak memory
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["retinanet_effnet_lite0_FPN",
                                           "ghm_retinanet_effnet_lite0_FPN"]
    assert float(rows[1]["AP_mean"]) == pytest.approx(13.0)
    assert float(rows[1]["AP_std"]) == pytest.approx(2.0)

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
    assert calls == [(GHM, 1, None, ())]


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit, match="--only .*'nope'.*choose from"):
        C.main(["--suite", "trees", "--only", "nope"])
    with pytest.raises(SystemExit, match="configs not found"):
        C.main(["--configs", "configs/Synthetic/missing.py"])
