"""The demo dataset the end-to-end runs train on."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset, 8 classes x 4 images."""
    from camtrap.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=4, seed=0)
