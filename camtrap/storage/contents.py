"""What a data folder holds, by content: the listing a watch fingerprints (storage.etags_digest).

- S3: each object's size and ETag, from the listing alone (nothing downloaded).
- Local: each file's size and the sha256 of its bytes; a size alone misses a label row edited
  in place or an image replaced by one of the same size. The digests are kept in an index (a
  JSON file at a URI the caller names) by (inode, size, mtime_ns): an hourly check reads only
  the files that changed since the last one. A file whose mtime is within RACY_NS of the check
  is hashed every time until it is older: it may change again within one tick of the
  filesystem's clock, keeping its size and mtime. (An edit that keeps size, mtime and inode,
  as `touch -r` can fake, goes unseen, as it does for rsync and git.)
- Names under `skip` (folders inside the data folder: outputs, the watcher's own state) are
  left out: what a run or the watcher writes there is no change of the data."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from camtrap import storage
from camtrap.storage.files import file_sha256
from camtrap.storage.retry import StorageNotFound, attempt
from camtrap.storage.uris import RemoteFile, is_remote, local_path

log = logging.getLogger("camtrap")

INDEX_VERSION = 1
RACY_NS = 2 * 10**9  # coarser than any filesystem's mtime tick (FAT: 2 s)

Stamp = tuple[int, int, int]  # (inode, size, mtime_ns): the file is unchanged while it holds


def content_listing(uri: str, index_uri: str, skip: Sequence[str] = ()) -> dict[str, RemoteFile]:
    """Every file under `uri` by relative name, with a tag of its content as `etag` (S3: the
    ETag; local: the sha256, reused from the index at `index_uri` while the file's stamp holds,
    and the index rewritten, atomically, when it changed). Names inside the folders `skip`
    are left out; a `skip` that is `uri` itself, or not inside it, leaves out nothing."""
    inner = [rel for rel in (inner_name(uri, s) for s in skip) if rel]
    if is_remote(uri):
        return {k: v for k, v in storage.list_files(uri).items() if not _under(k, inner)}
    index = read_index(index_uri)
    listing: dict[str, RemoteFile] = {}
    kept: dict[str, list] = {}
    for rel, path in _walk(local_path(uri), inner):
        found = _hashed(path, index.get(rel))
        if found is None:
            continue  # deleted meanwhile: no longer there
        stamp, digest, reusable = found
        listing[rel] = RemoteFile(stamp[1], digest)
        if reusable:
            kept[rel] = [*stamp, digest]
    if kept != index:
        storage.write_text(index_uri, json.dumps({"version": INDEX_VERSION, "files": kept}))
    return listing


def inner_name(uri: str, inner: str) -> str | None:
    """`inner` relative to `uri` when it lies inside it ("runs" for /data and /data/runs; ""
    for `uri` itself), else None."""
    if is_remote(uri) != is_remote(inner):
        return None
    if is_remote(uri):
        outer, inside = str(uri).rstrip("/"), str(inner).rstrip("/")
        if inside == outer:
            return ""
        return inside.removeprefix(outer + "/") if inside.startswith(outer + "/") else None
    outer_path, inner_path = local_path(uri).resolve(), local_path(inner).resolve()
    if not inner_path.is_relative_to(outer_path):
        return None
    rel = inner_path.relative_to(outer_path).as_posix()
    return "" if rel == "." else rel


def _under(name: str, folders: Sequence[str]) -> bool:
    return any(name == f or name.startswith(f + "/") for f in folders)


def _walk(root: Path, skip: Sequence[str]) -> Iterator[tuple[str, Path]]:
    """(relative name, path) of every file under `root`, sorted, following linked folders as
    storage.list_files does (each real folder once: a link back up is no loop), not entering
    the folders `skip`."""
    seen: set[tuple[int, int]] = set()
    for top, dirs, names in os.walk(root, followlinks=True):
        here = Path(top)
        rel_top = here.relative_to(root).as_posix()
        real = here.stat()
        if (real.st_dev, real.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((real.st_dev, real.st_ino))
        prefix = "" if rel_top == "." else rel_top + "/"
        dirs[:] = sorted(d for d in dirs if not _under(prefix + d, skip))
        for name in sorted(names):
            if (here / name).is_file() and not _under(prefix + name, skip):
                yield prefix + name, here / name


def _hashed(path: Path, known: list | None) -> tuple[Stamp, str, bool] | None:
    """(stamp, sha256, whether the index may keep it) of a file, its bytes read only when the
    index's entry `known` is of another stamp; None when the file is gone."""
    try:
        stamp = _stamp(path)
        if known is not None and tuple(known[:3]) == stamp:
            return stamp, str(known[3]), True
        digest = attempt(lambda: file_sha256(path), "read", str(path))
        after = _stamp(path)
    except (FileNotFoundError, StorageNotFound):
        return None
    # Changed while read, or so recently that it may change within the same mtime: hash again.
    reusable = after == stamp and time.time_ns() - stamp[2] >= RACY_NS
    return after, digest, reusable


def _stamp(path: Path) -> Stamp:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def read_index(index_uri: str) -> dict[str, list]:
    """The index's entries (name -> [inode, size, mtime_ns, sha256]); {} when there is none or
    it can't be trusted: then every file is read once more."""
    try:
        record = json.loads(storage.read_text(index_uri))
    except StorageNotFound:
        return {}
    except ValueError:
        log.warning("%s is unreadable; hashing every file again", index_uri)
        return {}
    if not isinstance(record, dict) or record.get("version") != INDEX_VERSION:
        return {}
    files = record.get("files")
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 4}
