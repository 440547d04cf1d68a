"""camtrap.demo: the Conser-vision layout, one-hot labels, allowed image sizes, determinism; and
camtrap.demo_small (`camtrap demo-data --small-animals`): small animals and their detections."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camtrap.cli import main
from camtrap.config import DataConfig
from camtrap.dataset import load_data
from camtrap.dataset.megadetector import read_megadetector
from camtrap.demo import IMAGE_SIZES, SEED_CLASSES, write_demo_dataset
from camtrap.demo_small import (
    DETECTIONS_JSON,
    FRAME_SIZE,
    detections_of,
    write_small_animals_dataset,
)

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


# --- camtrap demo-data --small-animals (camtrap.demo_small) -------------------------------------

TRUE_CONF = 0.5  # true boxes have conf >= 0.6, false ones <= 0.2: this tells them apart


def _detections(root: Path) -> dict[str, list[dict]]:
    doc = json.loads((root / DETECTIONS_JSON).read_text())
    return {image["file"]: image["detections"] for image in doc["images"]}


def _labels(root: Path) -> dict[str, str]:
    """filepath -> class name."""
    header, *rows = _rows(root / "train_labels.csv")
    paths = {row[0]: row[1] for row in _rows(root / "train_features.csv")[1:]}
    return {paths[row[0]]: header[1 + row[1:].index("1.0")] for row in rows}


@pytest.fixture(scope="module")
def small_animals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 5 per class x 8 classes = 40 frames over 2 sites (about 15 day shots each, for a median)
    root = tmp_path_factory.mktemp("small")
    return write_small_animals_dataset(root, per_class=5, seed=2, n_sites=2)


def test_small_animals_layout(small_animals: Path) -> None:
    root = small_animals
    assert sorted(p.name for p in root.iterdir()) == [
        "detections.json",
        "train_features",
        "train_features.csv",
        "train_labels.csv",
    ]
    labels = _labels(root)
    assert len(labels) == 40 and sorted(set(labels.values())) == CONSER_VISION_CLASSES
    for filepath in labels:
        with Image.open(root / filepath) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", FRAME_SIZE)


def test_detections_read_as_megadetector_output_and_the_dataset_validates_with_crops(
    small_animals: Path, capsys: pytest.CaptureFixture
) -> None:
    root = small_animals
    doc = json.loads((root / DETECTIONS_JSON).read_text())
    assert doc["info"]["format_version"] == "1.4"
    assert doc["detection_categories"] == {"1": "animal", "2": "person", "3": "vehicle"}
    images = read_megadetector(root / DETECTIONS_JSON)
    assert [image.file for image in images] == list(_labels(root))  # every image, same paths
    crops = ["--set", "data.detections=detections.json", "--set", "data.crop=best"]
    assert main(["validate", "--data", str(root), *crops]) == 0
    assert "40 images, 8 classes, no problems" in capsys.readouterr().out
    data = load_data(root, DataConfig(detections=DETECTIONS_JSON, crop="best"))
    cropped = data.frame.set_index("filepath")["crop_x"].notna()
    labels = pd.Series(_labels(root))
    animals = labels.index[labels != "blank"]
    assert cropped[animals].mean() >= 0.8  # the animals are cropped, but for misses
    assert cropped[labels.index[labels == "blank"]].mean() <= 0.4  # blanks mostly keep frames


def test_only_animals_have_true_boxes_and_they_cover_about_2_percent(small_animals: Path) -> None:
    labels, found = _labels(small_animals), _detections(small_animals)
    areas = []
    for filepath, detections in found.items():
        true = [d for d in detections if d["conf"] >= TRUE_CONF]
        assert len(true) <= 1
        if labels[filepath] == "blank":
            assert true == []
        areas += [d["bbox"][2] * d["bbox"][3] for d in true]
        assert all(d["category"] == "1" for d in detections)
    assert len(areas) >= 30  # of 35 animals: misses are few
    assert min(areas) >= 0.01 and max(areas) <= 0.04
    assert 0.015 <= float(np.mean(areas)) <= 0.025


def _pixel_box(bbox: list[float]) -> tuple[int, int, int, int]:
    """A normalised x, y, w, h box as left, top, right, bottom pixels of a FRAME_SIZE frame."""
    x, y, w, h = bbox
    width, height = FRAME_SIZE
    return round(x * width), round(y * height), round((x + w) * width), round((y + h) * height)


def _is_night(pixels: np.ndarray) -> bool:
    return float(np.abs(pixels[:, :, 0] - pixels[:, :, 1]).mean()) < 1.5  # grey: infrared


def test_the_animals_pixels_lie_inside_its_true_box(small_animals: Path) -> None:
    # A site's background is the per-pixel median of its day shots (each animal covers ~2% of
    # a frame, at random places). Where a shot differs from it, after matching the light level,
    # is the animal: those pixels must lie in its true box and fill a good part of it.
    root = small_animals
    sites = {row[1]: row[2] for row in _rows(root / "train_features.csv")[1:]}
    shots = {f: np.asarray(Image.open(root / f), dtype=np.float32) for f in sites}
    day = {f: pixels for f, pixels in shots.items() if not _is_night(pixels)}
    medians = {
        site: np.median(np.stack([p for f, p in day.items() if sites[f] == site]), axis=0)
        for site in set(sites.values())
    }
    checked = 0
    for filepath, detections in _detections(root).items():
        true = [d for d in detections if d["conf"] >= TRUE_CONF]
        if filepath not in day or not true:
            continue
        background = medians[sites[filepath]]
        pixels = day[filepath] * np.median(background) / np.median(day[filepath])
        changed = np.abs(pixels - background).max(axis=2) > 40
        left, top, right, bottom = _pixel_box(true[0]["bbox"])
        inside = np.zeros(changed.shape, dtype=bool)
        inside[top:bottom, left:right] = True
        assert changed[inside].sum() >= 0.95 * changed.sum(), filepath
        assert changed[inside].mean() >= 0.05, filepath  # the box is the animal's, not larger
        checked += 1
    assert checked >= 15


def test_false_boxes_are_mostly_below_the_threshold_and_some_animals_are_missed(
    small_animals: Path,
) -> None:
    labels, found = _labels(small_animals), _detections(small_animals)
    false = [d["conf"] for ds in found.values() for d in ds if d["conf"] < TRUE_CONF]
    assert len(false) >= 10
    assert np.mean(np.array(false) < DataConfig().detection_threshold) >= 0.8
    missed = [f for f, ds in found.items()
              if labels[f] != "blank" and all(d["conf"] < TRUE_CONF for d in ds)]  # fmt: skip
    assert 1 <= len(missed) <= 4  # of 35 animals (5% expected)


def test_the_detectors_rates_over_many_frames() -> None:
    rng = np.random.default_rng(0)
    animal = (400, 300, 520, 380)
    frames = [detections_of(animal, rng) for _ in range(2000)]
    true = [[d for d in ds if d["conf"] >= TRUE_CONF] for ds in frames]
    assert 0.03 <= np.mean([t == [] for t in true]) <= 0.07  # MISS_FRACTION, 5%
    false = [d for ds in frames for d in ds if d["conf"] < TRUE_CONF]
    below = np.mean([d["conf"] < 0.1 for d in false])
    assert 0.85 <= below <= 0.95  # one in ten a bit above the default threshold
    for d in false:  # on the background: clear of the animal (to the rounding of the bbox)
        left, top, right, bottom = _pixel_box(d["bbox"])
        clear = (right <= animal[0], left >= animal[2], bottom <= animal[1], top >= animal[3])
        assert any(clear), (d, animal)
    assert all(ds == sorted(ds, key=lambda d: -d["conf"]) for ds in frames)  # best first
    blanks = [detections_of(None, rng) for _ in range(500)]
    assert all(d["conf"] < TRUE_CONF for ds in blanks for d in ds)


def test_small_animals_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = write_small_animals_dataset(tmp_path / "a", per_class=1, seed=11)
    assert main(["demo-data", str(tmp_path / "b"), "--small-animals", "--per-class", "1",
                 "--seed", "11"]) == 0  # fmt: skip
    first_files, second_files = _files(first), _files(tmp_path / "b")
    assert len(first_files) == 3 + 8  # two CSVs, detections.json and 8 images
    assert first_files == second_files
    other = _files(write_small_animals_dataset(tmp_path / "c", per_class=1, seed=12))
    assert other[DETECTIONS_JSON] != first_files[DETECTIONS_JSON]
