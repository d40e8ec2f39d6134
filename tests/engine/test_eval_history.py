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


def test_detections_round_trip_rounded(tmp_path):
    from balanced_det.evaluation.coco import read_detections, write_detections

    path = str(tmp_path / "d.json.gz")
    write_detections(path, [
        {"image_id": 3, "category_id": 2, "bbox": [1.234, 5.0, 10.005, 7.0], "score": 0.123456},
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9},
        {"image_id": 8, "category_id": 2, "segmentation": {}, "score": 0.5},  # no box: left out
    ])
    got = read_detections(path)
    assert set(got) == {3} and len(got[3]) == 2
    assert got[3][0] == {"category_id": 2, "bbox": [1.23, 5.0, 10.01, 7.0], "score": 0.12346}


def test_the_last_evaluation_keeps_its_detections(tmp_path):
    """val_detections.json.gz holds the final model's detections: scoring them again with
    pycocotools gives the run's eval_results.json."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detectron2.data import MetadataCatalog
    from balanced_det.evaluation.coco import DETECTIONS_FILE, read_detections

    cfg = tiny_cfg(CFG, tmp_path, max_iter=2)
    do_train(cfg)
    dets = read_detections(str(tmp_path / DETECTIONS_FILE))
    with open(tmp_path / "eval_results.json") as f:
        last = json.load(f)["bbox"]
    gt = COCO(MetadataCatalog.get(cfg.dataloader.test.dataset.names).json_file)
    rows = [dict(d, image_id=i) for i, ds in dets.items() for d in ds]
    assert rows and set(dets) <= set(gt.getImgIds())
    ev = COCOeval(gt, gt.loadRes(rows), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert abs(100 * max(ev.stats[0], 0) - last["AP"]) < 0.05
    assert abs(100 * max(ev.stats[1], 0) - last["AP50"]) < 0.05
