"""The image cache's store on disk (camtrap.imagecache decides what goes in; this module keeps it
whole): a pack's rows, manifest and seal, the store's lock, its temp files and the commit.

    $CAMTRAP_CACHE_DIR/images/{s}px-{METHOD}-pillow{version}/
        {key}.u8       uint8 rows, shape (N, s, s, 3), C order, no header
        {key}.json     the manifest, written last (the commit point)
        {key}.sealed   the identity of the .u8 file when its sha256 was last checked
        .lock          held (flock) while packs are written or removed

A full disk (or quota) while rows are written, synced or committed is one StorageError naming the
store (camtrap.storage.files.disk_full_error), and the temp file is removed at once: no half
pack is left to find or to clean up later."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import PIL

from camtrap.storage.files import atomic_write_text, file_sha256, reporting_disk_full
from camtrap.storage.uris import default_cache_root

log = logging.getLogger("camtrap")

FORMAT = 1
# What a row holds: torchvision's Resize((s, s)) on a PIL image is `image.resize((s, s),
# BILINEAR)`, antialiased by PIL; the image was EXIF-transposed and converted to RGB first.
METHOD = "exif-rgb-pil-bilinear"


class CacheEntry(NamedTuple):
    """One image of a dataset: its id, its file, the sha256 of its bytes (a crop's key:
    camtrap.samples.crop_entry)."""

    id: str
    path: str
    sha256: str
    crop: tuple[float, float, float, float, float] | None = None  # x, y, w, h (0..1), margin


@dataclass(frozen=True)
class Pack:
    """A committed pack: `rows` uint8 images of `size` x `size` x 3 in one file."""

    path: Path  # the .u8 file
    size: int
    ids: tuple[str, ...]
    hashes: tuple[str, ...]
    checksum: str  # sha256 of the .u8 file

    @property
    def manifest_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def row_bytes(self) -> int:
        return self.size * self.size * 3

    def __len__(self) -> int:
        return len(self.ids)

    def row_of(self) -> dict[str, int]:
        """image id -> row."""
        return {image_id: row for row, image_id in enumerate(self.ids)}

    def array(self) -> np.memmap:
        """The rows as a read-only memory map, shape (N, s, s, 3)."""
        return np.memmap(self.path, np.uint8, "r", shape=(len(self), self.size, self.size, 3))


def store_dir(size: int, root: str | Path | None = None) -> Path:
    """The store of `size`-pixel rows: under `root`, else $CAMTRAP_CACHE_DIR/images."""
    base = Path(root) if root is not None else default_cache_root() / "images"
    return base / f"{size}px-{METHOD}-pillow{PIL.__version__}"


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """One writer per store at a time (across processes): flock on store/.lock."""
    with _lock_file(store) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process writing the image cache %s", store)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_file(store: Path) -> IO[str]:
    with reporting_disk_full(store):  # the folder and the lock file are writes too
        store.mkdir(parents=True, exist_ok=True)
        return open(store / ".lock", "a+")  # noqa: SIM115 (the caller's `with` closes it)


# --- packs -------------------------------------------------------------------------------------


def read_manifest(path: Path) -> Pack | None:
    try:
        return parse_manifest(path.read_text(), path.with_suffix(".u8"))
    except OSError:
        return None


def parse_manifest(text: str, data_path: Path) -> Pack | None:
    """The pack a manifest describes (its rows in `data_path`); None if it is not one of ours."""
    try:
        info = json.loads(text)
        pack = Pack(
            data_path,
            int(info["size"]),
            tuple(info["ids"]),
            tuple(info["sha256"]),
            str(info["checksum"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
    ok = info.get("format") == FORMAT and info.get("method") == METHOD
    return pack if ok and len(pack.ids) == len(pack.hashes) else None


def intact(pack: Pack, seal: bool = True) -> bool:
    """The file has the manifest's length and sha256. Hashing 2.5 GB takes seconds, so a
    verified file is sealed: its identity (inode, size, modification and change times) is noted
    beside it, and while that is unchanged, no write has touched it and it is not hashed
    again. Any write, truncation or replacement changes the change time."""
    try:
        if pack.path.stat().st_size != len(pack) * pack.row_bytes:
            return False
        if seal and _seal_path(pack).exists() and _seal_path(pack).read_text() == _stamp(pack):
            return True
        if file_sha256(pack.path) != pack.checksum:
            return False
    except OSError:
        return False
    if seal:
        atomic_write_text(_seal_path(pack), _stamp(pack))
    return True


def _seal_path(pack: Pack) -> Path:
    return pack.path.with_suffix(".sealed")


def _stamp(pack: Pack) -> str:
    st = pack.path.stat()
    return f"{st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n"


def remove_pack(pack: Pack) -> None:
    pack.manifest_path.unlink(missing_ok=True)  # the manifest first: no manifest, no pack
    _seal_path(pack).unlink(missing_ok=True)
    pack.path.unlink(missing_ok=True)


def packs(store: Path) -> list[Pack]:
    """The committed packs of a store, most recently used first."""
    manifests = sorted(store.glob("*.json"), key=mtime, reverse=True)
    return [pack for pack in map(read_manifest, manifests) if pack is not None]


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def commit_pack(
    tmp: Path, store: Path, name: str, size: int, entries: Sequence[CacheEntry]
) -> Pack:
    """Make the rows written to `tmp` the pack `name`: hash the file, move it in place, then
    write the manifest (the commit point). Call with the store lock held. Should the seal or
    the manifest fail (a full disk), the rows are removed too: rows without a manifest would
    be no pack, only a file nothing ever cleans up."""
    pack = Pack(
        store / f"{name}.u8",
        size,
        tuple(e.id for e in entries),
        tuple(e.sha256 for e in entries),
        file_sha256(tmp),
    )
    _seal_path(pack).unlink(missing_ok=True)
    with reporting_disk_full(store):
        os.replace(tmp, pack.path)
    try:
        atomic_write_text(_seal_path(pack), _stamp(pack))  # just hashed: no need to again
        atomic_write_text(pack.manifest_path, json.dumps(_manifest(pack, name)) + "\n")
    except BaseException:
        remove_pack(pack)
        raise
    return pack


def _manifest(pack: Pack, name: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "delta" if name.startswith("delta-") else "dataset",
        "shape": [len(pack), pack.size, pack.size, 3],
        "dtype": "uint8",
        "size": pack.size,
        "method": METHOD,
        "versions": {"pillow": PIL.__version__, "numpy": np.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checksum": pack.checksum,
        "ids": list(pack.ids),
        "sha256": list(pack.hashes),
    }


# --- temp files and rows ------------------------------------------------------------------------


def new_temp(store: Path, rows: int, row_bytes: int) -> Path:
    """A temp file `.{uuid}.u8.tmp` in the store, `rows` rows long (sparse: no disk used yet)."""
    with reporting_disk_full(store):
        store.mkdir(parents=True, exist_ok=True)
        tmp = store / f".{uuid.uuid4().hex}.u8.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.ftruncate(fd, rows * row_bytes)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
    return tmp


@contextmanager
def temp_rows(store: Path, rows: int, row_bytes: int) -> Iterator[Path]:
    """new_temp's file, removed when the block ends (committed or not); a full disk inside is
    disk_full_error(store)."""
    tmp = new_temp(store, rows, row_bytes)
    try:
        with reporting_disk_full(store):
            yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def write_at(fd: int, data: bytes, offset: int) -> None:
    """All of `data` at `offset`: pwrite may write less than asked (a disk nearly full writes
    what fits, and the next call raises ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
