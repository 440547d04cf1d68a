"""Camtrap DP media named by s3:// URI (moto over real HTTP): fetched through the ETag-keyed
mirror, read again from the cache while unchanged, fetched again when the object changes, and a
missing object is a problem with the media table's line."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from fixtures.formats import to_camtrap_dp, write_table

from camtrap.config import DataConfig
from camtrap.dataset import load_data, validate_data
from camtrap.dataset.media import local_path

DP = DataConfig(format="camtrap-dp")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))


def test_s3_media_are_fetched_cached_and_refetched_when_changed(ena24_root, tmp_path, s3_server):
    package = to_camtrap_dp(ena24_root, tmp_path / "package")
    bucket = s3_server.new_bucket("media")
    with (package / "media.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    client = s3_server.client()
    for row in rows[:4]:
        key = f"cams/{Path(row['filePath']).name}"
        client.put_object(Bucket=bucket, Key=key, Body=(package / row["filePath"]).read_bytes())
        (package / row["filePath"]).unlink()
        row["filePath"] = f"s3://{bucket}/{key}"
    write_table(package / "media.csv", "media", rows)

    data = load_data(package, DP)
    assert len(data.frame) == 21
    assert all(local_path(row["filePath"]).is_file() for row in rows[:4])
    assert load_data(package, DP).fingerprint == data.fingerprint  # from the cache

    # The object at one URI replaced by another photo: fetched again, the fingerprint follows.
    other = next(p for p in (package / "media").glob("*.jpg"))
    client.put_object(Bucket=bucket, Key=rows[0]["filePath"].split("/", 3)[3],
                      Body=other.read_bytes())  # fmt: skip
    changed = load_data(package, DP)
    assert changed.fingerprint != data.fingerprint
    assert local_path(rows[0]["filePath"]).read_bytes() == other.read_bytes()

    client.delete_object(Bucket=bucket, Key=rows[1]["filePath"].split("/", 3)[3])
    shutil.rmtree(tmp_path / "cache")
    _, problems = validate_data(package, DP)
    assert [(p.file, p.line, p.id) for p in problems] == [("media.csv", 3, rows[1]["mediaID"])]
    assert "does not exist" in problems[0].message
