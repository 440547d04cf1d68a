"""Demo data on the session's S3 server, and the tiny CPU configuration flows run with here."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.tiny import TINY


@pytest.fixture(name="tiny")
def tiny_fixture() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset, 8 classes x 4 images, written once per session."""
    from camtrap.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=4, seed=0)


@pytest.fixture
def demo_uri(s3_server, demo_dir) -> str:
    """The demo dataset in a new bucket: s3://<bucket>/train."""
    return s3_server.upload_tree(demo_dir, s3_server.new_bucket("data"), "train")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """This test's local cache of data and runs (a fresh 'machine')."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(path))
    return path
