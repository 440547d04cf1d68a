"""Decode every image once: the recipe's resized RGB pixels, stored as uint8 rows on disk.

The recipe has no augmentation, so an image's tensor is the same in every epoch: decoding it once
(EXIF orientation, RGB, `Resize((s, s))`, which on a PIL image is PIL's antialiased bilinear
resize) and keeping the uint8 pixels is exact. Normalisation happens later, on the device.

A store holds the packs of one image size and decode method (camtrap.imagecache_store keeps
them on disk):

    $CAMTRAP_CACHE_DIR/images/{s}px-{METHOD}-pillow{version}/
        {key}.u8     uint8 rows, shape (N, s, s, 3), C order, no header:
                     np.memmap(path, np.uint8, "r", shape=(N, s, s, 3))
        {key}.json   the manifest: shape, method, library versions, per row the image id and the
                     sha256 of the image file, and the sha256 of {key}.u8; written last (commit)
        hashes.index what validation found of each image file, by the file's identity
                     (camtrap.imagecache_hashes): a rerun on unchanged files reads none of them
        .lock        held (flock) while packs are written or removed

A dataset's pack is keyed by its content: the ids and image hashes in dataset order. Building a
pack copies the rows any other pack already holds (by image hash) and decodes only the rest, so a
retrain after 100 new photos decodes 100. Validation decodes each image it has not seen into a
`delta` pack (`Decoder`), so one run decodes each image at most once. Every pack is checked
against its manifest's sha256 before it is used (once per change of the file: see `intact`):
a truncated or altered file is rebuilt, never trained on. A full disk is one StorageError
naming the store, with no temp file left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import PIL
from PIL import Image

from camtrap.errors import DataError, Problem, StorageError
from camtrap.imagecache_hashes import HashMemo
from camtrap.imagecache_store import (
    FORMAT,
    METHOD,
    CacheEntry,
    Pack,
    commit_pack,
    fsync_file,
    intact,
    mtime,
    new_temp,
    packs,
    parse_manifest,
    read_manifest,
    remove_pack,
    store_dir,
    store_lock,
    temp_rows,
    write_at,
)
from camtrap.images import crop_pixels, open_rgb
from camtrap.storage.files import reporting_disk_full

log = logging.getLogger("camtrap")

KEEP_DATASET_PACKS = 3  # most recently used dataset packs kept per store; older ones are removed
STALE_TMP_SECONDS = 6 * 3600  # temp files older than this were left by a killed process
T = TypeVar("T")


def decode_resized(source: str | Path | bytes, size: int, name: str | None = None,
                   crop: tuple[float, ...] | None = None) -> np.ndarray:  # fmt: skip
    """The (size, size, 3) uint8 pixels the recipe's transform starts from (of the `crop`
    square, see crop_pixels, when given); DataError naming the file if it cannot be decoded."""
    return _resized(open_rgb(source, name), size, crop)


def _resized(image: Image.Image, size: int, crop: tuple[float, ...] | None) -> np.ndarray:
    if crop is not None:
        image = image.crop(crop_pixels(image.width, image.height, crop))
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def pack_key(entries: Sequence[CacheEntry], size: int) -> str:
    content = {
        "format": FORMAT,
        "size": size,
        "method": METHOD,
        "pillow": PIL.__version__,
        "images": [[e.id, e.sha256] for e in entries],
    }
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:24]


# --- validation's decode ------------------------------------------------------------------------


class Decoder:
    """The image check validation runs (`validate_dataset(check=...)`), sharing its decode with
    the cache: an image whose bytes a pack already holds is known good and not decoded again; any
    other is decoded in full (which checks it), resized, and kept for the cache. Its `memo`
    (camtrap.imagecache_hashes) remembers what validation found of each file, so a rerun does not
    read an unchanged one. `commit()` stores the kept rows as a delta pack, and the memo. Safe to
    call from several threads. A failed write (a full disk: one StorageError naming the store)
    drops the kept rows and their temp file at once; the images after it are not decoded."""

    def __init__(self, size: int, store: Path | None = None) -> None:
        self.size = size
        self.store = store if store is not None else store_dir(size)
        self.known = {h for pack in packs(self.store) for h in pack.hashes}
        self.memo = HashMemo(self.store)
        self.kept: list[CacheEntry] = []  # the rows in the temp file, not committed yet
        self.decoded = 0
        self._lock = threading.Lock()
        self._tmp: Path | None = None
        self._fd: int | None = None
        self._failure: Exception | None = None

    def __call__(self, data: bytes, digest: str, name: str) -> Problem | None:
        if digest in self.known:
            return None
        if self._failure is not None:  # this validation fails with it: decode no more
            raise type(self._failure)(*self._failure.args)
        try:
            pixels = decode_resized(data, self.size, name)
        except DataError as err:
            return err.problems[0]
        self._keep(CacheEntry(name, name, digest), pixels)
        return None

    def _keep(self, entry: CacheEntry, pixels: np.ndarray) -> None:
        with self._lock:
            self.decoded += 1
            if entry.sha256 in self.known:  # the same bytes under another name
                return
            with self._dropping_on_failure():
                if self._fd is None:
                    self._tmp = new_temp(self.store, 0, 0)
                    self._fd = os.open(self._tmp, os.O_WRONLY)
                write_at(self._fd, pixels.tobytes(), len(self.kept) * self.size * self.size * 3)
            self.known.add(entry.sha256)
            self.kept.append(entry)

    def commit(self) -> Pack | None:
        """Store the rows decoded so far as a pack (None if there were none), and the memo;
        nothing after a failed write."""
        if self._failure is not None:
            return None
        with self._dropping_on_failure():
            self.memo.save()
            if self._fd is None or self._tmp is None:
                return None
            os.fsync(self._fd)  # outside the lock: other writers need not wait for it
            os.close(self._fd)
            self._fd = None
            with store_lock(self.store):
                name = f"delta-{uuid.uuid4().hex[:16]}"
                pack = commit_pack(self._tmp, self.store, name, self.size, self.kept)
            self._tmp, self.kept = None, []  # rows decoded after this go to a new temp file
        log.info("image cache: decoded %d new images into %s", len(pack), pack.path.name)
        return pack

    @contextmanager
    def _dropping_on_failure(self) -> Iterator[None]:
        try:
            with reporting_disk_full(self.store):
                yield
        except Exception as err:
            self._failure = err
            self._drop()
            raise

    def _drop(self) -> None:
        """The kept rows are lost: remove their temp file now (not hours later, by _prune)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self.kept.clear()


# --- building a dataset's pack ------------------------------------------------------------------


@dataclass
class BuildReport:
    pack: Pack
    reused: bool  # the dataset's pack was there and intact
    copied: int  # rows copied from other packs
    decoded: int  # rows decoded now
    seconds: float


def ensure_pack(
    entries: Sequence[CacheEntry],
    size: int,
    store: Path | None = None,
    workers: int | None = None,
) -> BuildReport:
    """The pack holding `entries` in order: reused when present and intact, else built by copying
    the rows other packs hold and decoding the rest on `workers` threads (default: every core).
    Raises DataError listing every image that cannot be decoded, StorageError if the disk is
    full (no temp file left)."""
    started = time.perf_counter()
    store = store if store is not None else store_dir(size)
    key = pack_key(entries, size)
    with store_lock(store):
        existing = read_manifest(store / f"{key}.json")
        if existing is not None and intact(existing):
            os.utime(existing.manifest_path)  # most recently used
            return BuildReport(existing, True, 0, 0, time.perf_counter() - started)
        if existing is not None:
            log.warning("image cache %s is damaged; rebuilding it", existing.path)
            remove_pack(existing)
        with temp_rows(store, len(entries), size * size * 3) as tmp:
            copied, decoded = _fill(tmp, entries, size, store, workers or os.cpu_count() or 1)
            fsync_file(tmp)
            pack = commit_pack(tmp, store, key, size, entries)
        _prune(store, pack)
    seconds = time.perf_counter() - started
    log.info(
        "image cache %s: %d images, %d copied from other packs, %d decoded, %.1fs",
        pack.path, len(entries), copied, decoded, seconds,
    )  # fmt: skip
    return BuildReport(pack, False, copied, decoded, seconds)


def _sources(store: Path, wanted: set[str]) -> dict[str, tuple[Pack, int]]:
    """image sha256 -> (pack, row) for the wanted hashes, from intact packs only."""
    found: dict[str, tuple[Pack, int]] = {}
    for pack in packs(store):
        rows = {h: r for r, h in enumerate(pack.hashes) if h in wanted and h not in found}
        if not rows:
            continue
        if not intact(pack):
            log.warning("image cache %s is damaged; removing it", pack.path)
            remove_pack(pack)
            continue
        found.update({h: (pack, r) for h, r in rows.items()})
    return found


def _fill(
    tmp: Path, entries: Sequence[CacheEntry], size: int, store: Path, workers: int
) -> tuple[int, int]:
    """Write every entry's row into `tmp`: copied when a pack has it, else decoded."""
    row_bytes = size * size * 3
    sources = _sources(store, {e.sha256 for e in entries})
    to_decode = [i for i, e in enumerate(entries) if e.sha256 not in sources]
    fd = os.open(tmp, os.O_WRONLY)
    try:
        _copy_rows(fd, entries, sources, row_bytes)
        problems = _decode_rows(fd, entries, to_decode, size, workers)
    finally:
        os.close(fd)
    if problems:
        raise DataError(problems)
    return len(entries) - len(to_decode), len(to_decode)


def _copy_rows(
    fd: int, entries: Sequence[CacheEntry], sources: dict[str, tuple[Pack, int]], row_bytes: int
) -> None:
    handles: dict[Path, int] = {}
    try:
        for i, entry in enumerate(entries):
            if entry.sha256 not in sources:
                continue
            pack, row = sources[entry.sha256]
            if pack.path not in handles:
                handles[pack.path] = os.open(pack.path, os.O_RDONLY)
            data = os.pread(handles[pack.path], row_bytes, row * row_bytes)
            if len(data) != row_bytes:
                raise StorageError(f"{pack.path} ended early; delete it to rebuild the cache")
            write_at(fd, data, i * row_bytes)
    finally:
        for handle in handles.values():
            os.close(handle)


def _decode_rows(
    fd: int, entries: Sequence[CacheEntry], indices: Sequence[int], size: int, workers: int
) -> list[Problem]:
    """Decode the images at `indices` (threads: PIL releases the GIL while decoding and
    resizing), each file once for all its crops (data.crop=all), and write each row in place;
    returns the images that failed."""

    def one(rows: list[int]) -> Problem | None:
        path = entries[rows[0]].path
        try:
            image = open_rgb(path, path)
        except DataError as err:
            return err.problems[0]
        for i in rows:
            write_at(fd, _resized(image, size, entries[i].crop).tobytes(), i * size * size * 3)
        return None

    by_file: dict[str, list[int]] = {}
    for i in indices:
        by_file.setdefault(entries[i].path, []).append(i)
    return _on_threads(one, list(by_file.values()), workers)


def _on_threads(fn: Callable[[T], Problem | None], jobs: list[T], workers: int) -> list[Problem]:
    """The problems fn finds in the jobs, on `workers` threads. A job that raises (a full disk)
    cancels those not started: the build fails anyway."""
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1)))
    try:
        return [p for p in pool.map(fn, jobs) if p is not None]
    finally:
        pool.shutdown(cancel_futures=True)


def _prune(store: Path, keep: Pack) -> None:
    """Drop what the new pack makes redundant: delta packs it covers, dataset packs beyond the
    KEEP_DATASET_PACKS most recently used, and temp files a killed process left behind."""
    covered = set(keep.hashes)
    datasets = 0
    for pack in packs(store):
        if pack.path == keep.path:
            continue
        if pack.path.name.startswith("delta-"):
            if covered.issuperset(pack.hashes):
                remove_pack(pack)
            continue
        datasets += 1
        if datasets >= KEEP_DATASET_PACKS:
            remove_pack(pack)
    for tmp in store.glob(".*.tmp"):
        if time.time() - mtime(tmp) > STALE_TMP_SECONDS:
            tmp.unlink(missing_ok=True)


def adopt(store: Path, key: str, manifest_text: str, data: Path) -> Pack | None:
    """Take a pack copied from elsewhere (a mirror) into the store: its manifest's text and its
    rows in the local file `data` (moved into the store). None, and `data` removed, if the two
    do not match."""
    copied = parse_manifest(manifest_text, data)
    if copied is None or not intact(copied, seal=False):
        data.unlink(missing_ok=True)
        return None
    with store_lock(store):
        entries = [CacheEntry(i, "", h) for i, h in zip(copied.ids, copied.hashes, strict=True)]
        return commit_pack(data, store, key, copied.size, entries)


def new_download_path(store: Path) -> Path:
    """A temp file in the store to download a pack into (same file system: moved, not copied)."""
    return new_temp(store, 0, 0)


# --- reading rows -------------------------------------------------------------------------------


class RowReader:
    """Reads rows of a pack into a caller's buffer with pread: no memory map, so the process
    holds only the batches in flight, not the pages of the whole file. One file descriptor per
    process (DataLoader workers open their own)."""

    def __init__(self, pack: Pack) -> None:
        self.path = pack.path
        self.row_bytes = pack.row_bytes
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def _file(self) -> int:
        if self._pid != os.getpid() or self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[i] = row rows[i]; rows are read in file order."""
        fd = self._file()
        for i in np.argsort(rows, kind="stable"):
            view = memoryview(out[i]).cast("B")
            if os.preadv(fd, [view], int(rows[i]) * self.row_bytes) != self.row_bytes:
                raise StorageError(f"image cache {self.path} ended early; run the cache step again")

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
