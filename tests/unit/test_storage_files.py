"""Local files written atomically (camtrap.storage): a crash or a full disk leaves the old file
or the new one, never half of one, with the mode a plain open() gives."""

import errno
import os
import stat

import pytest

from camtrap.errors import StorageError
from camtrap.storage import files


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.txt"
    files.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert sorted(os.listdir(target.parent)) == ["b.txt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    files.atomic_write_bytes(target, b"old")

    def crash(*args):
        raise OSError("disk full")

    # A crash between writing the temp file and renaming it must not touch the real file.
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["state.pt"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask, mode):
    # Group-readable checkpoints (0o666 less the umask), not mkstemp's 0o600.
    previous = os.umask(umask)
    try:
        files.atomic_write_bytes(tmp_path / "best.pth", b"w")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "best.pth").stat().st_mode) == mode


def test_atomic_write_fsyncs_the_file_then_the_folder_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def noting_fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def noting_replace(source, target) -> None:
        events.append("replace")
        replace(source, target)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    monkeypatch.setattr(os, "replace", noting_replace)
    files.atomic_write_bytes(tmp_path / "state.pt", b"s")
    assert events == ["fsync file", "replace", "fsync folder"]


def test_a_full_disk_is_a_storage_error_naming_the_path(tmp_path, monkeypatch):
    target = tmp_path / "state" / "last.pt"
    files.atomic_write_bytes(target, b"old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError) as info:
        files.atomic_write_bytes(target, b"new")
    assert str(info.value) == (
        f"disk full at {target} — fix: free space or set CAMTRAP_CACHE_DIR to a bigger disk"
    )
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["last.pt"]
