"""tools/recipe_sweep.py: the learning rate of each arm read from its runs, the per-LR paired
ΔAP, the best-of-sweep choice and its cross-arm paired ΔAP, the convergence per arm, and the
errors for folders that are not one arm. Records are written by hand here (the unit under test
reads records; the records themselves come from tools/compare.py, tested in test_compare)."""
import json
import os
import shutil

import pytest

from record_helpers import flat, rising, write_record as _record
from tools import compare as C
from tools import recipe_sweep as S

BASE, METHOD = "retinanet", "ghm_retinanet"
CONFIG = {name: cfg for name, cfg, _ in C.SUITES["synthetic"]}


def _arms(tmp_path):
    common, low = str(tmp_path / "lr0.01"), str(tmp_path / "lr0.005")
    # the common arm has no override: its learning rate is the config's (0.01)
    for seed, (b, m) in enumerate([(10.0, 11.0), (12.0, 12.5), (14.0, 15.5)]):
        _record(common, BASE, seed, b, rising)
        _record(common, METHOD, seed, m, rising)
    for seed, (b, m) in enumerate([(13.0, 11.0), (14.0, 12.0), (15.0, 13.0)]):
        _record(low, BASE, seed, b, flat, lr=0.005)
        _record(low, METHOD, seed, m, flat, lr=0.005)
    return common, low


def _rows(md, title):
    block = md.split(title, 1)[1].split("\n\n", 2)[1]
    return {r.split(" | ")[0].strip("| "): [c.strip() for c in r.strip("|").split("|")]
            for r in block.splitlines()[2:]}


def test_tables_per_learning_rate_and_best_of_sweep(tmp_path):
    common, low = _arms(tmp_path)
    out = str(tmp_path / "sweep.md")
    figure = str(tmp_path / "sweep.png")
    md = S.main(["--suite", "synthetic", "--only", BASE, METHOD, "--records", common, low,
                 "--out", out, "--figure", figure])
    assert open(out).read() == md
    with open(figure, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    per_lr = _rows(md, "**Per learning rate**")
    # arms sorted by learning rate: 0.005 first. LR 0.005: differences -2, -2, -2 (sd 0);
    # LR 0.01: 1.0, 0.5, 1.5, mean 1.0, 95 % CI 1.0 +- 4.303 * 0.5 / sqrt(3) = [-0.2, +2.2]
    assert per_lr["RetinaNet (focal)"][1:] == ["14.0 ± 1.0", "baseline", "12.0 ± 2.0", "baseline"]
    assert per_lr["GHM RetinaNet"][1:] == ["12.0 ± 1.0", "-2.0 [-2.0, -2.0] worse",
                                           "13.0 ± 2.3", "+1.0 [-0.2, +2.2] no difference shown"]

    best = _rows(md, "**Best of sweep**")
    # the baseline is best at 0.005 (14.0 > 12.0), the method at 0.01 (13.0 > 12.0); paired
    # across arms: 11 - 13, 12.5 - 14, 15.5 - 15 = -2, -1.5, +0.5: mean -1.0, sd 1.3229,
    # 95 % CI -1.0 +- 4.303 * 1.3229 / sqrt(3) = [-4.3, +2.3]
    assert best["RetinaNet (focal)"][1:5] == ["0.005", "14.0 ± 1.0", "0.005: 14.0, 0.01: 12.0",
                                              "baseline"]
    assert best["GHM RetinaNet"][1:] == ["0.01", "13.0 ± 2.3", "0.005: 12.0, 0.01: 13.0",
                                         "-1.0 [-4.3, +2.3]", "no difference shown"]

    converged = _rows(md, "**Where the mean AP curve converged**")
    assert converged["RetinaNet (focal)"][1:] == ["5", "not yet"]


def test_an_arm_missing_seeds_is_not_a_best_of_sweep_candidate(tmp_path):
    common, low = _arms(tmp_path)
    # the baseline's best arm (0.005) loses seed 2: its mean over 2 seeds is shown, but the
    # choice falls on the complete arm
    shutil.rmtree(os.path.join(low, BASE, "seed2"))
    md = S.main(["--suite", "synthetic", "--only", BASE, METHOD, "--records", common, low])
    assert _rows(md, "**Per learning rate**")["RetinaNet (focal)"][1] == "13.5 ± 0.7 (n = 2)"
    best = _rows(md, "**Best of sweep**")
    assert best["RetinaNet (focal)"][1] == "0.01"
    assert best["RetinaNet (focal)"][3] == "0.005: 13.5 (n = 2), 0.01: 12.0"
    assert best["GHM RetinaNet"][4] == "+1.0 [-0.2, +2.2]"
    assert _rows(md, "**Where the mean AP curve converged**")["RetinaNet (focal)"][1] == "-"


def test_a_folder_that_is_not_one_arm_is_refused(tmp_path):
    common, low = _arms(tmp_path)
    # one run of another learning rate in the 0.005 folder
    key_file = os.path.join(low, METHOD, "seed1", C.RUN_KEY_FILE)
    with open(key_file) as f:
        key = json.load(f)
    key["opts"].append("optimizer.lr=0.02")  # the last override is the one that applies
    with open(key_file, "w") as f:
        json.dump(key, f)
    with pytest.raises(SystemExit, match=r"lr0\.005: its runs have different learning rates"):
        S.main(["--suite", "synthetic", "--only", BASE, METHOD, "--records", common, low])
    with pytest.raises(SystemExit, match="two folders have the same learning rate"):
        S.main(["--suite", "synthetic", "--only", BASE, METHOD, "--records", common, common])
    longer = str(tmp_path / "lr0.02-longer")
    _record(longer, BASE, 0, 10.0, flat, lr=0.02, max_iter=20)
    with pytest.raises(SystemExit, match="the arms have different schedules"):
        S.main(["--suite", "synthetic", "--only", BASE, "--records", common, longer])
    with pytest.raises(SystemExit, match="no recorded run"):
        S.main(["--suite", "synthetic", "--only", BASE, "--records", str(tmp_path / "empty")])


def test_run_lr_reads_the_last_override_else_the_config():
    cfg = CONFIG[BASE]
    assert S.run_lr({"config": cfg, "opts": ["optimizer.lr=0.02", "optimizer.lr=0.005"]}) == 0.005
    assert S.run_lr({"config": cfg, "opts": ["train.eval_period=100"]}) == S.config_lr(cfg) == 0.01
