"""Folders: a local folder and a URI made alike (sync, both ways), and the fetch cache, where the
files of a dataset at an s3:// URI are kept on this machine and downloaded again only when their
ETag changed (`fetch_files`); `fetch_state` tells a cache key whether such a copy is fresh.

Nothing is written or deleted outside the local folder a sync or fetch was given: keys with `..`
(and names a fetch is asked for with `..` or an absolute path) are skipped with a warning, and
every target is checked to resolve inside it (camtrap.storage.files.inside). An S3 key with an
empty segment (`prefix//a.jpg`) is listed as it is ("/a.jpg") and lands locally without it.
Temp files a killed process left behind are removed when a fetch or sync starts."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from camtrap import storage
from camtrap.storage import s3
from camtrap.storage.files import (
    atomic_write_text,
    file_md5,
    file_sha256,
    inside,
    remove_orphan_temps,
    safe_relative,
    within,
)
from camtrap.storage.retry import FIX_MISSING, StorageNotFound, attempt
from camtrap.storage.uris import RemoteFile, child, is_remote, join, local_name, local_path

log = logging.getLogger("camtrap")

DOWNLOAD_THREADS = 16
MANIFEST_FLUSH_SECONDS = 5.0  # the fetch manifest is rewritten at most this often while fetching
MANIFEST_NAME = ".camtrap-etags.json"  # relative key -> ETag of every file fetched into a cache
CACHE_ID_NAME = ".camtrap-cache-id"  # a random token: a wiped cache gets a new one


# --- is a local copy the same file? ------------------------------------------------------------


def same(local: Path, remote: RemoteFile, other: Path | str) -> bool:
    """Whether a local file already equals `other`, a local file or the S3 object `remote` lists
    (size, then content). On S3 an ETag equal to the local MD5 (or multipart ETag) settles it
    with no request; otherwise, for a file of equal size, one HEAD reads the sha256 camtrap
    stored at upload: the ETag may be opaque (SSE-KMS, SSE-C, another part size)."""
    if not local.is_file() or local.stat().st_size != remote.size:
        return False
    if isinstance(other, Path):  # local "remote": compare content
        return file_md5(local) == file_md5(other)
    if s3.etag_matches(local, remote.etag):
        return True
    stored = _stored_sha256(other)
    return bool(stored) and stored == file_sha256(local)


def _stored_sha256(uri: str) -> str:
    try:
        return attempt(lambda: s3.stored_sha256(uri), "check", uri)
    except StorageNotFound:
        return ""


# --- folders ------------------------------------------------------------------------------------


def _ordered(names: Iterable[str], last: Sequence[str]) -> list[str]:
    """Sorted, with the names in `last` moved to the end in that order."""
    names = sorted(names)
    tail = [n for n in last if n in names]
    return [n for n in names if n not in tail] + tail


def _counterpart(uri: str | Path, rel: str) -> Path | str:
    """What `same` compares a local file with: the local file, or the S3 URI."""
    return child(uri, rel) if is_remote(uri) else local_path(uri) / rel


def sync_dir_to_uri(local_dir: str | Path, uri: str | Path, last: Sequence[str] = ()) -> list[str]:
    """Upload every file of `local_dir` whose size or content differs at `uri`; returns the
    relative paths uploaded. Files in `last` go last (a reader seeing them sees the rest too).
    Hidden temp files (`.*.tmp`) are skipped."""
    local_dir = Path(local_dir)
    if not is_remote(uri) and local_path(uri).resolve() == local_dir.resolve():
        return []
    remote = storage.list_files(uri)
    changed = []
    for path in sorted(local_dir.rglob("*")):
        rel = path.relative_to(local_dir).as_posix()
        if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        entry = remote.get(rel)
        if entry is None or not same(path, entry, _counterpart(uri, rel)):
            changed.append(rel)
    for rel in _ordered(changed, last):
        storage.upload_file(local_dir / rel, join(uri, rel))
    return _ordered(changed, last)


def sync_uri_to_dir(uri: str | Path, local_dir: str | Path, delete: bool = False) -> list[str]:
    """Download every file under `uri` that is missing or different in `local_dir`; with
    `delete`, also remove local files that are not at `uri` (an exact mirror). Returns the
    relative paths (as listed) downloaded. Keys that would land outside `local_dir` (`..`) are
    skipped with a warning; nothing is written or deleted through a link that leads outside.
    A key with an empty segment (`prefix//a.jpg`, listed as "/a.jpg") lands without it
    (`a.jpg`), unless a plain key lands there (then it is skipped with a warning)."""
    local_dir = Path(local_dir)
    if not is_remote(uri) and local_path(uri).resolve() == local_dir.resolve():
        return []
    remote = storage.list_files(uri)
    places = _local_places(remote, uri)
    remove_orphan_temps(local_dir)
    wanted = [
        rel
        for rel, name in places.items()
        if not same(local_dir / name, remote[rel], _counterpart(uri, rel))
    ]
    expected = remote if is_remote(uri) else {}
    _parallel(
        lambda rel: storage.download_file(
            child(uri, rel), inside(local_dir, places[rel]), expected.get(rel)
        ),
        wanted,
    )
    if delete and local_dir.exists():
        _delete_extra(local_dir, set(places.values()))
    return wanted


def _local_places(files: dict[str, RemoteFile], uri: str | Path) -> dict[str, str]:
    """Listed name -> its name in the local folder it is copied into, sorted by listed name;
    without the names that would leave that folder, and without those that land on the place
    of another (`prefix//a.jpg` and `prefix/a.jpg` both land on a.jpg: the plain one wins)."""
    owner: dict[str, str] = {}  # local name -> the listed name that lands there
    for rel in sorted(files, key=lambda rel: (rel != local_name(rel), rel)):  # plain ones first
        name = local_name(rel)
        if not safe_relative(name):
            log.warning(
                "skipped %s: its name leads outside the folder it is copied into", child(uri, rel)
            )
        elif name in owner:
            log.warning(
                "skipped %s: it would land on the same local file (%s) as %s",
                child(uri, rel), name, child(uri, owner[name]),
            )  # fmt: skip
        else:
            owner[name] = rel
    return {rel: name for name, rel in sorted(owner.items(), key=lambda item: item[1])}


def _delete_extra(local_dir: Path, keep: set[str]) -> None:
    """Unlink the files of `local_dir` whose names are not in `keep`; a file reached through a
    linked folder that leads outside is left alone (rglob follows such links)."""
    for path in sorted(local_dir.rglob("*"), reverse=True):
        rel = path.relative_to(local_dir).as_posix()
        if not path.is_file() or rel in keep:
            continue
        if within(local_dir, path):
            path.unlink()
        else:
            log.warning("kept %s: it lies outside %s through a link", path.resolve(), local_dir)


def _parallel(fn: Callable[[str], None], names: Sequence[str]) -> None:
    if not names:
        return
    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, len(names))) as pool:
        for future in [pool.submit(fn, name) for name in names]:
            future.result()


# --- datasets -----------------------------------------------------------------------------------


@dataclass
class FetchReport:
    """What fetch_files did: where the files are, and how many came over the network."""

    root: Path
    downloaded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # listed but not at the URI (or unsafe)
    digest: str = ""  # etags_digest of the files fetched (their size + ETag on S3)


def cache_token(cache_dir: Path) -> str:
    """A random id stored in `cache_dir`: a wiped or new cache gets a new one, so cache keys
    that include it never point at files that are gone."""
    path = Path(cache_dir) / CACHE_ID_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, uuid.uuid4().hex)
    return path.read_text().strip()


def read_manifest(cache_dir: Path) -> dict[str, str] | None:
    """The fetch manifest of `cache_dir` ({} when there is none yet), or None when it cannot be
    read: then nothing it says can be trusted."""
    path = cache_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


class _Manifest:
    """A cache's fetch manifest (relative name -> ETag of the file there), written as files
    arrive: at most every MANIFEST_FLUSH_SECONDS, and at the end. A fetch killed midway then
    downloads again only what arrived after the last write. A name is recorded only once its
    file is in place, so the manifest never vouches for a file that is not there."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / MANIFEST_NAME
        self.entries = read_manifest(cache_dir) or {}
        self._lock = threading.Lock()
        self._unsaved = 0
        self._saved_at = time.monotonic()

    def record(self, name: str, etag: str) -> None:
        with self._lock:
            self.entries[name] = etag
            self._unsaved += 1
            if time.monotonic() - self._saved_at >= MANIFEST_FLUSH_SECONDS:
                self._save()

    def flush(self) -> None:
        with self._lock:
            if self._unsaved:
                self._save()

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
        self._unsaved, self._saved_at = 0, time.monotonic()


def check_data_folder(data_uri: str) -> Path | None:
    """A local `data_uri` as a Path, or StorageNotFound when it is not a folder (checked before
    anything slow starts); None for a remote URI, whose listing tells."""
    if is_remote(data_uri):
        return None
    root = local_path(data_uri)
    if not root.is_dir():
        raise StorageNotFound(
            f"{data_uri} is not a folder — fix: give the folder that holds the dataset's "
            "CSVs, or an s3://bucket/prefix URI"
        )
    return root


def fetch_files(
    data_uri: str, names: Sequence[str], cache_dir: str | Path, listing: dict | None = None
) -> FetchReport:
    """Make `names` (paths relative to `data_uri`) present under `cache_dir`, downloading in
    parallel only those whose ETag differs from the last fetch (each download checked, see
    download_file). A local `data_uri` is used in place: nothing is copied and `root` is
    `data_uri` itself. Unsafe names (absolute, `..`) and names absent at the URI are reported in
    `missing`, not raised: validation reports them."""
    if not is_remote(data_uri):
        root = check_data_folder(data_uri)
        missing = [n for n in names if not safe_relative(n) or not (root / n).is_file()]
        present = {n: RemoteFile(*_stat_key(root / n)) for n in names if n not in missing}
        return FetchReport(
            root, reused=list(present), missing=missing, digest=storage.etags_digest(present)
        )
    cache_dir = Path(cache_dir)
    remote = listing if listing is not None else storage.list_files(data_uri)
    if not remote:
        raise StorageNotFound(f"{data_uri} holds no files — fix: {FIX_MISSING}")
    remove_orphan_temps(cache_dir)
    manifest = _Manifest(cache_dir)
    report = FetchReport(cache_dir)
    fetched: dict[str, RemoteFile] = {}
    for name in dict.fromkeys(names):
        entry = remote.get(name)
        if entry is None or not safe_relative(name):
            report.missing.append(name)
            _drop_stale_copy(cache_dir, name)
            continue
        fetched[name] = entry
        local = cache_dir / name
        fresh = manifest.entries.get(name) == entry.etag and local.is_file()
        if fresh and local.stat().st_size == entry.size:
            report.reused.append(name)
        else:
            report.downloaded.append(name)
    try:
        _parallel(
            lambda n: _fetch_one(data_uri, n, cache_dir, manifest, remote[n]), report.downloaded
        )
    finally:
        manifest.flush()
    report.digest = storage.etags_digest(fetched)
    return report


def _drop_stale_copy(cache_dir: Path, name: str) -> None:
    """A file gone from the URI must be reported missing, as on a new machine, not read from
    an old copy in the cache."""
    if safe_relative(name):
        inside(cache_dir, name).unlink(missing_ok=True)


def _stat_key(path: Path) -> tuple[int, str]:
    stat = path.stat()
    return stat.st_size, str(stat.st_mtime_ns)


def _fetch_one(
    data_uri: str, name: str, cache_dir: Path, manifest: _Manifest, entry: RemoteFile
) -> None:
    storage.download_file(child(data_uri, name), inside(cache_dir, name), entry)
    manifest.record(name, entry.etag)


# --- is a fetched copy fresh? (cache keys) ------------------------------------------------------


def fetch_state(data_uri: str, names: Sequence[str] | None, cache_dir: Path) -> str | None:
    """One string that changes exactly when the files `names` (None: every file) at `data_uri`
    do, for the cache key of a result computed from their local copies in `cache_dir`.

    Local: the sizes and modification times of the files. S3: (size, ETag) of each, one LIST
    request per 1000 files, plus the id of the local cache; None (no key: the caller runs
    uncached) while that cache holds another version of any of them. The cache folder is shared
    by every state of the URI, so after A -> B -> A at the URI, a result cached for A would name
    a folder that now holds B's files."""
    if not is_remote(data_uri):
        listed = list(storage.list_files(data_uri)) if names is None else list(names)
        return fetch_files(data_uri, listed, local_path(data_uri)).digest
    files = storage.list_files(data_uri)
    if names is not None:
        files = {n: files[n] for n in names if n in files}
    stale = stale_copies(cache_dir, files)
    if stale:
        log.info(
            "the local copy of %s holds other versions of %d files (first: %s); fetching again",
            data_uri, len(stale), stale[0],
        )  # fmt: skip
        return None
    return f"{storage.etags_digest(files)}:{cache_token(cache_dir)}"


def stale_copies(cache_dir: Path, files: dict[str, RemoteFile]) -> list[str]:
    """The names among `files` whose copy in `cache_dir` is not the version at the URI: fetched
    with another ETag (per the fetch manifest), or gone, or of another size since. Names never
    fetched into it are not stale: a fetch gets them, and what it computes is then true."""
    fetched = read_manifest(cache_dir)
    if fetched is None:
        return sorted(files)
    return [
        name
        for name, remote in sorted(files.items())
        if name in fetched and not _holds(cache_dir / name, fetched[name], remote)
    ]


def _holds(local: Path, fetched_etag: str, remote: RemoteFile) -> bool:
    """The local copy, fetched with `fetched_etag`, is still the file at the URI."""
    return fetched_etag == remote.etag and local.is_file() and local.stat().st_size == remote.size
