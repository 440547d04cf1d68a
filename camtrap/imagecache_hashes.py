"""What validation found of each image file, remembered by the file's identity, so that a rerun on
unchanged data neither reads nor hashes nor checks an image again.

Validation reads every image to hash it (the fingerprint and the run id follow the bytes) and to
check it: on a rerun that is most of its time. An entry here is a file's path, its identity when
it was read (inode, size, modification and change times, in ns), its sha256, and the pixel limit
it passed its check under. While a file's identity is unchanged, its bytes are those that were
hashed: any write, truncation or replacement moves the change time, which no user call can set
back (`os.utime` sets it to now). A change of any of the four means: read, hash, check again.

Two guards keep that true. The identity is taken before the file is read: a change while it is
read shows next time. And a file changed within RACY_NS of its identity being taken is not
remembered: the file system's clock ticks coarsely, so it could change again within the same
tick, unseen (git's "racily clean" rule).

The entries live in the image cache's store (`hashes.index`, JSON): the image cache's Decoder,
validation's check, reads them once and writes them at its commit, atomically, under a lock on
the store's folder, merged with what other validations wrote meanwhile. Entries of files that are
gone or changed are dropped at the next write."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from camtrap.errors import Problem
from camtrap.storage.files import atomic_write_text, folder_lock

INDEX_NAME = "hashes.index"  # not *.json: the store's manifests are
FORMAT = 1
RACY_NS = 2_000_000_000  # a clock tick is at most 10 ms; network file systems' clocks drift

# (sha256 of the file or None, the problem with it or None): what inspecting a file found
Inspection = tuple[str | None, Problem | None]


class Identity(NamedTuple):
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


class Entry(NamedTuple):
    identity: Identity
    sha256: str
    max_pixels: int  # the pixel limit it passed under: it has at most that many


class Look(NamedTuple):
    """A file's identity and whether it is settled: unchanged for RACY_NS before it was taken,
    so any later change shows in its change time."""

    identity: Identity
    settled: bool


class HashMemo:
    """The entries of one store, for one validation (threads may share it)."""

    def __init__(self, store: Path) -> None:
        self.path = Path(store) / INDEX_NAME
        self._entries = read_index(self.path)
        self._new: dict[str, Entry] = {}
        self._lock = threading.Lock()

    @property
    def dirty(self) -> bool:
        """Something was learnt that `save` has not written yet."""
        return bool(self._new)

    def inspected(
        self, path: str, max_bytes: int, max_pixels: int, inspect: Callable[[], Inspection]
    ) -> Inspection:
        """What `inspect()` finds of the image at `path`: remembered if the file is unchanged
        since it passed a check under limits no wider than these, else inspect()'s answer,
        remembered when the file passed and is settled."""
        look = _look(path)
        entry = self._new.get(path) or self._entries.get(path)
        if look is not None and entry is not None and _good(entry, look, max_bytes, max_pixels):
            return entry.sha256, None
        found = inspect()
        digest, problem = found
        if look is not None and look.settled and digest is not None and problem is None:
            with self._lock:
                self._new[path] = Entry(look.identity, digest, max_pixels)
        return found

    def save(self) -> None:
        """Write what this validation learnt (nothing new, no write), merged with the index as
        it is on disk now: other validations may have written it. Under a lock of its own, not
        the store's: a validation does not wait for a pack another process is building."""
        with self._lock:
            if not self._new:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with folder_lock(self.path.parent):
                merged = {p: e for p, e in read_index(self.path).items() if _unchanged(p, e)}
                merged.update(self._new)
                atomic_write_text(self.path, _index_text(merged))
            self._entries, self._new = merged, {}


def _good(entry: Entry, look: Look, max_bytes: int, max_pixels: int) -> bool:
    """The file is as it was when it passed, and it passed under limits no wider than these."""
    return (
        entry.identity == look.identity
        and look.identity.size <= max_bytes
        and entry.max_pixels <= max_pixels
    )


def _look(path: str) -> Look | None:
    taken = time.time_ns()
    try:
        st = os.stat(path)
    except OSError:
        return None
    identity = Identity(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    # The change time alone: the kernel sets it to now at every change (a modification time
    # may be anything: cameras with a wrong clock, copies that keep it).
    return Look(identity, st.st_ctime_ns < taken - RACY_NS)


def _unchanged(path: str, entry: Entry) -> bool:
    look = _look(path)
    return look is not None and look.identity == entry.identity


def read_index(path: Path) -> dict[str, Entry]:
    """The entries of an index file; none if it is missing, damaged or of another format (it
    is a cache: the files are then read and hashed again)."""
    try:
        info = json.loads(path.read_text())
        if info.get("format") != FORMAT:
            return {}
        return {
            name: Entry(Identity(*map(int, row[:4])), str(row[4]), int(row[5]))
            for name, row in info["files"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return {}


def _index_text(entries: dict[str, Entry]) -> str:
    files = {path: [*e.identity, e.sha256, e.max_pixels] for path, e in sorted(entries.items())}
    return json.dumps({"format": FORMAT, "files": files}, separators=(",", ":")) + "\n"
