"""MegaDetector batch output: every documented field, on probabilities written out by hand, a
photo that could not be read, and the file read back by camtrap's reader (also MegaDetector's
own v5 output of ena24_mini, ../shared/data/ena24_mini/annotations/megadetector.json)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from camtrap.dataset.megadetector import read_megadetector
from camtrap.errors import DataError
from camtrap.outputs import Labelled, write
from camtrap.outputs.megadetector import megadetector_doc

CLASSES = ["blank", "deer", "fox", "human", "owl", "vehicle", "wolf"]
WHEN = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def labelled(failed: bool = False) -> Labelled:
    probs = pd.DataFrame(
        [["a", 0.70, 0.10, 0.05, 0.05, 0.04, 0.03, 0.03],
         ["b", 0.05, 0.05, 0.10, 0.60, 0.10, 0.05, 0.05]],
        columns=["id", *CLASSES],
    )  # fmt: skip
    photos = pd.DataFrame({"id": ["a", "b"], "filepath": ["cam1/a.jpg", "cam2/b.jpg"],
                           "site": ["cam1", "cam2"], "event": "", "timestamp": ""})  # fmt: skip
    result = Labelled(probs, photos, CLASSES, "final_swin_t_model_part1_best.pth", "ab" * 32,
                      when=WHEN)  # fmt: skip
    if failed:
        result.failed = pd.DataFrame([["c", "cam1/c.jpg", "cam1", "", "", "is truncated"]],
                                     columns=result.failed.columns)  # fmt: skip
    return result


def test_every_documented_field_from_hand_made_probabilities():
    doc = megadetector_doc(labelled(failed=True))
    info = doc["info"]
    assert info["format_version"] == "1.4"
    assert info["classifier"] == "camtrap 0.1.0 abababababab final_swin_t_model_part1_best.pth"
    assert info["detection_completion_time"] == "2026-12-03 12:00:00"
    assert doc["detection_categories"] == {"1": "animal", "2": "person", "3": "vehicle"}
    assert doc["classification_categories"] == {str(i): c for i, c in enumerate(CLASSES)}
    a, b, c = doc["images"]
    # a: mostly blank, so the whole-image detection's conf is 1 - P(blank) = 0.30; its most
    # probable non-blank class is deer: an animal. Top 5, best first, as [class id, p].
    assert a == {"file": "cam1/a.jpg", "detections": [{
        "category": "1", "conf": 0.3, "bbox": [0.0, 0.0, 1.0, 1.0],
        "classifications": [["0", 0.7], ["1", 0.1], ["2", 0.05], ["3", 0.05], ["4", 0.04]],
    }]}  # fmt: skip
    # b: human at 0.6: a person detection, conf 0.95
    assert b["detections"][0]["category"] == "2"
    assert b["detections"][0]["conf"] == pytest.approx(0.95)
    assert b["detections"][0]["classifications"][0] == ["3", 0.6]
    assert c == {"file": "cam1/c.jpg", "failure": "is truncated", "detections": None}


def test_a_model_of_every_box_gives_each_box_its_detection_and_classification():
    """data.crop=all: photo a had two boxes (a fox, then a person, by the boxes' own
    probabilities); photo b none, so its whole frame."""
    result = labelled()
    result.boxes = pd.DataFrame(
        [["a", 0.1, 0.2, 0.3, 0.4, 0.10, 0.05, 0.80, 0.02, 0.01, 0.01, 0.01],
         ["a", 0.5, 0.5, 0.2, 0.2, 0.50, 0.05, 0.05, 0.30, 0.04, 0.03, 0.03]],
        columns=["id", "x", "y", "w", "h", *CLASSES],
    )  # fmt: skip
    a, b = megadetector_doc(result)["images"]
    assert [d["bbox"] for d in a["detections"]] == [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.2, 0.2]]
    fox, person = a["detections"]
    assert (fox["category"], fox["conf"], fox["classifications"][0]) == ("1", 0.9, ["2", 0.8])
    assert (person["category"], person["conf"]) == ("2", 0.5)  # blank first, then human
    assert person["classifications"][:2] == [["0", 0.5], ["3", 0.3]]
    assert b["detections"][0]["bbox"] == [0.0, 0.0, 1.0, 1.0]


def test_the_file_is_written_whole_and_reads_back(tmp_path):
    out = tmp_path / "md.json"
    assert write(labelled(failed=True), str(out), "megadetector") == [str(out)]
    assert json.loads(out.read_text())["images"][2]["detections"] is None
    images = read_megadetector(out)
    assert [i.file for i in images] == ["cam1/a.jpg", "cam2/b.jpg", "cam1/c.jpg"]
    assert images[2].failure == "is truncated" and images[2].detections == []
    (det,) = images[1].detections
    assert (det.category, det.bbox) == ("person", (0.0, 0.0, 1.0, 1.0))
    assert det.classifications[:2] == [("human", 0.6), ("fox", 0.1)]
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_megadetectors_own_output_reads(ena24_root):
    images = read_megadetector(ena24_root / "annotations" / "megadetector.json")
    assert len(images) == 21
    first = images[0]
    assert first.file == "train_features/ENA24_02480.jpg"
    assert first.detections[0].classifications[0] == ("virginia_opossum", 0.941)


def test_a_broken_file_is_one_data_error_per_record(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"detection_categories": {"1": "animal"}, "images": [
        {"file": "a.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0, 0, 2, 1]}]},
        {"detections": []},
        {"file": "c.jpg"},
    ]}))  # fmt: skip
    with pytest.raises(DataError) as caught:
        read_megadetector(path)
    messages = [p.message for p in caught.value.problems]
    assert len(messages) == 3
    assert "images[0].detections[0] (a.jpg)" in messages[0] and "0..1" in messages[0]
    assert messages[1] == "images[1] has no 'file'"
    assert messages[2] == "images[2] (c.jpg) has neither 'detections' nor 'failure'"
