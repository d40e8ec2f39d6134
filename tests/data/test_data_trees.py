"""Tree-crown conversion: counts match the source labels, deterministic, documented tiling."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from balanced_det.data import convert_trees
from balanced_det.data.trees import TREE_SOURCES, read_voc_boxes, tile_edges, trees_source_dir
from detectron2.data import DatasetCatalog, MetadataCatalog

EXPECTED = {
    "2019_YELL_2_528000_4978000_image_crop2": ((2299, 2472), 574),
    "2019_YELL_2_541000_4977000_image_crop": ((1249, 1035), 279),
    "OSBS_029": ((400, 400), 61),
    "SOAP_061": ((400, 400), 37),
}


@pytest.fixture(scope="module")
def converted():
    return convert_trees()


def test_source_files_as_documented():
    src = trees_source_dir()
    for stem, (size, n) in EXPECTED.items():
        boxes, labels, wh = read_voc_boxes(src / f"{stem}.xml")
        assert wh == size and len(boxes) == n
    _, labels, _ = read_voc_boxes(src / "SOAP_061.xml")
    assert labels.count("Dead") == 28 and labels.count("Alive") == 9
    # The CSV labels of OSBS_029 are the same 61 boxes as its XML.
    with open(src / "OSBS_029.csv") as f:
        rows = [[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in csv.DictReader(f)]
    xml_boxes, _, _ = read_voc_boxes(src / "OSBS_029.xml")
    assert sorted(map(tuple, rows)) == sorted(map(tuple, xml_boxes.tolist()))


def test_counts_match_source_per_image(converted):
    per_source = {}
    for split in ("train", "val"):
        ds = json.loads((converted / f"trees_{split}.json").read_text())
        src_of = {im["id"]: im["source_image"][:-4] for im in ds["images"]}
        for a in ds["annotations"]:
            if not a["iscrowd"]:
                per_source.setdefault(src_of[a["image_id"]], []).append(a["source_index"])
    for stem, (_, n) in EXPECTED.items():
        idx = per_source[stem]
        assert len(idx) == n, stem
        assert sorted(idx) == list(range(n)), f"{stem}: every source box exactly once"


def test_split_keeps_source_images_apart(converted):
    sources = {}
    for split in ("train", "val"):
        ds = json.loads((converted / f"trees_{split}.json").read_text())
        sources[split] = {im["source_image"] for im in ds["images"]}
    assert not sources["train"] & sources["val"]
    assert sources["train"] == {f"{s}.png" for s, sp in TREE_SOURCES if sp == "train"}


def test_tiles_cover_images_and_boxes_inside_tiles(converted):
    ds = json.loads((converted / "trees_train.json").read_text())
    area = {}
    for im in ds["images"]:
        x0, y0, x1, y1 = im["tile_xyxy"]
        assert (im["width"], im["height"]) == (x1 - x0, y1 - y0)
        area[im["source_image"]] = area.get(im["source_image"], 0) + im["width"] * im["height"]
    assert area["2019_YELL_2_528000_4978000_image_crop2.png"] == 2299 * 2472
    sizes = {im["id"]: (im["width"], im["height"]) for im in ds["images"]}
    for a in ds["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6


def test_tile_rule_by_hand():
    # 2299 / 400 = 5.75 -> 6 near-equal tiles; 400 -> 1 tile; 1035 / 400 = 2.6 -> 3 tiles.
    assert tile_edges(2299).tolist() == [0, 383, 766, 1150, 1533, 1916, 2299]
    assert tile_edges(400).tolist() == [0, 400]
    assert tile_edges(1035).tolist() == [0, 345, 690, 1035]


def test_conversion_is_deterministic_and_cached(converted, tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_DET_CACHE", str(tmp_path))
    again = convert_trees()
    assert again != converted
    for name in ("trees_train.json", "trees_val.json"):
        assert (again / name).read_bytes() == (converted / name).read_bytes()
    first = sorted(p.name for p in (converted / "images").iterdir())
    assert first == sorted(p.name for p in (again / "images").iterdir())
    some = first[len(first) // 2]
    assert (again / "images" / some).read_bytes() == (converted / "images" / some).read_bytes()
    mtime = (again / "trees_train.json").stat().st_mtime
    assert convert_trees() == again and (again / "trees_train.json").stat().st_mtime == mtime


def test_registered_in_detectron2():
    train = DatasetCatalog.get("trees_train")
    val = DatasetCatalog.get("trees_val")
    assert len(train) == 37 and len(val) == 10
    assert MetadataCatalog.get("trees_val").thing_classes == ["Tree"]
    n_val = sum(1 for d in val for a in d["annotations"] if not a.get("iscrowd", 0))
    assert n_val == 279 + 37
    assert Path(MetadataCatalog.get("trees_val").json_file).exists()


def test_missing_source_names_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("BALANCED_DET_TREES_SOURCE", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="BALANCED_DET_TREES_SOURCE"):
        trees_source_dir()
    monkeypatch.setenv("BALANCED_DET_TREES_SOURCE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lacks"):
        convert_trees()
    assert np  # keep import
