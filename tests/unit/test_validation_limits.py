"""The image size limits of the config reach the validation a run does (stages.validate)."""

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from camtrap import stages
from camtrap.errors import DataError


def _images(root: Path) -> pd.DataFrame:
    """The demo's features with each image's header size and file size."""
    frame = pd.read_csv(root / "train_features.csv", dtype=str)
    sizes = [Image.open(root / path).size for path in frame["filepath"]]
    frame["pixels"] = [width * height for width, height in sizes]
    frame["bytes"] = [(root / path).stat().st_size for path in frame["filepath"]]
    return frame


def _problems(config, root: Path, cache: Path) -> list:
    with pytest.raises(DataError) as caught:
        stages.validate(config, root, cache_root=cache)
    return caught.value.problems


def test_the_configured_pixel_limit_reaches_validation(demo_root, tiny_config, tmp_path):
    images = _images(demo_root)
    # The demo has images of 360x240, 640x360 and 960x540: only the last are over 300,000.
    over = images[images["pixels"] > 300_000]
    assert set(over["pixels"]) == {960 * 540} and 0 < len(over) < len(images)
    problems = _problems(tiny_config(**{"data.max_image_pixels": 300_000}), demo_root, tmp_path)
    assert [p.id for p in problems] == list(over["id"])
    assert [p.line for p in problems] == [i + 2 for i in over.index]  # header = line 1
    assert problems[0].file == "train_features.csv"
    assert problems[0].message == (
        f"image {over['filepath'].iloc[0]} has 518,400 pixels (960 x 540), over the limit of "
        "300,000 pixels: data.max_image_pixels"
    )
    stages.validate(tiny_config(**{"data.max_image_pixels": 518_400}), demo_root, tmp_path)


def test_the_configured_file_size_limit_reaches_validation(demo_root, tiny_config, tmp_path):
    images = _images(demo_root)
    limit = int(images["bytes"].median())
    over = images[images["bytes"] > limit]
    problems = _problems(tiny_config(**{"data.max_image_bytes": limit}), demo_root, tmp_path)
    assert [p.id for p in problems] == list(over["id"])
    first = over.iloc[0]
    assert problems[0].message == (
        f"image {first['filepath']} is too large ({first['bytes']:,} bytes, over the limit of "
        f"{limit:,} bytes: data.max_image_bytes)"
    )
