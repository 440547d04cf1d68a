"""camtrap.dataset.formats: every format's reader gives the same validated table from the same
real photos (ena24_mini converted by tests/fixtures/formats.py), `auto` finds each format, and
a folder that holds none of them says what it expects."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.formats import conservision_rows, to_camtrap_dp, to_coco, to_folders

from camtrap.config import DataConfig
from camtrap.dataset import load_data, resolve_format, validate_data
from camtrap.errors import DataError

CONVERTERS = {"coco": to_coco, "camtrap-dp": to_camtrap_dp, "folders": to_folders}


@pytest.fixture(scope="module")
def converted(ena24_root, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("formats")
    return {fmt: convert(ena24_root, base / fmt) for fmt, convert in CONVERTERS.items()}


@pytest.mark.parametrize("fmt", ["conservision", *CONVERTERS])
def test_auto_finds_each_format(fmt, converted, ena24_root):
    root = ena24_root if fmt == "conservision" else converted[fmt]
    assert resolve_format(root, DataConfig()) == fmt


@pytest.mark.parametrize("fmt", list(CONVERTERS))
def test_every_reader_gives_the_conservision_labels_sites_and_image_bytes(
    fmt, converted, ena24_root
):
    reference = load_data(ena24_root, DataConfig())
    data = load_data(converted[fmt], DataConfig(format=fmt))
    assert data.classes == reference.classes
    assert len(data.frame) == 21 and data.left_out == {}
    by_sha = reference.frame.set_index("sha256")
    got = data.frame.set_index("sha256")
    assert sorted(got.index) == sorted(by_sha.index)  # the same 21 photos
    assert (got["label"] == by_sha.loc[got.index, "label"]).all()
    if fmt != "folders":  # class folders have no sites
        assert (got["site"] == by_sha.loc[got.index, "site"]).all()
    assert data.fingerprint != reference.fingerprint  # another source file, another data


def test_events_and_timestamps_come_through_where_the_format_has_them(converted, ena24_root):
    rows = {row["id"]: row for row in conservision_rows(ena24_root)}
    coco = load_data(converted["coco"], DataConfig())
    dp = load_data(converted["camtrap-dp"], DataConfig())
    for data in (coco, dp):
        first = data.frame.iloc[0]
        assert first["event"] == f"{rows[first['id']]['site']}-e0"
        assert first["timestamp"].startswith("2024-05-01")
    assert set(load_data(converted["folders"], DataConfig()).frame["event"]) == {""}


def test_an_explicit_format_that_is_not_there_lists_its_problems(converted):
    with pytest.raises(DataError, match="datapackage.json: file does not exist"):
        load_data(converted["coco"], DataConfig(format="camtrap-dp"))
    _, problems = validate_data(converted["folders"], DataConfig(format="conservision"))
    assert [p.file for p in problems] == ["train_features.csv", "train_labels.csv"]


def test_a_folder_holding_no_format_says_what_it_expects(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert resolve_format(tmp_path, DataConfig()) == "folders"
    with pytest.raises(DataError, match="needs at least 2 classes"):
        load_data(tmp_path, DataConfig())
