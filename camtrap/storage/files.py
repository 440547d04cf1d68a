"""Local files: written atomically, hashed, and kept inside the folder they belong to.

- A write leaves the old file or the new one, never half of one: a temp file `.{name}.XXXXXXXX.tmp`
  in the same folder, fsynced, renamed over the real name, then the folder fsynced. Temp files a
  killed process left behind are removed by `remove_orphan_temps` (fetches and syncs call it).
- A full disk (or quota) is one StorageError naming the path, whatever was being written.
- Nothing is written or deleted outside a folder through a name we did not choose: `inside(root,
  rel)` refuses `..`, absolute names and linked folders that lead elsewhere.
- Conditional creates and swaps of one small file (the local side of a lease): a hard link that
  fails if the name exists, and a compare-and-swap under a lock on the folder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from camtrap.errors import StorageError

ORPHAN_SECONDS = 600.0  # a temp file unmodified this long belongs to a killed process

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # no space; quota exceeded
# Some filesystems can't fsync a folder; the rename is then as durable as they make it.
_NO_DIR_FSYNC_ERRNOS = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


def disk_full_error(path: str | Path) -> StorageError:
    """The one message for a full disk (or quota) under `path`, whatever was being written."""
    return StorageError(
        f"disk full at {path} — fix: free space or set CAMTRAP_CACHE_DIR to a bigger disk"
    )


@contextlib.contextmanager
def reporting_disk_full(path: str | Path) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised inside into disk_full_error(path); other errors pass."""
    try:
        yield
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path) from err
        raise


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside `path`: `.{name}.XXXXXXXX.tmp` (hidden; syncs skip it)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or link in `folder` durable: the new entry is in the folder, not only the
    file's data on disk."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_DIR_FSYNC_ERRNOS:
            raise
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) with `data`, fsynced. Mode 0o666 less the umask, as a
    plain open() gives (mkstemp's 0o600 would hide checkpoints from the group)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `path` so that a crash leaves the old file or the new one, never half of one: a temp
    file beside it, fsynced, renamed over it, then the folder fsynced (so the rename survives
    power loss). A full disk raises disk_full_error naming `path`."""
    path = Path(path)
    with reporting_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(path)
        try:
            write_new_file(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (run.json's file list, the image cache)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes (what S3 reports as the ETag of a single-PUT object)."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_atomic(source: Path, target: Path) -> None:
    """Copy `source` to `target` so that `target` is the old file or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- names that stay inside a folder ------------------------------------------------------------


def safe_relative(name: str) -> bool:
    """A relative path that stays inside its root (no absolute path, no `..`)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not path.is_absolute() and ".." not in path.parts


def within(root: Path, path: Path) -> bool:
    """Whether the folder holding `path` is `root` or under it once links are resolved (the
    entry itself may be a link: replacing or unlinking a link leaves its target alone)."""
    return path.parent.resolve().is_relative_to(root.resolve())


def inside(root: str | Path, rel: str) -> Path:
    """`root / rel`, or StorageError if `rel` or a linked folder on the way leads outside. Every
    path built from a name we did not choose (an S3 key, a run id) is checked so before it is
    written or deleted."""
    path = Path(root, rel)
    if not safe_relative(rel) or not within(Path(root), path):
        raise StorageError(
            f"{rel} would be written outside {root} — fix: remove the link under {root} that "
            "leads elsewhere, or the key from the bucket"
        )
    return path


_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # temp_path_for's (and mkstemp's) names


def remove_orphan_temps(folder: str | Path, min_age: float | None = None) -> list[Path]:
    """Delete the temp files (`.{name}.XXXXXXXX.tmp`) under `folder` that no write has touched
    for `min_age` seconds (ORPHAN_SECONDS): a killed download or write left them. Younger ones
    may belong to a write in flight in another process. Returns the files removed."""
    min_age = ORPHAN_SECONDS if min_age is None else min_age
    cutoff = time.time() - min_age
    removed = []
    for top, _dirs, names in os.walk(folder):  # does not follow links
        for name in names:
            path = Path(top, name)
            if _TEMP_NAME.fullmatch(name) and _modified_before(path, cutoff):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _modified_before(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except FileNotFoundError:
        return False


# --- conditional writes of one small file -------------------------------------------------------


def link_new(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` only if nothing is there: a complete, fsynced temp file
    hard-linked to the name (atomic, and it fails if the name exists). True if this call
    created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        write_new_file(tmp, data)  # whole and on disk before it has the real name
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def swap_if_tag(path: Path, data: bytes, tag: str) -> bool:
    """Replace `path` with `data` only if its bytes still have the sha256 `tag`: compare and
    swap under an exclusive lock on the folder. False if it changed or is gone."""
    if not path.parent.is_dir():
        return False
    with folder_lock(path.parent):
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            return False
        if hashlib.sha256(current).hexdigest() != tag:
            return False
        atomic_write_bytes(path, data)
        return True


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself (no lock file to leave behind or sync). flock
    locks belong to an open file, so threads with their own open exclude each other too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
