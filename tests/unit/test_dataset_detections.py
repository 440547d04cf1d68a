"""Detections as data (camtrap.dataset.detections): the real MegaDetector v5 output of
ena24_mini matched to its images, every wrong record reported with the fix, each image's best
animal box above the threshold, and the crops a dataset and a run carry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from camtrap.config import DataConfig, build_config
from camtrap.dataset import load_data, validate_data
from camtrap.dataset.detections import (
    BOXES_COLUMN,
    CROP_COLUMNS,
    best_box,
    parse_boxes,
    read_detections,
)
from camtrap.dataset.megadetector import Detection, DetectionImage
from camtrap.errors import ConfigError

MD = "annotations/megadetector.json"
CROPS = DataConfig(format="conservision", detections=MD, crop="best")


@pytest.fixture
def data_root(ena24_root, tmp_path) -> Path:
    return Path(shutil.copytree(ena24_root, tmp_path / "ena24"))


def _md(root: Path) -> dict:
    return json.loads((root / MD).read_text())


def test_the_real_megadetector_output_gives_each_image_its_box(ena24_root):
    data = load_data(ena24_root, CROPS)
    first = data.frame.set_index("filepath").loc["train_features/ENA24_02480.jpg"]
    assert [first[c] for c in ("crop_x", "crop_y", "crop_w", "crop_h")] == [0.35, 0.35, 0.3, 0.3]
    assert data.frame["crop_x"].notna().all()  # every photo has an animal above 0.1
    assert data.fingerprint != load_data(ena24_root, DataConfig()).fingerprint


def test_best_box_is_the_most_confident_animal_above_the_threshold():
    image = DetectionImage("a.jpg", [
        Detection("animal", 0.3, (0.1, 0.1, 0.2, 0.2), []),
        Detection("person", 0.9, (0.5, 0.5, 0.1, 0.1), []),
        Detection("animal", 0.6, (0.2, 0.2, 0.3, 0.3), []),
    ])  # fmt: skip
    assert best_box(image, 0.1) == (0.2, 0.2, 0.3, 0.3)  # a person is not the animal
    assert best_box(image, 0.7) is None  # nothing above: the whole frame (a blank)
    assert best_box(DetectionImage("b.jpg", [], "Failure image access"), 0.0) is None
    assert best_box(None, 0.1) is None


def test_every_wrong_record_is_a_problem_with_the_fix(data_root):
    doc = _md(data_root)
    doc["images"][1]["file"] = "elsewhere/x.jpg"
    doc["images"].append(dict(doc["images"][0]))
    doc["images"][2]["detections"][0]["conf"] = 1.5
    (data_root / MD).write_text(json.dumps(doc))
    _, problems = validate_data(data_root, CROPS)
    assert [p.message for p in problems] == [
        "images[2].detections[0] (train_features/ENA24_02573.jpg) is not a detection (conf 1.5 "
        "is not in 0..1)"
    ]  # the format first: the records are matched once the file reads
    doc["images"][2]["detections"][0]["conf"] = 0.5
    (data_root / MD).write_text(json.dumps(doc))
    _, problems = validate_data(data_root, CROPS)
    assert [(p.file, p.message) for p in problems] == [
        (MD, "images[1]: elsewhere/x.jpg is not an image of this dataset"),
        (MD, "images[21]: train_features/ENA24_02480.jpg is listed twice"),
    ]
    assert problems[0].fix.startswith("remove the record, or point data.detections")


def test_images_the_file_does_not_list_keep_their_whole_frame(data_root, caplog):
    doc = _md(data_root)
    doc["images"] = doc["images"][3:]
    (data_root / MD).write_text(json.dumps(doc))
    found, problems = read_detections(data_root, MD, [i["file"] for i in _md(data_root)["images"]]
                                      + ["train_features/ENA24_02480.jpg"])  # fmt: skip
    assert problems == [] and found.missing == ["train_features/ENA24_02480.jpg"]
    data = load_data(data_root, CROPS)
    assert int(data.frame["crop_x"].isna().sum()) == 3


def test_crop_and_detections_go_together():
    with pytest.raises(ConfigError, match="data.crop=best and data.detections=none: crops and"):
        build_config("smoke", overrides={"data.crop": "best"})
    with pytest.raises(ConfigError, match="data.crop=all and data.detections=none"):
        build_config("smoke", overrides={"data.crop": "all"})
    with pytest.raises(ConfigError, match="go together"):
        build_config("smoke", overrides={"data.detections": MD})
    assert build_config("smoke", overrides={"data.detections": MD, "data.crop": "best"})
    assert build_config("smoke", overrides={"data.detections": MD, "data.crop": "all"})


def test_crop_all_keeps_every_animal_box_above_the_threshold_most_confident_first(data_root):
    doc = _md(data_root)
    doc["images"][0]["detections"] = [
        {"category": "1", "conf": 0.4, "bbox": [0.1, 0.1, 0.2, 0.2]},
        {"category": "2", "conf": 0.95, "bbox": [0.5, 0.5, 0.1, 0.1]},  # a person: not a crop
        {"category": "1", "conf": 0.7, "bbox": [0.6, 0.2, 0.25, 0.3]},
        {"category": "1", "conf": 0.05, "bbox": [0.0, 0.0, 0.1, 0.1]},  # below 0.1
    ]
    doc["images"][1]["detections"] = []  # no animal: its whole frame
    (data_root / MD).write_text(json.dumps(doc))
    data = load_data(data_root, CROPS.model_copy(update={"crop": "all"}))
    cells = data.frame.set_index("filepath")[BOXES_COLUMN]
    assert cells[doc["images"][0]["file"]] == "0.6 0.2 0.25 0.3;0.1 0.1 0.2 0.2"
    assert cells[doc["images"][1]["file"]] == ""
    assert parse_boxes(cells[doc["images"][0]["file"]]) == [(0.6, 0.2, 0.25, 0.3),
                                                            (0.1, 0.1, 0.2, 0.2)]  # fmt: skip
    assert parse_boxes("") == [] and parse_boxes(float("nan")) == []
    assert CROP_COLUMNS[0] not in data.frame  # one representation per mode
    best = load_data(data_root, CROPS).frame.set_index("filepath")
    assert best.loc[doc["images"][0]["file"], list(CROP_COLUMNS)].tolist() == [0.6, 0.2, 0.25, 0.3]
