"""The one retry layer under Prefect's task retries, and what every storage failure becomes: a
StorageError (StorageNotFound when the URI names nothing) naming the URI, what went wrong and how
to fix it, never the endpoint or a credential.

Transient failures (connection resets, timeouts, S3 5xx / SlowDown, bytes that don't match
their object) are retried with exponential backoff and jitter within a time budget per call
($CAMTRAP_S3_RETRY_SECONDS, default 60 s); botocore's and s3fs's own retries are off
(camtrap.storage.s3), so a lasting outage costs a bounded number of requests."""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from camtrap.errors import StorageError
from camtrap.redact import redact_endpoints
from camtrap.storage.files import DISK_FULL_ERRNOS, disk_full_error
from camtrap.storage.uris import is_remote, local_path

log = logging.getLogger("camtrap")

T = TypeVar("T")

RETRY_SECONDS_ENV = "CAMTRAP_S3_RETRY_SECONDS"
RETRY_SECONDS = 60.0  # default time budget of one call's tries on transient errors
BACKOFF_SECONDS = 0.5  # first delay; doubles each try up to MAX_BACKOFF_SECONDS
MAX_BACKOFF_SECONDS = 15.0
JITTER = 0.5  # each delay is stretched by up to this fraction, so clients don't retry in step

FIX_MISSING = "check the bucket name and prefix (aws s3 ls URI lists what is there)"
_FIX_DENIED = (
    "check the AWS credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the "
    "bucket policy"
)
_FIX_NETWORK = (
    "check that the S3 endpoint is reachable (AWS_ENDPOINT_URL for a non-AWS S3) and retry"
)


class StorageNotFound(StorageError):
    """The URI names nothing: a wrong bucket, prefix or key. Retrying does not help."""


class TransferMismatch(Exception):
    """The bytes that arrived are not the object's (size, MD5 or sha256 differ): worth a retry."""


class ChangedSinceListed(Exception):
    """The object at a URI is no longer the version that was listed (its ETag differs)."""


_TRANSIENT_ERRNOS = {errno.EIO, getattr(errno, "EREMOTEIO", errno.EIO), errno.EBUSY, None}
# By type name; with s3fs's retries off, also those it retried: botocore's HTTPClientError (an
# answer aiohttp could not parse) and ResponseParserError (S3 sometimes throttles with bad XML).
_TRANSIENT_NAMES = (
    "Connect", "Timeout", "IncompleteRead", "Streaming", "Payload", "Throttl", "Checksum",
    "HTTPClientError", "ResponseParser",
)  # fmt: skip
_FIX_CHANGED = "run again: the next run lists the new version (nothing was written from this one)"


def is_transient(err: BaseException) -> bool:
    """Worth another try: timeouts, dropped connections, S3 5xx / SlowDown (s3fs: OSError EIO),
    bytes that don't match their object."""
    if isinstance(err, TransferMismatch):
        return True
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError | StorageError):
        return False
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    if any(word in type(err).__name__ for word in _TRANSIENT_NAMES):
        return True
    return type(err) is OSError and err.errno in _TRANSIENT_ERRNOS


def precondition_failed(err: BaseException) -> bool:
    """S3 answered 412: an If-Match / If-None-Match did not hold (s3fs turns it into an OSError
    or FileExistsError and keeps botocore's error as the cause)."""
    if isinstance(err, FileExistsError | ChangedSinceListed):
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
    if isinstance(err, OSError) and _raised_locally(err, uri):
        return _local_error(err, what, uri, local)
    if isinstance(err, FileNotFoundError):
        return StorageNotFound(f"cannot {what} {uri}: it does not exist — fix: {FIX_MISSING}")
    if isinstance(err, PermissionError) or "AccessDenied" in str(err) or "Forbidden" in str(err):
        return StorageError(f"cannot {what} {uri}: access denied — fix: {_FIX_DENIED}")
    if "NoCredentials" in type(err).__name__ or "credentials" in str(err).lower():
        return StorageError(f"cannot {what} {uri}: no AWS credentials found — fix: {_FIX_DENIED}")
    if precondition_failed(err):
        return StorageError(
            f"cannot {what} {uri}: it changed since it was listed — fix: {_FIX_CHANGED}"
        )
    if isinstance(err, TransferMismatch):
        return StorageError(
            f"cannot {what} {uri}: {err} (on each of {tries} tries) — fix: check that nothing "
            "rewrites it meanwhile and that the network path does not alter data, then retry"
        )
    if is_transient(err):
        name = type(err).__name__
        return StorageError(
            f"cannot {what} {uri}: {name} after {tries} tries — fix: {_FIX_NETWORK}"
        )
    detail = redact_endpoints(str(err)) or type(err).__name__
    return StorageError(f"cannot {what} {uri}: {detail} — fix: {FIX_MISSING}")


# --- failures of the local disk ------------------------------------------------------------------

# `what`s that write their local path; others read it, except where that path is `local`, the
# target (a local-to-local copy is a "read" of its source).
_WRITES = frozenset({"write", "download", "create", "replace", "delete"})
_NOT_A_FOLDER_ERRNOS = frozenset({errno.ENOTDIR, errno.EEXIST})


def _raised_locally(err: OSError, uri: str) -> bool:
    """An OSError of the local disk. The same types come from s3fs for S3's answers
    (PermissionError for AccessDenied, FileExistsError for a 412), but without a file name."""
    return not is_remote(uri) or err.filename is not None


def _local_error(err: OSError, what: str, uri: str, local: Path | None) -> StorageError:
    """What the disk refused, named by the local path: never "check the AWS credentials" for a
    folder's mode, nor "it changed since it was listed" for a file where a folder should be."""
    path = Path(err.filename) if err.filename is not None else local or local_path(uri)
    writing = what in _WRITES or (local is not None and _on_the_way_to(path, local))
    target = (local or path) if writing else path
    prefix = f"cannot {what} {uri}:"
    if isinstance(err, FileNotFoundError):
        where = "it" if str(path) == uri else str(path)
        return StorageNotFound(f"{prefix} {where} does not exist — fix: check the path")
    if isinstance(err, PermissionError):
        return StorageError(f"{prefix} {_denied(what, uri, target, writing)}")
    blocker = _file_in_the_way(path, err) if err.errno in _NOT_A_FOLDER_ERRNOS else None
    if blocker is not None:
        fix = f"move or rename {blocker}, {_elsewhere(what)}" if writing else "check the path"
        return StorageError(f"{prefix} {blocker} is a file, not a folder — fix: {fix}")
    detail = err.strerror or type(err).__name__
    return StorageError(f"{prefix} {detail} at {path} — fix: check the path")


def _on_the_way_to(path: Path, target: Path) -> bool:
    """`path` is the target, its temp file (files.temp_path_for) or a folder above it."""
    temp = path.parent == target.parent and path.name.startswith(f".{target.name}.")
    return path == target or temp or target.is_relative_to(path)


def _denied(what: str, uri: str, target: Path, writing: bool) -> str:
    """'permission denied [writing X] — fix: ...' (X left out where it is the URI itself)."""
    verb = ("deleting" if what == "delete" else "writing") if writing else "reading"
    where = "" if str(target) == uri else f" {verb} {target}"
    if writing:
        folder, other = _nearest_folder(target), _elsewhere(what, "a folder you can write")
        fix = f"check the permissions (owner, mode) of {folder}, {other}"
    else:
        fix = f"check the permissions (owner, mode) of {target} and of the folders above it"
    return f"permission denied{where} — fix: {fix}"


def _elsewhere(what: str, cache: str = "another folder") -> str:
    """The other way out of a local folder that can't be written: for a download (into the
    local cache) CAMTRAP_CACHE_DIR set to `cache`, else another output."""
    if what == "download":
        return f"or set CAMTRAP_CACHE_DIR to {cache}"
    return "or choose another output"


def _nearest_folder(path: Path) -> Path:
    """The closest folder above `path` that exists: the one whose mode refused."""
    return next((p for p in path.parents if p.is_dir()), path.parent)


def _file_in_the_way(path: Path, err: OSError) -> Path | None:
    """The regular file where a folder on the way to `path` should be (EEXIST: `path` itself,
    a folder mkdir found as a file; ENOTDIR: one above it)."""
    candidates = [path, *path.parents] if err.errno == errno.EEXIST else list(path.parents)
    return next((p for p in candidates if p.exists() and not p.is_dir()), None)


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


def attempt(fn: Callable[[], T], what: str, uri: str, local: Path | None = None) -> T:
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
            if not is_transient(err) or _clock() - start + delay > budget:
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
