"""Task cache keys are honest: they follow the library's code and the local copy of the data.

In-process: the cache policies' compute_key and the data tasks' state functions are called
directly (no Prefect server), the S3 side is the session's moto server."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect import Task
from prefect.cache_policies import NO_CACHE

import tasks
from camtrap.config import DataConfig
from camtrap.storage import mirror
from tasks import data as data_tasks
from tasks import policies
from tasks.policies import RemoteState, source_digest
from tasks.refs import DataSnapshot
from tasks.runs import data_cache_dir

# --- the library's source --------------------------------------------------------------------


def _cached_tasks() -> list[Task]:
    """Every task in the tasks package whose results Prefect may reuse."""
    found = {}
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Task) and value.cache_policy is not NO_CACHE:
                found[value.name] = value
    return list(found.values())


def _key(task: Task, monkeypatch, digest: str) -> str | None:
    monkeypatch.setattr(policies, "library_digest", lambda: digest)
    if isinstance(task.cache_policy, RemoteState):  # the data's state is not the point here
        monkeypatch.setattr(task.cache_policy, "state_fn", lambda inputs: "same data")
    context = SimpleNamespace(task=task)
    return task.cache_policy.compute_key(context, {"x": 1}, {})


def test_the_data_tasks_are_the_cached_ones():
    names = {task.name for task in _cached_tasks()}
    assert {"fetch-metadata", "fetch-images", "validate-and-split"} <= names


@pytest.mark.parametrize("task", _cached_tasks(), ids=lambda task: task.name)
def test_every_cached_tasks_key_follows_the_library_source(task, monkeypatch):
    first = _key(task, monkeypatch, "library v1")
    assert first is not None
    assert _key(task, monkeypatch, "library v1") == first  # same code: a cache hit
    assert _key(task, monkeypatch, "library v2") != first  # camtrap changed: a miss


def test_source_digest_follows_every_py_file_and_nothing_else(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    first = source_digest((package,))
    assert source_digest((package,)) == first
    (package / "notes.txt").write_text("not code")
    (package / "sub" / "b.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest((package,)) == first
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert source_digest((package,)) != first
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "sub" / "b.py").rename(package / "b.py")  # the same code moved: another module
    assert source_digest((package,)) != first


def test_the_library_digest_covers_camtrap_and_tasks():
    roots = {root.name for root in policies.LIBRARY_PACKAGES}
    assert roots == {"camtrap", "tasks"}
    assert policies.library_digest() == source_digest(policies.LIBRARY_PACKAGES)


def test_no_state_means_no_key_at_all():
    policy = RemoteState(state_fn=lambda inputs: None)
    context = SimpleNamespace(task=data_tasks.fetch_metadata)
    assert policy.compute_key(context, {"x": 1}, {}) is None


# --- the local copy of the data ------------------------------------------------------------------

CSVS = ("train_features.csv", "train_labels.csv")


def _put(s3_server, bucket: str, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        s3_server.client().put_object(Bucket=bucket, Key=f"train/{name}", Body=body)


def _fetch(uri: str, names) -> Path:
    """What fetch_metadata / fetch_images do with the data: fetch into the URI's local copy."""
    return mirror.fetch_files(uri, list(names), data_cache_dir(uri)).root


def test_a_dataset_back_at_an_earlier_state_is_not_served_from_the_cache(
    s3_server, bucket, cache_dir
):
    uri = f"s3://{bucket}/train"
    version_a = {CSVS[0]: b"id,filepath,site\n", CSVS[1]: b"id,cat,dog\n"}
    version_b = {CSVS[0]: b"id,filepath,site\nb,b.jpg,s1\n", CSVS[1]: b"id,cat,dog\nb,1,0\n"}
    inputs = {"data_uri": uri, "data": DataConfig()}

    _put(s3_server, bucket, version_a)
    key_a = data_tasks._metadata_state(inputs)
    assert key_a is not None
    root = _fetch(uri, CSVS)
    assert data_tasks._metadata_state(inputs) == key_a  # a rerun on unchanged data: a cache hit

    _put(s3_server, bucket, version_b)
    assert data_tasks._metadata_state(inputs) != key_a
    _fetch(uri, CSVS)
    key_b = data_tasks._metadata_state(inputs)
    assert key_b not in (None, key_a)

    _put(s3_server, bucket, version_a)  # back to A: same bytes, same ETags as the first time
    # A's cached result names the local folder, which holds B's files now: no hit on it. No
    # key at all (the task runs uncached), as the copy is none of the data's states.
    key_again = data_tasks._metadata_state(inputs)
    assert key_again != key_a
    assert key_again is None
    assert _fetch(uri, CSVS) == root
    assert (root / CSVS[0]).read_bytes() == version_a[CSVS[0]]
    assert (
        data_tasks._metadata_state(inputs) == key_a
    )  # the folder holds A again: A's result is true

    _put(s3_server, bucket, version_b)  # and forward to B: B's result would name A's files
    assert data_tasks._metadata_state(inputs) is None
    _fetch(uri, CSVS)
    assert data_tasks._metadata_state(inputs) == key_b

    (root / CSVS[1]).unlink()  # a local copy removed behind the manifest's back
    assert data_tasks._metadata_state(inputs) is None


def test_images_back_at_an_earlier_state_are_fetched_again(s3_server, bucket, cache_dir):
    uri = f"s3://{bucket}/train"
    features = b"id,filepath,site\nx,images/x.jpg,s1\n"
    _put(s3_server, bucket, {CSVS[0]: features, CSVS[1]: b"id,a,b\nx,1,0\n"})
    root = _fetch(uri, CSVS)
    snapshot = DataSnapshot(data_uri=uri, root=str(root), csv_digest="csv")
    inputs = {"snapshot": snapshot, "data": DataConfig()}

    _put(s3_server, bucket, {"images/x.jpg": b"image A"})
    key_a = data_tasks._images_state(inputs)
    _fetch(uri, ["images/x.jpg"])
    assert data_tasks._images_state(inputs) == key_a

    _put(s3_server, bucket, {"images/x.jpg": b"image B"})
    assert data_tasks._images_state(inputs) != key_a
    _fetch(uri, ["images/x.jpg"])
    _put(s3_server, bucket, {"images/x.jpg": b"image A"})
    key_again = data_tasks._images_state(inputs)
    assert key_again != key_a  # the copy holds image B
    assert key_again is None
    _fetch(uri, ["images/x.jpg"])
    assert (root / "images" / "x.jpg").read_bytes() == b"image A"
    assert data_tasks._images_state(inputs) == key_a
