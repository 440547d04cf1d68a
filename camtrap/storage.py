"""Every data and output location is a URI: `s3://bucket/prefix` or a local path.

S3 goes through s3fs. The endpoint and credentials come only from the standard AWS environment or
profile (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, ...) and
never appear in messages: errors name the URI, what went wrong and how to fix it.

Guarantees:
- Local writes are atomic (a temp file `.{name}.XXXXXXXX.tmp` in the same folder, then os.replace);
  temp files a killed process left behind are removed when a fetch or sync starts.
- Nothing is written or deleted outside the local folder a sync or fetch was given: keys with `..`
  or an absolute path are skipped with a warning, and every target is checked to resolve inside it.
- A download is accepted only if it is the object that was listed, whole: the GET is pinned to the
  listed ETag (If-Match), and the bytes are checked against the size and, where the ETag is an MD5
  of the content, the MD5 (else the sha256 camtrap stored at upload). A mismatch is retried.
- Uploads store the file's sha256 as object metadata (x-amz-meta-camtrap-sha256), so an unchanged
  file is recognised even where the ETag is not an MD5 (SSE-KMS, SSE-C, other part sizes).
- One retry layer below Prefect: botocore's and s3fs's retries are off, and camtrap retries
  transient failures (connection resets, 5xx, timeouts) with exponential backoff and jitter within
  a time budget per call ($CAMTRAP_S3_RETRY_SECONDS, default 60 s).
- A full disk is reported as such, with the path, not as a storage-side problem.
- Conditional writes for leases: create_exclusive, replace_if_match and read_with_tag (S3:
  If-None-Match / If-Match; local: hard link / a lock on the folder)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

from camtrap.errors import StorageError

log = logging.getLogger("camtrap")

T = TypeVar("T")

RETRY_SECONDS_ENV = "CAMTRAP_S3_RETRY_SECONDS"
RETRY_SECONDS = 60.0  # default time budget of one call's tries on transient errors
BACKOFF_SECONDS = 0.5  # first delay; doubles each try up to MAX_BACKOFF_SECONDS
MAX_BACKOFF_SECONDS = 15.0
JITTER = 0.5  # each delay is stretched by up to this fraction, so clients don't retry in step
DOWNLOAD_THREADS = 16
MANIFEST_FLUSH_SECONDS = 5.0  # the fetch manifest is rewritten at most this often while fetching
ORPHAN_SECONDS = 600.0  # a temp file unmodified this long belongs to a killed process
SHA256_META = "camtrap-sha256"  # S3 user metadata (x-amz-meta-camtrap-sha256) set by uploads
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


# --- local files, written atomically --------------------------------------------------------------

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
# By type name; with s3fs's retries off, also those it retried: botocore's HTTPClientError (an
# answer aiohttp could not parse) and ResponseParserError (S3 sometimes throttles with bad XML).
_TRANSIENT_NAMES = (
    "Connect", "Timeout", "IncompleteRead", "Streaming", "Payload", "Throttl", "Checksum",
    "HTTPClientError", "ResponseParser",
)  # fmt: skip
_FIX_CHANGED = "run again: the next run lists the new version (nothing was written from this one)"


class _TransferMismatch(Exception):
    """The bytes that arrived are not the object's (size, MD5 or sha256 differ): worth a retry."""


def _is_transient(err: BaseException) -> bool:
    """Worth another try: timeouts, dropped connections, S3 5xx / SlowDown (s3fs: OSError EIO),
    bytes that don't match their object."""
    if isinstance(err, _TransferMismatch):
        return True
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError | StorageError):
        return False
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    if any(word in type(err).__name__ for word in _TRANSIENT_NAMES):
        return True
    return type(err) is OSError and err.errno in _TRANSIENT_ERRNOS


def _precondition_failed(err: BaseException) -> bool:
    """S3 answered 412: an If-Match / If-None-Match did not hold (s3fs turns it into an OSError
    or FileExistsError and keeps botocore's error as the cause)."""
    if isinstance(err, FileExistsError | _ChangedSinceListed):
        return True
    response = getattr(err.__cause__, "response", None) or getattr(err, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return response.get("Error", {}).get("Code") == "PreconditionFailed" or status == 412


def _storage_error(
    err: BaseException, what: str, uri: str, tries: int = 1, local: Path | None = None
) -> StorageError:
    if isinstance(err, StorageError):
        return err
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        where = local or err.filename or uri
        return StorageError(f"cannot {what} {uri}: {disk_full_error(where)}")
    if isinstance(err, FileNotFoundError):
        fix = _FIX_MISSING if is_remote(uri) else "check the path"
        return StorageNotFound(f"cannot {what} {uri}: it does not exist — fix: {fix}")
    if isinstance(err, PermissionError) or "AccessDenied" in str(err) or "Forbidden" in str(err):
        return StorageError(f"cannot {what} {uri}: access denied — fix: {_FIX_DENIED}")
    if "NoCredentials" in type(err).__name__ or "credentials" in str(err).lower():
        return StorageError(f"cannot {what} {uri}: no AWS credentials found — fix: {_FIX_DENIED}")
    if _precondition_failed(err):
        return StorageError(
            f"cannot {what} {uri}: it changed since it was listed — fix: {_FIX_CHANGED}"
        )
    if isinstance(err, _TransferMismatch):
        return StorageError(
            f"cannot {what} {uri}: {err} (on each of {tries} tries) — fix: check that nothing "
            "rewrites it meanwhile and that the network path does not alter data, then retry"
        )
    if _is_transient(err):
        name = type(err).__name__
        return StorageError(
            f"cannot {what} {uri}: {name} after {tries} tries — fix: {_FIX_NETWORK}"
        )
    detail = _redact(str(err)) or type(err).__name__
    return StorageError(f"cannot {what} {uri}: {detail} — fix: {_FIX_MISSING}")


# Time and jitter as module attributes, so tests can run the retry schedule on a fake clock.
_clock = time.monotonic
_sleep = time.sleep
_jitter = random.Random()  # camtrap's own generator: never the global one


def retry_budget() -> float:
    """Seconds one call may spend retrying: $CAMTRAP_S3_RETRY_SECONDS, else RETRY_SECONDS."""
    text = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not text:
        return RETRY_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also catches nan
        raise StorageError(
            f"{RETRY_SECONDS_ENV}={text!r} is not a number of seconds — fix: set it to e.g. 60 "
            "(0: no retries), or unset it"
        )
    return value


def _backoff(tries: int) -> float:
    """The wait after the `tries`-th failure: doubling from BACKOFF_SECONDS, capped, jittered."""
    base = min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2 ** (tries - 1))
    return base * (1 + JITTER * _jitter.random())


def _attempt(fn: Callable[[], T], what: str, uri: str, local: Path | None = None) -> T:
    """Run `fn`, retrying transient failures while the next try still starts within the retry
    budget; any failure becomes a StorageError naming `uri` (and `local`, the local file, when
    the disk is full). This is the only retry layer under Prefect's task retries: botocore and
    s3fs make one request per call (see s3_filesystem), so a lasting outage costs a bounded
    number of requests: with the defaults at most 8 (tries at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 30.5
    and 45.5 s without jitter; 7 with the most jitter), times Prefect's task tries.

    The original exception is not chained (`from None`): botocore's texts can hold the endpoint."""
    budget, start, tries = retry_budget(), _clock(), 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as err:
            delay = _backoff(tries)
            if not _is_transient(err) or _clock() - start + delay > budget:
                error = _storage_error(err, what, uri, tries, local)
            else:
                error = None
                log.warning(
                    "%s %s failed (%s), try %d in %.1fs", what, uri, type(err).__name__,
                    tries + 1, delay,
                )  # fmt: skip
        if error is not None:
            raise error from None
        _sleep(delay)


# --- the S3 filesystem --------------------------------------------------------------------------


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> Any:
    """The s3fs filesystem for the current AWS environment (cached per endpoint by fsspec).

    Each call makes one request: botocore's retries (`total_max_attempts` counts the first try)
    and s3fs's retry loop (its class attribute `retries`; it is no constructor argument) are off,
    so that _attempt is the one retry layer below Prefect's task retries. Stacked, they made
    about 300 requests per object under a lasting 503."""
    import s3fs

    # The endpoint is passed explicitly (s3fs would also read it from the environment) so that
    # fsspec's instance cache gives a new filesystem when the environment changes.
    fs = s3fs.S3FileSystem(
        endpoint_url=_endpoint(),
        use_listings_cache=False,
        config_kwargs={"retries": {"total_max_attempts": 1}},
    )
    fs.retries = 1
    return fs


def _s3_path(uri: str) -> str:
    return str(uri).removeprefix("s3://")


# --- GETs that check what arrived -----------------------------------------------------------------


class _ChangedSinceListed(Exception):
    """The object at a URI is no longer the version that was listed (its ETag differs)."""


@dataclass(frozen=True)
class _Received:
    """What one GET brought: the object's ETag and length, the bytes that arrived, and the digest
    to check them by (`check`: "md5", "sha256" or "" when the object offers none)."""

    etag: str
    length: int
    size: int
    check: str
    want: str
    got: str


def _etag(response: dict) -> str:
    return str(response.get("ETag", "")).strip('"')


def _content_check(response: dict) -> tuple[str, str]:
    """What an object's bytes can be checked against: its ETag where that is the MD5 of the
    content (one PUT, no SSE-KMS / SSE-C), else the sha256 camtrap stored at upload, else
    nothing ("", "")."""
    etag = _etag(response)
    kms = str(response.get("ServerSideEncryption", "")).startswith("aws:kms")
    if re.fullmatch(r"[0-9a-f]{32}", etag) and not kms and not response.get("SSECustomerAlgorithm"):
        return "md5", etag
    stored = (response.get("Metadata") or {}).get(SHA256_META, "")
    return ("sha256", stored) if stored else ("", "")


def _hasher(kind: str) -> Any:
    if kind == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.sha256() if kind == "sha256" else None


async def _stream_get(fs: Any, uri: str, write: Callable[[bytes], Any], if_match: str) -> _Received:
    bucket, key = split_s3(uri)
    # If-Match pins the GET to the listed version: S3 answers 412 if the object was replaced.
    pin = {"IfMatch": f'"{if_match}"'} if if_match else {}
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key, **pin)
    kind, want = _content_check(response)
    digest, size = _hasher(kind), 0
    async with response["Body"] as body:
        while chunk := await body.read(1 << 20):
            write(chunk)
            size += len(chunk)
            if digest is not None:
                digest.update(chunk)
    got = digest.hexdigest() if digest is not None else ""
    return _Received(
        _etag(response), int(response.get("ContentLength", size)), size, kind, want, got
    )


def _get_object(uri: str, write: Callable[[bytes], Any], if_match: str = "") -> _Received:
    """One GET of `uri`, its body passed to `write` in blocks (s3fs's get_file can't send
    If-Match, so the request goes through s3fs's client directly)."""
    from fsspec.asyn import sync

    fs = s3_filesystem()
    return sync(fs.loop, _stream_get, fs, uri, write, if_match)


def _check_received(received: _Received, expected: RemoteFile | None) -> None:
    """Raise unless the bytes are the whole object, and the listed version where one is given."""
    if expected is not None and expected.etag and received.etag != expected.etag:
        raise _ChangedSinceListed(received.etag)  # a server that ignored If-Match
    want_size = expected.size if expected is not None else received.length
    if received.size != want_size:
        raise _TransferMismatch(f"{received.size} bytes arrived, the object has {want_size}")
    if received.check and received.got != received.want:
        raise _TransferMismatch(
            f"the {received.check} of the bytes that arrived is not the object's"
        )


def _read_object(uri: str) -> tuple[bytes, str]:
    chunks: list[bytes] = []
    received = _get_object(uri, chunks.append)
    _check_received(received, None)
    return b"".join(chunks), received.etag


# --- single objects -----------------------------------------------------------------------------


def exists(uri: str | Path) -> bool:
    if not is_remote(uri):
        return _local(uri).exists()
    return _attempt(lambda: s3_filesystem().exists(_s3_path(str(uri))), "check", str(uri))


def read_bytes(uri: str | Path) -> bytes:
    """The bytes at `uri` (S3: checked against the object's MD5 or stored sha256)."""
    if not is_remote(uri):
        return _attempt(lambda: _local(uri).read_bytes(), "read", str(uri))
    return _attempt(lambda: _read_object(str(uri))[0], "read", str(uri))


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | Path, data: bytes) -> None:
    if not is_remote(uri):
        _attempt(lambda: atomic_write_bytes(_local(uri), data), "write", str(uri), _local(uri))
        return
    meta = _sha256_metadata(hashlib.sha256(data).hexdigest())
    _attempt(lambda: s3_filesystem().pipe_file(_s3_path(str(uri)), data, **meta), "write", str(uri))


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


def _sha256_metadata(digest: str) -> dict[str, dict[str, str]]:
    """put_object's argument that stores `digest` as x-amz-meta-camtrap-sha256."""
    return {"Metadata": {SHA256_META: digest}}


def upload_file(path: str | Path, uri: str | Path) -> None:
    """Copy a local file to `uri` (S3: one PUT below 100 MB, parts of CHUNK_BYTES above; its
    sha256 stored as metadata, see _same)."""
    path = Path(path)
    if not is_remote(uri):
        _attempt(lambda: _copy_atomic(path, _local(uri)), "write", str(uri), _local(uri))
        return
    _attempt(lambda: _upload_once(path, str(uri)), "upload to", str(uri))


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _upload_once(path: Path, uri: str) -> None:
    before = _identity(path)
    meta = _sha256_metadata(file_sha256(path))
    s3_filesystem().put_file(str(path), _s3_path(uri), chunksize=CHUNK_BYTES, **meta)
    # The sha256 must describe the bytes sent: a file replaced meanwhile is sent again.
    if _identity(path) != before:
        raise _TransferMismatch(f"{path} changed while it was uploaded")


def download_file(uri: str | Path, path: str | Path, expected: RemoteFile | None = None) -> None:
    """Copy `uri` to a local file atomically: a crash never leaves half a file under `path`.
    S3: the bytes are checked (whole, and their MD5 or stored sha256) and retried if wrong; with
    the listing's `expected` entry the GET is pinned to that version, and an object replaced
    since is a StorageError, never silently taken."""
    path = Path(path)
    if not is_remote(uri):
        _attempt(lambda: _copy_atomic(_local(uri), path), "read", str(uri), path)
        return
    _attempt(lambda: _download_once(str(uri), path, expected), "download", str(uri), path)


def _new_file(path: Path) -> BinaryIO:
    """A new file to receive a download (mode 0o666 less the umask, as open() gives)."""
    return path.open("xb")


def _download_once(uri: str, path: Path, expected: RemoteFile | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with _new_file(tmp) as fh:
            received = _get_object(uri, fh.write, expected.etag if expected else "")
        _check_received(received, expected)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
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


def _same(local: Path, remote: RemoteFile, other: Path | str) -> bool:
    """Whether a local file already equals `other`, a local file or the S3 object `remote` lists
    (size, then content). On S3 an ETag equal to the local MD5 (or multipart ETag) settles it
    with no request; otherwise, for a file of equal size, one HEAD reads the sha256 camtrap
    stored at upload: the ETag may be opaque (SSE-KMS, SSE-C, another part size)."""
    if not local.is_file() or local.stat().st_size != remote.size:
        return False
    if isinstance(other, Path):  # local "remote": compare content
        return _file_md5(local) == _file_md5(other)
    if _etag_matches(local, remote.etag):
        return True
    stored = _stored_sha256(other)
    return bool(stored) and stored == file_sha256(local)


def _etag_matches(path: Path, etag: str) -> bool:
    if "-" in etag:
        return local_etag(path) == etag
    return _file_md5(path) == etag


def _stored_sha256(uri: str) -> str:
    """The sha256 upload_file / write_bytes stored with an S3 object ("" if none): one HEAD."""
    bucket, key = split_s3(uri)

    def head() -> dict:
        return s3_filesystem().call_s3("head_object", Bucket=bucket, Key=key)

    try:
        response = _attempt(head, "check", uri)
    except StorageNotFound:
        return ""
    return str((response.get("Metadata") or {}).get(SHA256_META, ""))


# --- folders ------------------------------------------------------------------------------------


def _ordered(names: Iterable[str], last: Sequence[str]) -> list[str]:
    """Sorted, with the names in `last` moved to the end in that order."""
    names = sorted(names)
    tail = [n for n in last if n in names]
    return [n for n in names if n not in tail] + tail


def _counterpart(uri: str | Path, rel: str) -> Path | str:
    """What _same compares a local file with: the local file, or the S3 URI."""
    return join(uri, rel) if is_remote(uri) else _local(uri) / rel


def sync_dir_to_uri(local_dir: str | Path, uri: str | Path, last: Sequence[str] = ()) -> list[str]:
    """Upload every file of `local_dir` whose size or content differs at `uri`; returns the
    relative paths uploaded. Files in `last` go last (a reader seeing them sees the rest too).
    Hidden temp files (`.*.tmp`) are skipped."""
    local_dir = Path(local_dir)
    if not is_remote(uri) and _local(uri).resolve() == local_dir.resolve():
        return []
    remote = list_files(uri)
    changed = []
    for path in sorted(local_dir.rglob("*")):
        rel = path.relative_to(local_dir).as_posix()
        if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        entry = remote.get(rel)
        if entry is None or not _same(path, entry, _counterpart(uri, rel)):
            changed.append(rel)
    for rel in _ordered(changed, last):
        upload_file(local_dir / rel, join(uri, rel))
    return _ordered(changed, last)


def sync_uri_to_dir(uri: str | Path, local_dir: str | Path, delete: bool = False) -> list[str]:
    """Download every file under `uri` that is missing or different in `local_dir`; with
    `delete`, also remove local files that are not at `uri` (an exact mirror). Returns the
    relative paths downloaded. Keys that would land outside `local_dir` (`..`, absolute) are
    skipped with a warning; nothing is written or deleted through a link that leads outside."""
    local_dir = Path(local_dir)
    if not is_remote(uri) and _local(uri).resolve() == local_dir.resolve():
        return []
    remote = _safe_entries(list_files(uri), uri)
    remove_orphan_temps(local_dir)
    wanted = [
        rel
        for rel, entry in sorted(remote.items())
        if not _same(local_dir / rel, entry, _counterpart(uri, rel))
    ]
    expected = remote if is_remote(uri) else {}
    _parallel(
        lambda rel: download_file(join(uri, rel), inside(local_dir, rel), expected.get(rel)),
        wanted,
    )
    if delete and local_dir.exists():
        _delete_extra(local_dir, remote)
    return wanted


def _safe_entries(files: dict[str, RemoteFile], uri: str | Path) -> dict[str, RemoteFile]:
    """`files` without the names that would leave the folder they are copied into."""
    unsafe = [rel for rel in files if not safe_relative(rel)]
    for rel in unsafe:
        log.warning(
            "skipped %s: its name leads outside the folder it is copied into", join(uri, rel)
        )
    return {rel: entry for rel, entry in files.items() if rel not in unsafe}


def _within(root: Path, path: Path) -> bool:
    """Whether the folder holding `path` is `root` or under it once links are resolved (the
    entry itself may be a link: replacing or unlinking a link leaves its target alone)."""
    return path.parent.resolve().is_relative_to(root.resolve())


def inside(root: Path, rel: str) -> Path:
    """`root / rel`, or StorageError if `rel` or a linked folder on the way leads outside."""
    path = Path(root, rel)
    if not safe_relative(rel) or not _within(Path(root), path):
        raise StorageError(
            f"{rel} would be written outside {root} — fix: remove the link under {root} that "
            "leads elsewhere, or the key from the bucket"
        )
    return path


def _delete_extra(local_dir: Path, remote: dict[str, RemoteFile]) -> None:
    """Unlink the files of `local_dir` that `remote` does not list; a file reached through a
    linked folder that leads outside is left alone (rglob follows such links)."""
    for path in sorted(local_dir.rglob("*"), reverse=True):
        rel = path.relative_to(local_dir).as_posix()
        if not path.is_file() or rel in remote:
            continue
        if _within(local_dir, path):
            path.unlink()
        else:
            log.warning("kept %s: it lies outside %s through a link", path.resolve(), local_dir)


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


class _Manifest:
    """A cache's fetch manifest (relative name -> ETag of the file there), written as files
    arrive: at most every MANIFEST_FLUSH_SECONDS, and at the end. A fetch killed midway then
    downloads again only what arrived after the last write. A name is recorded only once its
    file is in place, so the manifest never vouches for a file that is not there."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / MANIFEST_NAME
        self.entries = _read_manifest(cache_dir)
        self._lock = threading.Lock()
        self._unsaved = 0
        self._saved_at = _clock()

    def record(self, name: str, etag: str) -> None:
        with self._lock:
            self.entries[name] = etag
            self._unsaved += 1
            if _clock() - self._saved_at >= MANIFEST_FLUSH_SECONDS:
                self._save()

    def flush(self) -> None:
        with self._lock:
            if self._unsaved:
                self._save()

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
        self._unsaved, self._saved_at = 0, _clock()


def check_data_folder(data_uri: str) -> Path | None:
    """A local `data_uri` as a Path, or StorageNotFound when it is not a folder (checked before
    anything slow starts); None for a remote URI, whose listing tells."""
    if is_remote(data_uri):
        return None
    root = _local(data_uri)
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
            root, reused=list(present), missing=missing, digest=etags_digest(present)
        )
    cache_dir = Path(cache_dir)
    remote = listing if listing is not None else list_files(data_uri)
    if not remote:
        raise StorageNotFound(f"{data_uri} holds no files — fix: {_FIX_MISSING}")
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
    report.digest = etags_digest(fetched)
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
    download_file(join(data_uri, name), inside(cache_dir, name), entry)
    manifest.record(name, entry.etag)


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


# --- conditional writes (for leases) --------------------------------------------------------------


def read_with_tag(uri: str | Path) -> tuple[bytes, str]:
    """The bytes at `uri` and a tag of that version, for replace_if_match (S3: the ETag; local:
    the sha256 of the bytes). A missing file raises StorageNotFound."""
    if not is_remote(uri):
        data = _attempt(lambda: _local(uri).read_bytes(), "read", str(uri))
        return data, hashlib.sha256(data).hexdigest()
    return _attempt(lambda: _read_object(str(uri)), "read", str(uri))


def create_exclusive(uri: str | Path, data: bytes) -> bool:
    """Write `data` to `uri` only if nothing is there: True if this call created it, False if it
    existed. Of racing callers exactly one wins (S3: PUT with If-None-Match "*"; local: a
    complete, fsynced temp file hard-linked to the name, which fails if the name exists). Put
    something unique to the caller in `data`: when the condition fails, the object holding
    exactly `data` counts as this caller's (a PUT that landed, its answer lost, then retried)."""
    if not is_remote(uri):
        path = _local(uri)
        return _attempt(lambda: _link_new(path, data), "create", str(uri), path)
    return _put_conditional(str(uri), data, {"IfNoneMatch": "*"}, "create")


def replace_if_match(uri: str | Path, data: bytes, tag: str) -> bool:
    """Replace `uri` with `data` only if it still holds the version read_with_tag tagged `tag`:
    True if replaced, False if it changed or is gone (S3: PUT with If-Match; local: compare and
    swap under an exclusive lock on the folder). As for create_exclusive, make `data` unique to
    the caller: on S3 an object already holding exactly `data` counts as this call's write."""
    if not is_remote(uri):
        path = _local(uri)
        return _attempt(lambda: _swap_if_tag(path, data, tag), "replace", str(uri), path)
    return _put_conditional(str(uri), data, {"IfMatch": f'"{tag}"'}, "replace")


def _put_conditional(uri: str, data: bytes, condition: dict[str, str], what: str) -> bool:
    bucket, key = split_s3(uri)
    meta = _sha256_metadata(hashlib.sha256(data).hexdigest())

    def put() -> bool:
        try:
            s3_filesystem().call_s3(
                "put_object", Bucket=bucket, Key=key, Body=data, **condition, **meta
            )
        except Exception as err:
            gone = isinstance(err, FileNotFoundError) and "IfMatch" in condition
            if not (gone or _precondition_failed(err)):
                raise
            # A PUT can land and its answer be lost; the retry (ours, or aiohttp's on a reused
            # connection, which we can't see) then fails its condition. The bytes tell.
            return _holds(uri, data)
        return True

    return _attempt(put, what, uri)


def _holds(uri: str, data: bytes) -> bool:
    try:
        return read_bytes(uri) == data
    except StorageNotFound:
        return False


def _link_new(path: Path, data: bytes) -> bool:
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


def _swap_if_tag(path: Path, data: bytes, tag: str) -> bool:
    if not path.parent.is_dir():
        return False
    with _folder_lock(path.parent):
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            return False
        if hashlib.sha256(current).hexdigest() != tag:
            return False
        atomic_write_bytes(path, data)
        return True


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself (no lock file to leave behind or sync). flock
    locks belong to an open file, so threads with their own open exclude each other too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
