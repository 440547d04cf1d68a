"""The whole suite's settings: one compute thread per test process, the longest tests first, and
a session's own camtrap cache. The servers (S3, Prefect) the integration, fault and end-to-end
tests ask for: tests/fixtures/servers.py, registered here once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ("fixtures.servers",)


def pytest_configure(config) -> None:
    """Under pytest-xdist, in each test process (before torch is imported):
    - one compute thread for torch, here and in the processes tests start: with several test
      processes on 2 cores, torch's default (a thread per core each) made them fight over the
      cores, and a training test ran 4x slower than alone;
    - its own folder inside PREFECT_HOME (when set, as in CI: a fresh one), so two processes
      never migrate one new database at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    home = os.environ.get("PREFECT_HOME")
    if home:
        os.environ["PREFECT_HOME"] = str(Path(home) / worker)


# The longest tests (a minute or more on 2 busy cores): started first.
LONGEST_TESTS = {
    "test_camtrap_demo_on_a_fresh_machine_waits_for_a_slow_first_migration",
    "test_smoke_preset_clearly_learns_the_demo_data",
}


def pytest_collection_modifyitems(config, items) -> None:
    """The longest tests first (the longest of all, end-to-end, slow, then the rest; otherwise
    in file order). With `--dist load --maxschedchunk 1` test processes take one test at a time
    in this order as they free up, so they finish together instead of waiting on one long test
    picked up last."""

    def rank(item) -> int:
        if item.originalname in LONGEST_TESTS:
            return 0
        if item.get_closest_marker("e2e"):
            return 1
        return 2 if item.get_closest_marker("slow") else 3

    items.sort(key=rank)  # stable: file order within a rank


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> Iterator[Path]:
    """The session's camtrap cache (image cache, data and run copies): a new folder, never the
    user's ~/.cache/camtrap. Tests that need a fresh "machine" set their own (`cache_dir`)."""
    path = tmp_path_factory.mktemp("camtrap-cache")
    saved = os.environ.get("CAMTRAP_CACHE_DIR")
    os.environ["CAMTRAP_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("CAMTRAP_CACHE_DIR", None)
    else:
        os.environ["CAMTRAP_CACHE_DIR"] = saved


ENA24_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ena24_mini"


@pytest.fixture(scope="session")
def ena24_root() -> Path:
    """21 real camera-trap photos of 7 classes (../shared beside the checkout)."""
    if not ENA24_MINI.exists():
        pytest.skip(f"{ENA24_MINI} is not there (../shared beside the checkout)")
    return ENA24_MINI
