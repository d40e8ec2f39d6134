"""Bad datasets give a clear error naming the bad value and what was expected, or a documented
repair (balanced_det.data.validation), never a silent wrong result."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from balanced_det.data import (
    DatasetError,
    DatasetFilesNotFoundError,
    DatasetMapper,
    get_detection_dataset_dicts,
    register_coco_style,
)
from detectron2.data import DatasetCatalog
import detectron2.data.transforms as T

_COUNTER = [0]


def make_coco(tmp_path, annotations, images=None, categories=None, write_images=True):
    """A tiny COCO dataset on disk, registered under a fresh name; returns the name."""
    images = images or [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    categories = categories or [{"id": 1, "name": "thing"}]
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    if write_images:
        for im in images:
            Image.fromarray(np.full((im["height"], im["width"], 3), 128, np.uint8)).save(
                root / im["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": categories}))
    _COUNTER[0] += 1
    name = f"bad_input_{_COUNTER[0]}"
    register_coco_style(name, lambda: (str(ann), str(root)), [c["name"] for c in categories])
    return name, ann, root


def box(id_, bbox, image_id=1, cat=1, crowd=0):
    return {"id": id_, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "area": float(max(bbox[2], 0) * max(bbox[3], 0)), "iscrowd": crowd}


def test_missing_image_file(tmp_path):
    name, _, root = make_coco(tmp_path, [box(1, [1, 1, 10, 10])], write_images=False)
    with pytest.raises(DatasetError, match=r"1 of 1 image files do not exist: .*a\.png"):
        get_detection_dataset_dicts([name])


def test_unreadable_image(tmp_path):
    name, _, root = make_coco(tmp_path, [box(1, [1, 1, 10, 10])])
    (root / "a.png").write_bytes(b"this is not a png")
    d = DatasetCatalog.get(name)[0]
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB")
    with pytest.raises(DatasetError, match=r"cannot read image .*a\.png.*Expected a readable image"):
        mapper(dict(d))
    skipping = DatasetMapper(is_train=True, augmentations=[], image_format="RGB",
                             on_bad_image="skip")
    assert skipping(dict(d)) is None  # detectron2's MapDataset then draws another image
    with pytest.raises(ValueError, match="on_bad_image"):
        DatasetMapper(is_train=True, augmentations=[], image_format="RGB", on_bad_image="drop")


def test_annotation_json_missing_or_malformed(tmp_path):
    name, ann, _ = make_coco(tmp_path, [box(1, [1, 1, 10, 10])])
    ann.write_text('{"images": [ {"id": 1,, } ]}')
    with pytest.raises(DatasetError, match=r"ann\.json is not valid JSON .*line 1, column"):
        DatasetCatalog.get(name)
    ann.unlink()
    with pytest.raises((DatasetFilesNotFoundError, FileNotFoundError), match="ann.json"):
        DatasetCatalog.get(name)


def test_degenerate_and_outside_boxes_are_repaired_or_refused(tmp_path, caplog):
    anns = [box(1, [1, 1, 10, 10]), box(2, [5, 5, 0, 8]), box(3, [5, 5, -3, 4]),
            box(4, [60, 40, 10, 10]), box(5, [100, 100, 5, 5])]
    name, _, _ = make_coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING):
        d = get_detection_dataset_dicts([name])[0]
    boxes = [a["bbox"] for a in d["annotations"]]
    assert len(boxes) == 2  # the good one and the clipped one
    assert np.allclose(boxes[1], [60, 40, 64, 48])  # clipped to the 64x48 image (XYXY)
    assert "dropped 2 boxes with width or height <= 0" in caplog.text
    assert "dropped 1 boxes entirely outside" in caplog.text and "clipped 1 boxes" in caplog.text
    with pytest.raises(DatasetError, match=r"width/height <= 0: .*a\.png.*strict=True"):
        get_detection_dataset_dicts([name], strict=True)
    # An image whose only box is degenerate is removed from training like an empty one.
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.png", "width": 64, "height": 48}]
    name2, _, _ = make_coco(tmp_path, [box(1, [1, 1, 10, 10]), box(2, [3, 3, 0, 0], image_id=2)],
                            images=images)
    assert [d["image_id"] for d in get_detection_dataset_dicts([name2])] == [1]


def test_category_id_not_in_categories(tmp_path):
    name, _, _ = make_coco(tmp_path, [box(1, [1, 1, 10, 10], cat=7)])
    with pytest.raises(KeyError, match="category_id=7"):
        DatasetCatalog.get(name)


def test_crowd_only_images_are_removed_from_training(tmp_path, caplog):
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.png", "width": 64, "height": 48}]
    anns = [box(1, [1, 1, 10, 10], image_id=1), box(2, [1, 1, 30, 30], image_id=2, crowd=1)]
    name, _, _ = make_coco(tmp_path, anns, images=images)
    train = get_detection_dataset_dicts([name], filter_empty=True)
    test = get_detection_dataset_dicts([name], filter_empty=False)
    assert [d["image_id"] for d in train] == [1] and len(test) == 2


def test_empty_dataset(tmp_path):
    name, _, _ = make_coco(tmp_path, [], images=[], write_images=False)
    with pytest.raises(DatasetError, match="empty"):
        get_detection_dataset_dicts([name])
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    (tmp_path / "other").mkdir()
    name2, _, _ = make_coco(tmp_path / "other", [], images=images)
    with pytest.raises(DatasetError, match="hold no images after filtering"):
        get_detection_dataset_dicts([name2], filter_empty=True)
    assert T
