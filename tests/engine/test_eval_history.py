"""Every evaluation of a training run is kept in eval_history.json, ordered by iteration."""
import json

from balanced_det.engine import do_train
from balanced_det.engine.train_loop import EVAL_HISTORY, eval_history_entry

from conftest import all_config_files, rel
from helpers import tiny_cfg

CFG = [p for p in all_config_files() if rel(p) == "Synthetic/fcos_effnet_lite0_FPN.py"][0]


def test_eval_history_entry_keeps_tasks_as_floats():
    entry = eval_history_entry(7, {"bbox": {"AP": 1, "AP50": 2.5}, "note": "x"})
    assert entry == {"iteration": 7, "bbox": {"AP": 1.0, "AP50": 2.5}}


def test_every_evaluation_is_kept(tmp_path):
    cfg = tiny_cfg(CFG, tmp_path, max_iter=3)
    cfg.train.eval_period = 2
    results = do_train(cfg)
    with open(tmp_path / EVAL_HISTORY) as f:
        history = json.load(f)
    # every 2 iterations, and at the end
    assert [h["iteration"] for h in history] == [2, 3]
    with open(tmp_path / "eval_results.json") as f:
        last = json.load(f)
    assert history[-1]["bbox"] == last["bbox"] and set(history[0]["bbox"]) == set(results["bbox"])
