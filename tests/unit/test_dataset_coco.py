"""camtrap.dataset.coco: COCO Camera Traps edge cases, each a precise problem (file, record,
fix) reported with every other one, or a counted leave-out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from camtrap.config import DataConfig
from camtrap.dataset import load_data, validate_data
from camtrap.errors import DataError


def _image(root: Path, name: str, colour: int) -> str:
    path = root / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (colour, 80, 120)).save(path)
    return f"images/{name}"


def _coco(root: Path, annotations: list[dict], images: list[dict] | None = None) -> DataConfig:
    images = images or [
        {"id": i, "file_name": _image(root, f"{i}.png", 20 * i), "location": f"S{i % 2}",
         "seq_id": f"seq{i // 2}", "datetime": f"2024-05-01 06:00:0{i}"}
        for i in range(1, 5)
    ]  # fmt: skip
    doc = {
        "images": images,
        "categories": [
            {"id": 1, "name": "deer"},
            {"id": 2, "name": "empty"},
            {"id": 7, "name": "fox"},
        ],  # fmt: skip
        "annotations": annotations,
    }
    (root / "labels.json").write_text(json.dumps(doc))
    return DataConfig(format="coco", annotations="labels.json")


GOOD = [{"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 2},
        {"image_id": 3, "category_id": 7}, {"image_id": 4, "category_id": 1}]  # fmt: skip


def test_categories_are_the_classes_in_id_order_and_empty_is_one_of_them(tmp_path):
    data = load_data(tmp_path, _coco(tmp_path, GOOD))
    assert data.classes == ["deer", "empty", "fox"]
    frame = data.frame.set_index("id")
    assert frame.loc[["1", "2", "3", "4"], "label"].tolist() == ["deer", "empty", "fox", "deer"]
    assert frame.loc["3", ["site", "event", "timestamp"]].tolist() == [
        "S1", "seq1", "2024-05-01 06:00:03",
    ]  # fmt: skip


def test_the_same_category_twice_is_one_label_two_different_ones_are_refused(tmp_path):
    twice = [*GOOD, {"image_id": 1, "category_id": 1}]
    assert len(load_data(tmp_path, _coco(tmp_path, twice)).frame) == 4
    two = [*GOOD, {"image_id": 4, "category_id": 7}]
    with pytest.raises(DataError) as err:
        load_data(tmp_path, _coco(tmp_path, two))
    (problem,) = err.value.problems
    assert str(problem) == (
        "labels.json (id 4): images[3]: image images/4.png has 2 different labels (deer, fox) "
        "— fix: keep one label per image, or set data.multi_label=drop to leave such images out"
    )


def test_multi_label_drop_leaves_the_image_out_and_counts_it(tmp_path):
    config = _coco(tmp_path, [*GOOD, {"image_id": 4, "category_id": 7}])
    data = load_data(tmp_path, config.model_copy(update={"multi_label": "drop"}))
    assert sorted(data.frame["id"]) == ["1", "2", "3"]
    assert data.left_out == {"two or more different labels (data.multi_label=drop)": 1}


def test_an_image_without_annotations_is_left_out_and_counted(tmp_path):
    data = load_data(tmp_path, _coco(tmp_path, GOOD[:3]))
    assert sorted(data.frame["id"]) == ["1", "2", "3"] and data.left_out == {"no label": 1}


def test_every_problem_at_once_with_its_record(tmp_path):
    images = [
        {"id": 1, "file_name": _image(tmp_path, "1.png", 10)},
        {"id": 1, "file_name": _image(tmp_path, "dup.png", 20)},
        {"id": 2, "file_name": "images/missing.png"},
        {"id": 3, "file_name": "../outside.png"},
        {"file_name": _image(tmp_path, "noid.png", 30)},
    ]
    pairs = [(1, 9), (8, 1), (2, 1), (3, 2)]  # (image_id, category_id)
    annotations = [{"image_id": image, "category_id": category} for image, category in pairs]
    _, problems = validate_data(tmp_path, _coco(tmp_path, annotations, images))
    assert [p.message for p in problems] == [
        "images[1]: image id 1 is repeated (images[0])",
        "images[4]: an image needs an 'id' (a number or a string)",
        "annotations[0]: category_id 9 is not in categories",
        "annotations[1]: image_id 8 is not in images",
        "images[3]: filepath '../outside.png' leads outside the data root ('..')",
        "images[2]: image images/missing.png does not exist",
    ]
    assert all(p.file == "labels.json" and p.fix for p in problems)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "is not a COCO Camera Traps file"),
        ('{"images": [], "categories": []}', "has no 'annotations' list"),
    ],
)
def test_a_file_that_is_not_coco_camera_traps(tmp_path, text, message):
    (tmp_path / "labels.json").write_text(text)
    with pytest.raises(DataError, match=message):
        load_data(tmp_path, DataConfig(format="coco", annotations="labels.json"))


def test_a_missing_annotations_file_names_itself(tmp_path):
    with pytest.raises(DataError, match="nope.json: file does not exist"):
        load_data(tmp_path, DataConfig(format="coco", annotations="nope.json"))
