"""Every data and output location is a URI: `s3://bucket/prefix` or a local path.

S3 goes through s3fs. The endpoint and credentials come only from the standard AWS environment or
profile (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, ...) and
never appear in messages: errors name the URI, what went wrong and how to fix it.

Local writes are atomic (a temp file in the same folder, then os.replace). Transient S3 failures
(connection resets, 5xx, timeouts) are retried per file with exponential backoff and jitter, on top
of botocore's own retries."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from camtrap.checkpoint import atomic_write_bytes, atomic_write_text
from camtrap.errors import StorageError

log = logging.getLogger("camtrap")

T = TypeVar("T")

ATTEMPTS = 3  # per-file tries on a transient error
BACKOFF_SECONDS = 0.5  # first delay; doubles each try, plus up to 50% jitter
DOWNLOAD_THREADS = 16
# s3fs uploads files below 2 x this in one PUT, larger ones in parts of this size; the local
# ETag computed below must match what S3 reports, so uploads pass the same chunk size.
CHUNK_BYTES = 50 * 2**20
MANIFEST_NAME = ".camtrap-etags.json"  # relative key -> ETag of every file fetched into a cache
CACHE_ID_NAME = ".camtrap-cache-id"  # a random token: a wiped cache gets a new one

_URL = re.compile(r"https?://\S+")
_ACCESS_KEY = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b")

_FIX_MISSING = "check the bucket name and prefix (aws s3 ls URI lists what is there)"
_FIX_DENIED = (
    "check the AWS credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the "
    "bucket policy"
)
_FIX_NETWORK = (
    "check that the S3 endpoint is reachable (AWS_ENDPOINT_URL for a non-AWS S3) and retry"
)


class StorageNotFound(StorageError):
    """The URI names nothing: a wrong bucket, prefix or key. Retrying does not help."""


# --- URIs ---------------------------------------------------------------------------------------


def is_remote(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def _local(uri: str | Path) -> Path:
    text = str(uri)
    return Path(text.removeprefix("file://"))


def join(uri: str | Path, *parts: str) -> str:
    """`join("s3://b/runs", "part1", "x")` -> "s3://b/runs/part1/x"; local paths join as paths."""
    if not is_remote(uri):
        return str(_local(uri).joinpath(*parts))
    text = str(uri).rstrip("/")
    clean = [p.strip("/") for p in parts if p.strip("/")]
    return "/".join([text, *clean])


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    bucket, _, key = str(uri).removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{uri} names no bucket; write it as s3://bucket/prefix")
    return bucket, key.strip("/")


CACHE_DIR_ENV = "CAMTRAP_CACHE_DIR"


def default_cache_root() -> Path:
    """Local copies of data and runs: $CAMTRAP_CACHE_DIR, else ~/.cache/camtrap."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "camtrap")


def cache_path_for(uri: str, cache_root: Path) -> Path:
    """A readable, unique local folder for `uri` under `cache_root` (s3://b/p -> root/s3/b/p)."""
    bucket, key = split_s3(uri)
    parts = [p for p in PurePosixPath(key).parts if p not in ("", ".", "..")]
    return Path(cache_root, "s3", bucket, *parts)


def safe_relative(name: str) -> bool:
    """A relative path that stays inside its root (no absolute path, no `..`)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not path.is_absolute() and ".." not in path.parts


# --- errors -------------------------------------------------------------------------------------


def _redact(text: str) -> str:
    """Drop endpoints and access key ids from a library's error text."""
    return _ACCESS_KEY.sub("<key>", _URL.sub("<endpoint>", text))


_TRANSIENT_ERRNOS = {errno.EIO, getattr(errno, "EREMOTEIO", errno.EIO), errno.EBUSY, None}
_TRANSIENT_NAMES = ("Connect", "Timeout", "IncompleteRead", "Streaming", "Payload", "Throttl")


def _is_transient(err: BaseException) -> bool:
    """Worth another try: timeouts, dropped connections, S3 5xx / SlowDown (s3fs: OSError EIO)."""
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError | StorageError):
        return False
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    if any(word in type(err).__name__ for word in _TRANSIENT_NAMES):
        return True
    return type(err) is OSError and err.errno in _TRANSIENT_ERRNOS


def _storage_error(err: BaseException, what: str, uri: str) -> StorageError:
    if isinstance(err, StorageError):
        return err
    if isinstance(err, FileNotFoundError):
        fix = _FIX_MISSING if is_remote(uri) else "check the path"
        return StorageNotFound(f"cannot {what} {uri}: it does not exist — fix: {fix}")
    if isinstance(err, PermissionError) or "AccessDenied" in str(err) or "Forbidden" in str(err):
        return StorageError(f"cannot {what} {uri}: access denied — fix: {_FIX_DENIED}")
    if "NoCredentials" in type(err).__name__ or "credentials" in str(err).lower():
        return StorageError(f"cannot {what} {uri}: no AWS credentials found — fix: {_FIX_DENIED}")
    if _is_transient(err):
        name = type(err).__name__
        return StorageError(
            f"cannot {what} {uri}: {name} after {ATTEMPTS} tries — fix: {_FIX_NETWORK}"
        )
    detail = _redact(str(err)) or type(err).__name__
    return StorageError(f"cannot {what} {uri}: {detail} — fix: {_FIX_MISSING}")


def _attempt(fn: Callable[[], T], what: str, uri: str) -> T:
    """Run `fn`, retrying transient failures; any failure becomes a StorageError naming `uri`.

    The original exception is not chained (`from None`): botocore's texts can hold the endpoint."""
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as err:
            if attempt >= ATTEMPTS or not _is_transient(err):
                error = _storage_error(err, what, uri)
            else:
                error = None
                delay = BACKOFF_SECONDS * 2 ** (attempt - 1) * (1 + random.random() / 2)
                log.warning(
                    "%s %s failed (%s), try %d/%d in %.1fs",
                    what, uri, type(err).__name__, attempt + 1, ATTEMPTS, delay,
                )  # fmt: skip
        if error is not None:
            raise error from None
        time.sleep(delay)
        attempt += 1


# --- the S3 filesystem --------------------------------------------------------------------------


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> Any:
    """The s3fs filesystem for the current AWS environment (cached per endpoint by fsspec)."""
    import s3fs

    # The endpoint is passed explicitly (s3fs would also read it from the environment) so that
    # fsspec's instance cache gives a new filesystem when the environment changes.
    return s3fs.S3FileSystem(endpoint_url=_endpoint(), use_listings_cache=False)


def _s3_path(uri: str) -> str:
    return str(uri).removeprefix("s3://")


# --- single objects -----------------------------------------------------------------------------


def exists(uri: str | Path) -> bool:
    if not is_remote(uri):
        return _local(uri).exists()
    return _attempt(lambda: s3_filesystem().exists(_s3_path(str(uri))), "check", str(uri))


def read_bytes(uri: str | Path) -> bytes:
    if not is_remote(uri):
        return _attempt(lambda: _local(uri).read_bytes(), "read", str(uri))
    return _attempt(lambda: s3_filesystem().cat_file(_s3_path(str(uri))), "read", str(uri))


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | Path, data: bytes) -> None:
    if not is_remote(uri):
        _attempt(lambda: atomic_write_bytes(_local(uri), data), "write", str(uri))
        return
    _attempt(lambda: s3_filesystem().pipe_file(_s3_path(str(uri)), data), "write", str(uri))


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove(uri: str | Path) -> None:
    """Delete one file; a file that is already gone is fine."""
    if not is_remote(uri):
        _attempt(lambda: _local(uri).unlink(missing_ok=True), "delete", str(uri))
        return

    def rm() -> None:
        with contextlib.suppress(FileNotFoundError):
            s3_filesystem().rm_file(_s3_path(str(uri)))

    _attempt(rm, "delete", str(uri))


def upload_file(path: str | Path, uri: str | Path) -> None:
    """Copy a local file to `uri` (S3: one PUT below 100 MB, parts of CHUNK_BYTES above)."""
    path = Path(path)
    if not is_remote(uri):
        _attempt(lambda: _copy_atomic(path, _local(uri)), "write", str(uri))
        return
    _attempt(
        lambda: s3_filesystem().put_file(str(path), _s3_path(str(uri)), chunksize=CHUNK_BYTES),
        "upload to",
        str(uri),
    )


def download_file(uri: str | Path, path: str | Path) -> None:
    """Copy `uri` to a local file atomically: a crash never leaves half a file under `path`."""
    path = Path(path)
    if not is_remote(uri):
        _attempt(lambda: _copy_atomic(_local(uri), path), "read", str(uri))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")

    def get() -> None:
        try:
            s3_filesystem().get_file(_s3_path(str(uri)), str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    _attempt(get, "download", str(uri))


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- listings and ETags -------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    size: int
    etag: str  # S3: the object's ETag without quotes; local: "" (compared by content)


def list_files(uri: str | Path) -> dict[str, RemoteFile]:
    """Every file under `uri`, by path relative to it. An absent prefix gives {}; an absent
    bucket raises StorageError."""
    if not is_remote(uri):
        root = _local(uri)
        if not root.is_dir():
            return {}
        return {
            p.relative_to(root).as_posix(): RemoteFile(p.stat().st_size, "")
            for p in root.rglob("*")
            if p.is_file()
        }
    bucket, key = split_s3(str(uri))
    prefix = f"{bucket}/{key}" if key else bucket

    def find() -> dict[str, Any]:
        return s3_filesystem().find(prefix, detail=True)

    found = _attempt(find, "list", str(uri))
    files: dict[str, RemoteFile] = {}
    for name, info in found.items():
        if info.get("type") == "directory" or name == prefix:
            continue
        rel = name[len(prefix) :].lstrip("/")
        files[rel] = RemoteFile(int(info.get("size") or 0), str(info.get("ETag", "")).strip('"'))
    return files


def etags_digest(files: dict[str, RemoteFile]) -> str:
    """One hash over every (path, size, ETag): changes when any file changes on S3."""
    body = json.dumps({k: [v.size, v.etag] for k, v in sorted(files.items())}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def local_etag(path: Path, chunk: int = CHUNK_BYTES) -> str:
    """The ETag S3 gives `path` when upload_file sends it: the md5 of the content below two
    chunks (one PUT), else the md5 of the parts' md5s and "-<parts>" (a multipart upload)."""
    if path.stat().st_size < 2 * chunk:
        return _file_md5(path)
    digests = []
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digests.append(hashlib.md5(block, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(digests)}"


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same(local: Path, remote: RemoteFile, remote_path: Path | None = None) -> bool:
    """Whether a local file already equals a remote one (size, then content)."""
    if not local.is_file() or local.stat().st_size != remote.size:
        return False
    if remote_path is not None:  # local "remote": compare content
        return _file_md5(local) == _file_md5(remote_path)
    if "-" in remote.etag:
        return local_etag(local) == remote.etag
    return _file_md5(local) == remote.etag


# --- folders ------------------------------------------------------------------------------------


def _ordered(names: Iterable[str], last: Sequence[str]) -> list[str]:
    """Sorted, with the names in `last` moved to the end in that order."""
    names = sorted(names)
    tail = [n for n in last if n in names]
    return [n for n in names if n not in tail] + tail


def sync_dir_to_uri(
    local_dir: str | Path, uri: str | Path, last: Sequence[str] = ("state/last.pt", "run.json")
) -> list[str]:
    """Upload every file of `local_dir` whose size or content differs at `uri`; returns the
    relative paths uploaded. Files in `last` go last (a reader seeing them sees the rest too).
    Hidden temp files (`.*.tmp`) are skipped."""
    local_dir = Path(local_dir)
    if not is_remote(uri) and _local(uri).resolve() == local_dir.resolve():
        return []
    remote = list_files(uri)
    local_root = None if is_remote(uri) else _local(uri)
    changed = []
    for path in sorted(local_dir.rglob("*")):
        rel = path.relative_to(local_dir).as_posix()
        if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        entry = remote.get(rel)
        if entry is None or not _same(path, entry, local_root / rel if local_root else None):
            changed.append(rel)
    for rel in _ordered(changed, last):
        upload_file(local_dir / rel, join(uri, rel))
    return _ordered(changed, last)


def sync_uri_to_dir(uri: str | Path, local_dir: str | Path, delete: bool = False) -> list[str]:
    """Download every file under `uri` that is missing or different in `local_dir`; with
    `delete`, also remove local files that are not at `uri` (an exact mirror). Returns the
    relative paths downloaded."""
    local_dir = Path(local_dir)
    if not is_remote(uri) and _local(uri).resolve() == local_dir.resolve():
        return []
    remote = list_files(uri)
    remote_root = None if is_remote(uri) else _local(uri)
    wanted = [
        rel
        for rel, entry in sorted(remote.items())
        if not _same(local_dir / rel, entry, remote_root / rel if remote_root else None)
    ]
    _parallel(lambda rel: download_file(join(uri, rel), local_dir / rel), wanted)
    if delete and local_dir.exists():
        for path in sorted(local_dir.rglob("*"), reverse=True):
            rel = path.relative_to(local_dir).as_posix()
            if path.is_file() and rel not in remote:
                path.unlink()
    return wanted


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


def _read_manifest(cache_dir: Path) -> dict[str, str]:
    path = cache_dir / MANIFEST_NAME
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def fetch_files(
    data_uri: str, names: Sequence[str], cache_dir: str | Path, listing: dict | None = None
) -> FetchReport:
    """Make `names` (paths relative to `data_uri`) present under `cache_dir`, downloading in
    parallel only those whose ETag differs from the last fetch. A local `data_uri` is used in
    place: nothing is copied and `root` is `data_uri` itself. Unsafe names (absolute, `..`) and
    names absent at the URI are reported in `missing`, not raised: validation reports them."""
    if not is_remote(data_uri):
        root = _local(data_uri)
        if not root.is_dir():
            raise StorageNotFound(
                f"{data_uri} is not a folder — fix: give the folder that holds the dataset's "
                "CSVs, or an s3://bucket/prefix URI"
            )
        missing = [n for n in names if not safe_relative(n) or not (root / n).is_file()]
        present = {n: RemoteFile(*_stat_key(root / n)) for n in names if n not in missing}
        return FetchReport(
            root, reused=list(present), missing=missing, digest=etags_digest(present)
        )
    cache_dir = Path(cache_dir)
    remote = listing if listing is not None else list_files(data_uri)
    if not remote:
        raise StorageNotFound(f"{data_uri} holds no files — fix: {_FIX_MISSING}")
    manifest = _read_manifest(cache_dir)
    report = FetchReport(cache_dir)
    fetched: dict[str, RemoteFile] = {}
    for name in dict.fromkeys(names):
        entry = remote.get(name)
        if entry is None or not safe_relative(name):
            report.missing.append(name)
            continue
        fetched[name] = entry
        local = cache_dir / name
        fresh = manifest.get(name) == entry.etag and local.is_file()
        if fresh and local.stat().st_size == entry.size:
            report.reused.append(name)
        else:
            report.downloaded.append(name)
    try:
        _parallel(lambda n: _fetch_one(data_uri, n, cache_dir, manifest, remote), report.downloaded)
    finally:
        atomic_write_text(cache_dir / MANIFEST_NAME, json.dumps(manifest, sort_keys=True))
    report.digest = etags_digest(fetched)
    return report


def _stat_key(path: Path) -> tuple[int, str]:
    stat = path.stat()
    return stat.st_size, str(stat.st_mtime_ns)


def _fetch_one(
    data_uri: str, name: str, cache_dir: Path, manifest: dict[str, str], remote: dict
) -> None:
    download_file(join(data_uri, name), cache_dir / name)
    manifest[name] = remote[name].etag  # dict item assignment is atomic under the GIL


def fetch_dataset(
    data_uri: str,
    cache_dir: str | Path,
    features_csv: str = "train_features.csv",
    labels_csv: str = "train_labels.csv",
) -> Path:
    """The local root of a Conser-vision dataset at `data_uri`: the two CSVs and every image that
    train_features.csv lists, fetched into `cache_dir` (ETag-keyed; see fetch_files)."""
    meta = fetch_files(data_uri, [features_csv, labels_csv], cache_dir)
    if meta.missing:
        raise StorageNotFound(
            f"{join(data_uri, meta.missing[0])} does not exist — fix: put {features_csv} and "
            f"{labels_csv} at {data_uri}, or set data.features_csv / data.labels_csv"
        )
    fetch_files(data_uri, image_names(meta.root / features_csv), cache_dir)
    return meta.root


def image_names(features_csv: Path) -> list[str]:
    """The `filepath` column of a features CSV (empty when the column is absent: validation
    reports that with the line and the fix)."""
    import csv

    with Path(features_csv).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        return [row["filepath"].strip() for row in reader if (row.get("filepath") or "").strip()]
