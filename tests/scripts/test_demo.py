"""tools/demo.py's reading: its own seed-0 difference, the recorded 3-seed comparison of the
pair at the demo's settings (paired interval and reading), and nothing claimed without it."""
import importlib.util
import json
import os

from conftest import ROOT

from tools import compare as C


def _demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(folder, config, seed, ap, opts, max_iter):
    os.makedirs(folder)
    with open(os.path.join(folder, "eval_results.json"), "w") as f:
        json.dump({"bbox": {"AP": ap}}, f)
    with open(os.path.join(folder, C.RUN_KEY_FILE), "w") as f:
        json.dump(C.run_key(config, seed, max_iter, opts), f)


def test_reading_quotes_the_recorded_comparison_or_says_it_is_missing(tmp_path, monkeypatch):
    demo = _demo()
    monkeypatch.setattr(demo, "ROOT", str(tmp_path))
    table = [(None, "base", {"AP": 11.0}), (None, "method", {"AP": 10.0})]
    text = demo.reading(demo.DEMO_RUNS, table)
    assert "= -1.0 AP" in text and "cannot tell" in text and "compare.py" in text
    # recorded pairs: d = -1, -2, -3 -> mean -2, sd 1, t(2) 4.303: [-4.5, +0.5]
    (base, base_cfg, _), (name, cfg, _) = demo.DEMO_RUNS
    for seed, (b, m) in enumerate([(11.0, 10.0), (12.0, 10.0), (13.0, 10.0)]):
        _record(str(tmp_path / demo.RECORDS / base / f"seed{seed}"), base_cfg, seed, b,
                ["train.eval_period=100"], demo.DEMO_ITER)
        _record(str(tmp_path / demo.RECORDS / name / f"seed{seed}"), cfg, seed, m,
                ["train.eval_period=100"], demo.DEMO_ITER)
    text = demo.reading(demo.DEMO_RUNS, table)
    assert "paired dAP = -2.0 AP, 95 % interval [-4.5, +0.5]: no difference shown" in text
    assert "Its seed 0: base 11.0, method 10.0 AP" in text


def test_the_demo_pair_is_recorded_at_the_demo_schedule():
    """The committed 3-seed comparison the demo quotes is there, at the demo's training
    settings (the same run keys)."""
    demo = _demo()
    opts = [f"train.eval_period={C.eval_period(demo.DEMO_ITER, demo.RECORD_EVAL_POINTS)}"]
    for name, config, _ in demo.DEMO_RUNS:
        for seed in (0, 1, 2):
            folder = os.path.join(ROOT, demo.RECORDS, name, f"seed{seed}")
            assert C.is_done(folder, C.run_key(config, seed, demo.DEMO_ITER, opts)), folder


def test_trivial_detector_is_far_below_the_required_baseline(tmp_path):
    demo = _demo()
    import balanced_det  # noqa: F401  (registers the datasets)

    ap50 = demo.trivial_detector_ap50(str(tmp_path))
    assert 0 <= ap50 < demo.AP50_REQUIRED / 10
