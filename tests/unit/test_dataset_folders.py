"""camtrap.dataset.folders: one folder per class (torchvision's ImageFolder convention)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from camtrap.config import DataConfig
from camtrap.dataset import load_data, validate_data
from camtrap.errors import DataError

FOLDERS = DataConfig(format="folders")


def _image(path: Path, colour: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 20), (colour, 90, 10)).save(path)


def test_class_folders_at_any_depth_sorted_and_only_images(tmp_path):
    _image(tmp_path / "fox" / "b.JPG")
    _image(tmp_path / "fox" / "card2" / "a.png", 60)
    _image(tmp_path / "deer" / "c.jpeg", 70)
    (tmp_path / "deer" / "notes.txt").write_text("not an image")
    _image(tmp_path / "deer" / ".hidden.jpg", 80)
    _image(tmp_path / ".thumbnails" / "x.jpg", 90)
    data = load_data(tmp_path, FOLDERS)
    assert data.classes == ["deer", "fox"]
    assert data.frame["id"].tolist() == ["deer/c.jpeg", "fox/b.JPG", "fox/card2/a.png"]
    assert data.frame["label"].tolist() == ["deer", "fox", "fox"]
    assert set(data.frame["site"]) == {""}


def test_an_empty_class_folder_and_a_broken_image_are_problems(tmp_path):
    _image(tmp_path / "fox" / "a.jpg")
    _image(tmp_path / "deer" / "b.jpg", 70)
    (tmp_path / "deer" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "owl").mkdir()
    _, problems = validate_data(tmp_path, FOLDERS)
    messages = [p.message for p in problems]
    assert messages[0] == "class folder owl/ holds no image (.jpg, .jpeg, .png)"
    assert messages[1].startswith("image deer/broken.jpg ")
    assert len(problems) == 2 and all(p.fix for p in problems)


def test_one_class_is_not_enough(tmp_path):
    _image(tmp_path / "fox" / "a.jpg")
    with pytest.raises(DataError, match=r"needs at least 2 classes, has 1 \(\['fox'\]\)"):
        load_data(tmp_path, FOLDERS)


def test_the_fingerprint_follows_the_images_and_the_classes(tmp_path):
    _image(tmp_path / "fox" / "a.jpg")
    _image(tmp_path / "deer" / "b.jpg", 70)
    first = load_data(tmp_path, FOLDERS).fingerprint
    _image(tmp_path / "deer" / "b.jpg", 200)
    second = load_data(tmp_path, FOLDERS).fingerprint
    (tmp_path / "deer").rename(tmp_path / "roe_deer")
    third = load_data(tmp_path, FOLDERS).fingerprint
    assert len({first, second, third}) == 3
