"""tools/gpu_suite.py: the config list and baselines, the tables, and a tiny run on the CPU (one
config, one timed step per precision, one AMP iteration) so the suite is known to work before
a GPU is there."""
import json
import os

from tools import gpu_suite as G

RETINA = "configs/COCO-Detection/retinanet_R_50_FPN_1x.py"
GHM = "configs/COCO-Detection/ghm_retinanet_R_50_FPN_1x.py"


def test_every_coco_config_has_its_baseline():
    configs = G.coco_configs()
    assert RETINA in configs and "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py" in configs
    assert G.short_name("configs/COCO-Detection/dw_fcos_R_50_FPN_refine_1x.py") == "dw_fcos_refine"
    for c in configs:
        base = G.baseline_of(c, configs)
        assert base is not None, c
        assert G.short_name(base) in ("faster_rcnn", "retinanet", "fcos", "mask_rcnn")
    assert G.baseline_of(GHM, configs) == RETINA


def test_tables_give_ratios_to_the_baseline(tmp_path):
    results = {
        RETINA: {"baseline": RETINA, "fp32": {"ms": 100.0, "peak_mib": 1000.0},
                 "amp": {"ms": 50.0, "peak_mib": 600.0},
                 "finite": {"iters": 300, "first_nonfinite": None, "last_total_loss": 1.5}},
        GHM: {"baseline": RETINA, "fp32": {"ms": 110.0, "peak_mib": 1100.0},
              "amp": {"ms": 60.0, "peak_mib": 660.0},
              "finite": {"iters": 300, "first_nonfinite": 7, "last_total_loss": float("nan"),
                         "error": "Loss became NaN"}},
        "configs/COCO-Detection/fcos_R_50_FPN_1x.py": {"baseline": None,
                                                      "skipped": "time budget 540 s"},
    }
    md = G.write_tables(str(tmp_path), results, None, "header")
    assert "| ghm_retinanet | 110.0 | 60.0 | 1.83 | 1100 | 660 | 1.10 | 1.20 | 1.10 |" in md
    assert "| retinanet | 100.0 | 50.0 | 2.00 | 1000 | 600 | 1.00 | 1.00 | 1.00 |" in md
    assert "| ghm_retinanet | 300 | NO, at iteration 7 |" in md
    assert "| fcos | not run (time budget 540 s) |" in md
    assert (tmp_path / "steps.md").exists() and (tmp_path / "finite.md").exists()


def test_tiny_run_on_the_cpu(tmp_path):
    md = G.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--configs", RETINA,
                 "--finite-iters", "1"])
    assert "| retinanet | 1 | yes |" in md
    with open(tmp_path / "suite.json") as f:
        res = json.load(f)["results"][RETINA]
    assert res["fp32"]["ms"] > 0 and res["amp"]["ms"] > 0
    assert res["finite"]["first_nonfinite"] is None
    assert sorted(os.listdir(tmp_path)) == ["finite.md", "steps.md", "suite.json"]


def test_finiteness_worker_writes_its_result(tmp_path):
    # what each parallel finiteness process of a GPU run does
    path = tmp_path / "r.json"
    G.main(["--finite-worker", RETINA, "--tiny", "--device", "cpu", "--finite-iters", "1",
            "--out", str(path)])
    res = json.loads(path.read_text())
    assert res["iters"] == 1 and res["first_nonfinite"] is None
