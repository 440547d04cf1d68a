"""Conditional writes for leases: create_exclusive, replace_if_match, read_with_tag, on a local
folder and on moto's S3 server (whose put_object honours If-None-Match "*" and If-Match)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from camtrap import storage
from camtrap.errors import StorageError

SHA256_LEASE_A = "cfdd1a8f80ac95cc58a31db8e57a69c78884706daeb1cefeb5b69c304f022486"
MD5_LEASE_A = "64fb818172d1d79483cb35b4867780be"  # moto's ETag of b"lease-a" (one PUT)


@pytest.fixture(params=["local", "s3"])
def lease_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "leases" / "run.lease")
    s3_server = request.getfixturevalue("s3_server")
    return f"s3://{s3_server.new_bucket('lease')}/leases/run.lease"


def test_create_exclusive_creates_once(lease_uri):
    assert storage.create_exclusive(lease_uri, b"lease-a") is True
    assert storage.create_exclusive(lease_uri, b"lease-b") is False
    data, tag = storage.read_with_tag(lease_uri)
    assert data == b"lease-a"
    assert tag == (MD5_LEASE_A if storage.is_remote(lease_uri) else SHA256_LEASE_A)


def test_replace_if_match_swaps_only_the_version_that_was_read(lease_uri):
    storage.create_exclusive(lease_uri, b"lease-a")
    _, tag = storage.read_with_tag(lease_uri)
    assert storage.replace_if_match(lease_uri, b"lease-b", tag) is True
    assert storage.read_bytes(lease_uri) == b"lease-b"
    assert storage.replace_if_match(lease_uri, b"lease-c", tag) is False  # stale tag
    assert storage.read_bytes(lease_uri) == b"lease-b"


def test_replace_if_match_on_a_missing_file_is_false(lease_uri):
    assert storage.replace_if_match(lease_uri, b"lease-a", SHA256_LEASE_A) is False
    assert not storage.exists(lease_uri)


def test_read_with_tag_of_a_missing_file_is_a_storage_error(lease_uri):
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_with_tag(lease_uri)


def _race(n: int, work) -> list:
    """Run work(i) on n threads released together; their results by i."""
    start = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        start.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.parametrize("n", [2, 8])
def test_racing_create_exclusive_has_exactly_one_winner_locally(tmp_path, n):
    path = tmp_path / "run.lease"
    for _ in range(10):  # repeated: one race could be won without any overlap
        path.unlink(missing_ok=True)
        won = _race(n, lambda i: storage.create_exclusive(str(path), f"owner-{i}".encode()))
        assert won.count(True) == 1
        assert path.read_bytes() == f"owner-{won.index(True)}".encode()
    assert os.listdir(tmp_path) == ["run.lease"]  # no temp file left


def test_racing_replace_if_match_has_exactly_one_winner_locally(tmp_path):
    path = str(tmp_path / "run.lease")
    for _ in range(10):
        storage.write_bytes(path, b"lease-a")
        _, tag = storage.read_with_tag(path)
        won = _race(
            8, lambda i, tag=tag: storage.replace_if_match(path, f"owner-{i}".encode(), tag)
        )
        assert won.count(True) == 1
        assert Path(path).read_bytes() == f"owner-{won.index(True)}".encode()


def test_racing_create_exclusive_on_s3_has_exactly_one_winner(s3_server):
    bucket = s3_server.new_bucket("lease")
    for round_ in range(5):
        uri = f"s3://{bucket}/leases/{round_}.lease"
        won = _race(2, lambda i, uri=uri: storage.create_exclusive(uri, f"owner-{i}".encode()))
        assert won.count(True) == 1
        assert storage.read_bytes(uri) == f"owner-{won.index(True)}".encode()
