"""camtrap.demo: the Conser-vision layout, one-hot labels, allowed image sizes, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camtrap.demo import IMAGE_SIZES, SEED_CLASSES, write_demo_dataset

CONSER_VISION_CLASSES = [
    "antelope_duiker",
    "bird",
    "blank",
    "civet_genet",
    "hog",
    "leopard",
    "monkey_prosimian",
    "rodent",
]


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 per class x 8 classes = 24 images over 4 sites
    return write_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=3, seed=7, n_sites=4)


def test_seed_classes_are_the_conser_vision_classes() -> None:
    assert list(SEED_CLASSES) == CONSER_VISION_CLASSES


def test_layout_and_counts(small_dataset: Path) -> None:
    root = small_dataset
    assert (root / "train_features.csv").is_file()
    assert (root / "train_labels.csv").is_file()
    images = sorted(p.name for p in (root / "train_features").iterdir())
    assert len(images) == 24  # 3 per class x 8 classes, nothing else (no tmp files left over)
    assert images[0] == "ZJ000000.jpg"
    assert images[-1] == "ZJ000023.jpg"
    assert sorted(p.name for p in root.iterdir()) == [
        "train_features",
        "train_features.csv",
        "train_labels.csv",
    ]


def test_features_csv(small_dataset: Path) -> None:
    header, *rows = _rows(small_dataset / "train_features.csv")
    assert header == ["id", "filepath", "site"]
    assert [row[0] for row in rows] == [f"ZJ{i:06d}" for i in range(24)]
    assert all(row[1] == f"train_features/{row[0]}.jpg" for row in rows)
    assert all((small_dataset / row[1]).is_file() for row in rows)
    sites = {row[2] for row in rows}
    assert sites <= {"S0001", "S0002", "S0003", "S0004"}  # n_sites=4
    assert len(sites) >= 2  # 24 draws over 4 sites do not all land on one


def test_labels_csv_is_one_hot_in_class_order(small_dataset: Path) -> None:
    header, *rows = _rows(small_dataset / "train_labels.csv")
    assert header == ["id", *CONSER_VISION_CLASSES]
    feature_ids = [row[0] for row in _rows(small_dataset / "train_features.csv")[1:]]
    assert [row[0] for row in rows] == feature_ids  # same ids in the same order
    for row in rows:
        values = row[1:]
        assert set(values) <= {"0.0", "1.0"}  # float text, as in the competition files
        assert values.count("1.0") == 1
    per_class = np.array([[float(v) for v in row[1:]] for row in rows]).sum(axis=0)
    assert per_class.tolist() == [3.0] * 8  # per_class=3 of every class


def test_images_are_rgb_jpegs_of_allowed_sizes(small_dataset: Path) -> None:
    allowed = set(IMAGE_SIZES)
    assert allowed == {(960, 540), (640, 360), (360, 240)}
    for path in sorted((small_dataset / "train_features").iterdir()):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"  # night shots are grey but still 3 channels
            assert image.size in allowed


def test_blank_images_differ_from_animal_images_near_the_animal_colours(tmp_path: Path) -> None:
    # A bird is drawn white (>= 200 in every channel); the day backgrounds are mid-tone greens and
    # browns. So bird images have bright pixels, blank ones (almost) none.
    root = write_demo_dataset(tmp_path, per_class=6, seed=3, classes=["bird", "blank"])
    rows = _rows(root / "train_labels.csv")[1:]
    bright = {"bird": [], "blank": []}
    for image_id, bird, _blank in rows:
        pixels = np.asarray(Image.open(root / "train_features" / f"{image_id}.jpg"))
        share = float(np.mean(pixels.min(axis=2) >= 200))
        bright["bird" if bird == "1.0" else "blank"].append(share)
    assert min(bright["bird"]) > max(bright["blank"])


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", per_class=2, seed=11, n_sites=3)
    second = write_demo_dataset(tmp_path / "b", per_class=2, seed=11, n_sites=3)
    first_files, second_files = _files(first), _files(second)
    assert len(first_files) == 2 + 16  # two CSVs and 2 x 8 images
    assert first_files == second_files


def test_rewriting_in_place_gives_identical_bytes(tmp_path: Path) -> None:
    before = _files(write_demo_dataset(tmp_path, per_class=1, seed=5))
    after = _files(write_demo_dataset(tmp_path, per_class=1, seed=5))
    assert before == after


def test_different_seed_differs(tmp_path: Path) -> None:
    first = _files(write_demo_dataset(tmp_path / "a", per_class=2, seed=1))
    second = _files(write_demo_dataset(tmp_path / "b", per_class=2, seed=2))
    assert first.keys() == second.keys()  # same ids and layout
    assert first["train_features/ZJ000000.jpg"] != second["train_features/ZJ000000.jpg"]
    assert first["train_labels.csv"] != second["train_labels.csv"]  # a different shuffle


def test_class_subset_and_string_root(tmp_path: Path) -> None:
    root = write_demo_dataset(str(tmp_path / "sub"), per_class=2, classes=["hog", "blank"])
    assert root == tmp_path / "sub"
    header = _rows(root / "train_labels.csv")[0]
    assert header == ["id", "hog", "blank"]
    assert len(list((root / "train_features").iterdir())) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ["zebra"]}, "no drawing for classes"),
        ({"classes": ["hog", "hog"]}, "unique"),
        ({"classes": []}, "non-empty"),
        ({"per_class": 0}, ">= 1"),
        ({"n_sites": 0}, ">= 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_demo_dataset(tmp_path, **kwargs)
