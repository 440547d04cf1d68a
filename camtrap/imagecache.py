"""Decode every image once: the recipe's resized RGB pixels, stored as uint8 rows on disk.

The recipe has no augmentation, so an image's tensor is the same in every epoch: decoding it once
(EXIF orientation, RGB, `Resize((s, s))`, which on a PIL image is PIL's antialiased bilinear
resize) and keeping the uint8 pixels is exact. Normalisation happens later, on the device.

A store holds the packs of one image size and decode method:

    $CAMTRAP_CACHE_DIR/images/{s}px-{METHOD}-pillow{version}/
        {key}.u8     uint8 rows, shape (N, s, s, 3), C order, no header:
                     np.memmap(path, np.uint8, "r", shape=(N, s, s, 3))
        {key}.json   the manifest: shape, method, library versions, per row the image id and the
                     sha256 of the image file, and the sha256 of {key}.u8; written last (commit)
        .lock        held (flock) while packs are written or removed

A dataset's pack is keyed by its content: the ids and image hashes in dataset order. Building a
pack copies the rows any other pack already holds (by image hash) and decodes only the rest, so a
retrain after 100 new photos decodes 100. Validation decodes each image it has not seen into a
`delta` pack (`Decoder`), so one run decodes each image at most once. Every pack is checked
against its manifest's sha256 before it is used (once per change of the file: see `_intact`):
a truncated or altered file is rebuilt, never trained on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL
from PIL import Image

from camtrap.errors import DataError, Problem, StorageError
from camtrap.images import crop_pixels, open_rgb
from camtrap.storage.files import atomic_write_text, file_sha256
from camtrap.storage.uris import default_cache_root

log = logging.getLogger("camtrap")

FORMAT = 1
# What a row holds: torchvision's Resize((s, s)) on a PIL image is `image.resize((s, s),
# BILINEAR)`, antialiased by PIL; the image was EXIF-transposed and converted to RGB first.
METHOD = "exif-rgb-pil-bilinear"
KEEP_DATASET_PACKS = 3  # most recently used dataset packs kept per store; older ones are removed
STALE_TMP_SECONDS = 6 * 3600  # temp files older than this were left by a killed process


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


# --- the store -----------------------------------------------------------------------------------


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """One writer per store at a time (across processes): flock on store/.lock."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process writing the image cache %s", store)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_manifest(path: Path) -> Pack | None:
    try:
        return _parse_manifest(path.read_text(), path.with_suffix(".u8"))
    except OSError:
        return None


def _parse_manifest(text: str, data_path: Path) -> Pack | None:
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


def _intact(pack: Pack, seal: bool = True) -> bool:
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


def _remove(pack: Pack) -> None:
    pack.manifest_path.unlink(missing_ok=True)  # the manifest first: no manifest, no pack
    _seal_path(pack).unlink(missing_ok=True)
    pack.path.unlink(missing_ok=True)


def _packs(store: Path) -> list[Pack]:
    """The committed packs of a store, most recently used first."""
    manifests = sorted(store.glob("*.json"), key=_mtime, reverse=True)
    return [pack for pack in map(_read_manifest, manifests) if pack is not None]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _commit(tmp: Path, store: Path, name: str, size: int, entries: Sequence[CacheEntry]) -> Pack:
    """Make the rows written to `tmp` the pack `name`: hash the file, move it in place, then
    write the manifest (the commit point). Call with the store lock held."""
    pack = Pack(
        store / f"{name}.u8",
        size,
        tuple(e.id for e in entries),
        tuple(e.sha256 for e in entries),
        file_sha256(tmp),
    )
    _seal_path(pack).unlink(missing_ok=True)
    os.replace(tmp, pack.path)
    atomic_write_text(_seal_path(pack), _stamp(pack))  # just hashed: no need to hash it again
    info: dict[str, Any] = {
        "format": FORMAT,
        "kind": "delta" if name.startswith("delta-") else "dataset",
        "shape": [len(entries), size, size, 3],
        "dtype": "uint8",
        "size": size,
        "method": METHOD,
        "versions": {"pillow": PIL.__version__, "numpy": np.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checksum": pack.checksum,
        "ids": list(pack.ids),
        "sha256": list(pack.hashes),
    }
    atomic_write_text(pack.manifest_path, json.dumps(info) + "\n")
    return pack


def _new_tmp(store: Path, rows: int, row_bytes: int) -> Path:
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{uuid.uuid4().hex}.u8.tmp"
    with tmp.open("wb") as fh:
        fh.truncate(rows * row_bytes)
    return tmp


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- validation's decode ------------------------------------------------------------------------


class Decoder:
    """The image check validation runs (`validate_dataset(check=...)`), sharing its decode with
    the cache: an image whose bytes a pack already holds is known good and not decoded again; any
    other is decoded in full (which checks it), resized, and kept for the cache. `commit()`
    stores the kept rows as a delta pack. Safe to call from several threads."""

    def __init__(self, size: int, store: Path | None = None) -> None:
        self.size = size
        self.store = store if store is not None else store_dir(size)
        self.known = {h for pack in _packs(self.store) for h in pack.hashes}
        self.kept: list[CacheEntry] = []
        self.decoded = 0
        self._lock = threading.Lock()
        self._tmp: Path | None = None
        self._fh: Any = None

    def __call__(self, data: bytes, digest: str, name: str) -> Problem | None:
        if digest in self.known:
            return None
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
            if self._fh is None:
                self._tmp = _new_tmp(self.store, 0, 0)
                self._fh = self._tmp.open("ab")
            self._fh.write(pixels.tobytes())
            self.known.add(entry.sha256)
            self.kept.append(entry)

    def commit(self) -> Pack | None:
        """Store the rows decoded so far as a pack (None if there were none)."""
        if self._fh is None or self._tmp is None:
            return None
        self._fh.close()
        self._fh = None
        _sync(self._tmp)
        with store_lock(self.store):
            pack = _commit(self._tmp, self.store, f"delta-{uuid.uuid4().hex[:16]}", self.size,
                           self.kept)  # fmt: skip
        log.info("image cache: decoded %d new images into %s", len(self.kept), pack.path.name)
        return pack


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
    Raises DataError listing every image that cannot be decoded."""
    started = time.perf_counter()
    store = store if store is not None else store_dir(size)
    key = pack_key(entries, size)
    with store_lock(store):
        existing = _read_manifest(store / f"{key}.json")
        if existing is not None and _intact(existing):
            os.utime(existing.manifest_path)  # most recently used
            return BuildReport(existing, True, 0, 0, time.perf_counter() - started)
        if existing is not None:
            log.warning("image cache %s is damaged; rebuilding it", existing.path)
            _remove(existing)
        tmp = _new_tmp(store, len(entries), size * size * 3)
        try:
            copied, decoded = _fill(tmp, entries, size, store, workers or os.cpu_count() or 1)
            _sync(tmp)
            pack = _commit(tmp, store, key, size, entries)
        finally:
            tmp.unlink(missing_ok=True)
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
    for pack in _packs(store):
        rows = {h: r for r, h in enumerate(pack.hashes) if h in wanted and h not in found}
        if not rows:
            continue
        if not _intact(pack):
            log.warning("image cache %s is damaged; removing it", pack.path)
            _remove(pack)
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
            os.pwrite(fd, data, i * row_bytes)
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
            os.pwrite(fd, _resized(image, size, entries[i].crop).tobytes(), i * size * size * 3)
        return None

    by_file: dict[str, list[int]] = {}
    for i in indices:
        by_file.setdefault(entries[i].path, []).append(i)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(by_file) or 1))) as pool:
        return [p for p in pool.map(one, by_file.values()) if p is not None]


def _prune(store: Path, keep: Pack) -> None:
    """Drop what the new pack makes redundant: delta packs it covers, dataset packs beyond the
    KEEP_DATASET_PACKS most recently used, and temp files a killed process left behind."""
    covered = set(keep.hashes)
    datasets = 0
    for pack in _packs(store):
        if pack.path == keep.path:
            continue
        if pack.path.name.startswith("delta-"):
            if covered.issuperset(pack.hashes):
                _remove(pack)
            continue
        datasets += 1
        if datasets >= KEEP_DATASET_PACKS:
            _remove(pack)
    for tmp in store.glob(".*.tmp"):
        if time.time() - _mtime(tmp) > STALE_TMP_SECONDS:
            tmp.unlink(missing_ok=True)


def adopt(store: Path, key: str, manifest_text: str, data: Path) -> Pack | None:
    """Take a pack copied from elsewhere (a mirror) into the store: its manifest's text and its
    rows in the local file `data` (moved into the store). None, and `data` removed, if the two
    do not match."""
    copied = _parse_manifest(manifest_text, data)
    if copied is None or not _intact(copied, seal=False):
        data.unlink(missing_ok=True)
        return None
    with store_lock(store):
        entries = [CacheEntry(i, "", h) for i, h in zip(copied.ids, copied.hashes, strict=True)]
        return _commit(data, store, key, copied.size, entries)


def new_download_path(store: Path) -> Path:
    """A temp file in the store to download a pack into (same file system: moved, not copied)."""
    return _new_tmp(store, 0, 0)


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
