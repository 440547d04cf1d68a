"""camtrap.imagecache_store: a commit is whole or leaves nothing, temp files go when their block
ends, and a full disk anywhere in the store is one StorageError naming it. (The packs' use:
test_imagecache; a full disk under validation and the cache step: tests/faults.)"""

import errno
import os

import pytest

from camtrap import imagecache_store
from camtrap.errors import StorageError
from camtrap.imagecache_store import CacheEntry, commit_pack, intact, packs, temp_rows, write_at

FULL = "— fix: free space or set CAMTRAP_CACHE_DIR to a bigger disk"


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_commit_is_a_pack_or_nothing(tmp_path, monkeypatch):
    entries = [CacheEntry("a", "a.jpg", "1" * 64), CacheEntry("b", "b.jpg", "2" * 64)]
    with temp_rows(tmp_path, 2, 12) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        write_at(fd, bytes(range(24)), 0)
        os.close(fd)
        pack = commit_pack(tmp, tmp_path, "delta-x", 2, entries)
    assert packs(tmp_path) == [pack] and intact(pack) and pack.path.read_bytes() == bytes(range(24))
    real = imagecache_store.atomic_write_text

    def manifest_fails(path, text):
        if path.suffix == ".json":
            raise StorageError(f"disk full at {path} {FULL}")
        real(path, text)

    monkeypatch.setattr(imagecache_store, "atomic_write_text", manifest_fails)
    with pytest.raises(StorageError), temp_rows(tmp_path, 2, 12) as tmp:
        commit_pack(tmp, tmp_path, "delta-y", 2, entries)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["delta-x.u8", "delta-x.json", "delta-x.sealed"]
    )  # no rows of delta-y without their manifest, no temp file


def test_a_full_disk_in_the_store_is_one_storage_error_and_leaves_no_temp_file(
    tmp_path, monkeypatch
):
    store = tmp_path / "store"
    with pytest.raises(StorageError) as caught, temp_rows(store, 4, 12) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        monkeypatch.setattr(os, "pwrite", _no_space)
        try:
            write_at(fd, b"x" * 12, 0)
        finally:
            os.close(fd)
    assert str(caught.value) == f"disk full at {store} {FULL}"
    assert list(store.iterdir()) == []
    monkeypatch.setattr(os, "ftruncate", _no_space)  # what file.truncate calls
    with pytest.raises(StorageError, match="disk full at"):
        imagecache_store.new_temp(store, 4, 12)
    assert list(store.iterdir()) == []
