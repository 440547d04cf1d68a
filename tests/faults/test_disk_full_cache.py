"""A full disk under the image cache: every write of it (validation's delta rows and their commit,
a pack's copied and decoded rows) is one StorageError naming the store and the fix, the CLI exits
2 with it, and no temp file or half-committed pack is left behind. The disk fills by fault
injection: the system calls that write or flush the cache raise ENOSPC."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
from fixtures.tiny import TINY

from camtrap import cli, imagecache, stages
from camtrap.config import build_config
from camtrap.errors import StorageError

FIX = "— fix: free space or set CAMTRAP_CACHE_DIR to a bigger disk"


def _no_space(*_args: object) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def _fill_the_disk_after(monkeypatch, writes: int) -> None:
    """os.pwrite succeeds `writes` times, then the disk is full."""
    real, done = os.pwrite, []

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if len(done) >= writes:
            _no_space()
        done.append(offset)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


def _no_space_syncing(monkeypatch, name: str) -> None:
    """os.fsync of a file whose name matches `name` finds the disk full (a file system that
    allocates late reports ENOSPC at fsync)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if re.search(name, os.readlink(f"/proc/self/fd/{fd}")):
            _no_space()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _config():
    return build_config("smoke", overrides=TINY)


def _store(cache: Path) -> Path:
    return imagecache.store_dir(_config().data.image_size, cache)


def _assert_disk_full(err: StorageError, store: Path) -> None:
    assert str(err).startswith(f"disk full at {store}") and str(err).endswith(FIX), str(err)


def _leftovers(store: Path) -> list[str]:
    """Temp files, and rows without a manifest (a pack half committed)."""
    temps = [p.name for p in store.glob("*.tmp")] + [p.name for p in store.glob(".*.tmp")]
    orphans = [p.name for p in store.glob("*.u8") if not p.with_suffix(".json").exists()]
    return sorted(temps + orphans)


@pytest.mark.parametrize("writes", [0, 5])
def test_a_full_disk_while_validation_keeps_rows_is_a_storage_error(
    demo_dir, tmp_path, monkeypatch, writes
):
    _fill_the_disk_after(monkeypatch, writes)
    with pytest.raises(StorageError) as caught:
        stages.validate(_config(), demo_dir, cache_root=tmp_path)
    _assert_disk_full(caught.value, _store(tmp_path))
    assert _leftovers(_store(tmp_path)) == []


@pytest.mark.parametrize(
    "name", [r"\.u8\.tmp$", r"delta-\w+\.sealed\.\w+\.tmp$", r"delta-\w+\.json\.\w+\.tmp$"]
)
def test_a_full_disk_at_validations_commit_is_a_storage_error(
    demo_dir, tmp_path, monkeypatch, name
):
    """The rows' flush, the seal or the manifest: wherever the commit finds the disk full, no
    temp file and no rows without a manifest are left."""
    _no_space_syncing(monkeypatch, name)
    with pytest.raises(StorageError) as caught:
        stages.validate(_config(), demo_dir, cache_root=tmp_path)
    _assert_disk_full(caught.value, _store(tmp_path))
    assert _leftovers(_store(tmp_path)) == []


def test_a_full_disk_while_copying_rows_into_a_pack_is_a_storage_error(
    demo_dir, tmp_path, monkeypatch
):
    config, run_dir = _config(), tmp_path / "run"
    stages.prepare(config, stages.validate(config, demo_dir, cache_root=tmp_path), run_dir)
    deltas = sorted(p.name for p in _store(tmp_path).glob("delta-*.u8"))
    assert deltas  # the pack's rows are all copied from validation's delta pack
    _fill_the_disk_after(monkeypatch, 3)
    with pytest.raises(StorageError) as caught:
        stages.cache_images(config, run_dir, demo_dir, cache_root=tmp_path)
    _assert_disk_full(caught.value, _store(tmp_path))
    assert _leftovers(_store(tmp_path)) == []
    assert sorted(p.name for p in _store(tmp_path).glob("*.u8")) == deltas  # no new pack


def test_a_full_disk_while_decoding_rows_into_a_pack_is_a_storage_error(
    demo_dir, tmp_path, monkeypatch
):
    config, run_dir = _config(), tmp_path / "run"
    stages.prepare(config, stages.validate(config, demo_dir, cache_root=tmp_path / "a"), run_dir)
    _fill_the_disk_after(monkeypatch, 3)
    with pytest.raises(StorageError) as caught:  # another cache: every row decoded
        stages.cache_images(config, run_dir, demo_dir, cache_root=tmp_path / "b")
    _assert_disk_full(caught.value, _store(tmp_path / "b"))
    assert _leftovers(_store(tmp_path / "b")) == []
    assert list(_store(tmp_path / "b").glob("*.u8")) == []


def test_a_full_disk_under_the_cache_is_exit_2_with_the_fix(
    demo_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))
    _fill_the_disk_after(monkeypatch, 0)
    settings = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    argv = ["train", "--preset", "smoke", "--data", str(demo_dir), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, *settings]) == 2
    store = imagecache.store_dir(_config().data.image_size)
    assert capsys.readouterr().err.splitlines()[-1] == f"error: disk full at {store} {FIX}"
    assert _leftovers(store) == []
