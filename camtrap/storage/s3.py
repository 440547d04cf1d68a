"""S3 through s3fs, one request per call: the client, GETs that check what arrived, PUTs that
store the content's sha256, listings, conditional PUTs. Nothing here retries: the callers in
camtrap.storage wrap each call in camtrap.storage.retry.attempt, the one retry layer.

The endpoint and credentials come only from the standard AWS environment or profile
(`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, ...).

- A download is accepted only if it is the object that was listed, whole: the GET is pinned to
  the listed ETag (If-Match), and the bytes are checked against the size and, where the ETag is an
  MD5 of the content, the MD5 (else the sha256 camtrap stored at upload).
- Uploads store the file's sha256 as object metadata (x-amz-meta-camtrap-sha256), so an
  unchanged file is recognised even where the ETag is not an MD5 (SSE-KMS, SSE-C, other part
  sizes)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from camtrap.storage.files import file_md5, file_sha256, temp_path_for
from camtrap.storage.retry import ChangedSinceListed, TransferMismatch, precondition_failed
from camtrap.storage.uris import RemoteFile, split_s3

SHA256_META = "camtrap-sha256"  # S3 user metadata (x-amz-meta-camtrap-sha256) set by uploads
# s3fs uploads files below 2 x this in one PUT, larger ones in parts of this size; the local
# ETag computed below must match what S3 reports, so uploads pass the same chunk size.
CHUNK_BYTES = 50 * 2**20


# --- the S3 filesystem --------------------------------------------------------------------------


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> Any:
    """The s3fs filesystem for the current AWS environment (cached per endpoint by fsspec).

    Each call makes one request: botocore's retries (`total_max_attempts` counts the first try)
    and s3fs's retry loop (its class attribute `retries`; it is no constructor argument) are off,
    so that retry.attempt is the one retry layer below Prefect's task retries. Stacked, they made
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
        raise ChangedSinceListed(received.etag)  # a server that ignored If-Match
    want_size = expected.size if expected is not None else received.length
    if received.size != want_size:
        raise TransferMismatch(f"{received.size} bytes arrived, the object has {want_size}")
    if received.check and received.got != received.want:
        raise TransferMismatch(
            f"the {received.check} of the bytes that arrived is not the object's"
        )


def read_object(uri: str) -> tuple[bytes, str]:
    chunks: list[bytes] = []
    received = _get_object(uri, chunks.append)
    _check_received(received, None)
    return b"".join(chunks), received.etag


# --- single objects -----------------------------------------------------------------------------


def exists(uri: str) -> bool:
    return bool(s3_filesystem().exists(_s3_path(uri)))


def write(uri: str, data: bytes) -> None:
    """One PUT of `data`, its sha256 stored as metadata."""
    meta = _sha256_metadata(hashlib.sha256(data).hexdigest())
    s3_filesystem().pipe_file(_s3_path(uri), data, **meta)


def remove(uri: str) -> None:
    """Delete one object; one that is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        s3_filesystem().rm_file(_s3_path(uri))


def _sha256_metadata(digest: str) -> dict[str, dict[str, str]]:
    """put_object's argument that stores `digest` as x-amz-meta-camtrap-sha256."""
    return {"Metadata": {SHA256_META: digest}}


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def upload(path: Path, uri: str) -> None:
    """Copy a local file to `uri`: one PUT below 100 MB, parts of CHUNK_BYTES above; its sha256
    stored as metadata."""
    before = _identity(path)
    meta = _sha256_metadata(file_sha256(path))
    s3_filesystem().put_file(str(path), _s3_path(uri), chunksize=CHUNK_BYTES, **meta)
    # The sha256 must describe the bytes sent: a file replaced meanwhile is sent again.
    if _identity(path) != before:
        raise TransferMismatch(f"{path} changed while it was uploaded")


def _new_file(path: Path) -> BinaryIO:
    """A new file to receive a download (mode 0o666 less the umask, as open() gives)."""
    return path.open("xb")


def download(uri: str, path: Path, expected: RemoteFile | None = None) -> None:
    """`uri` to a local file, atomically, its bytes checked; with the listing's `expected`
    entry the GET is pinned to that version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with _new_file(tmp) as fh:
            received = _get_object(uri, fh.write, expected.etag if expected else "")
        _check_received(received, expected)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- listings and ETags -------------------------------------------------------------------------


def list_files(uri: str) -> dict[str, RemoteFile]:
    """Every object under `uri`, by key relative to it: the key less `prefix/`, kept as it is,
    so that uris.child(uri, rel) names the object again. A key with an empty segment keeps it
    (`prefix//a.jpg` is "/a.jpg", `prefix/sub//b.jpg` is "sub//b.jpg"); keys ending in "/"
    are folder markers (the S3 console's "Create folder"), not files. An absent prefix gives
    {}."""
    bucket, key = split_s3(uri)
    prefix = f"{bucket}/{key}/" if key else f"{bucket}/"
    found = s3_filesystem().find(prefix.rstrip("/"), detail=True)
    files: dict[str, RemoteFile] = {}
    for name, info in found.items():
        if info.get("type") == "directory" or not name.startswith(prefix) or name.endswith("/"):
            continue  # a "folder", a folder marker, or the object named by `uri` itself
        etag = str(info.get("ETag", "")).strip('"')
        files[name.removeprefix(prefix)] = RemoteFile(int(info.get("size") or 0), etag)
    return files


def local_etag(path: Path, chunk: int = CHUNK_BYTES) -> str:
    """The ETag S3 gives `path` when `upload` sends it: the md5 of the content below two chunks
    (one PUT), else the md5 of the parts' md5s and "-<parts>" (a multipart upload)."""
    if path.stat().st_size < 2 * chunk:
        return file_md5(path)
    digests = []
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digests.append(hashlib.md5(block, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(digests)}"


def etag_matches(path: Path, etag: str) -> bool:
    """Whether `path` has the content an object with this ETag has (single or multipart)."""
    if "-" in etag:
        return local_etag(path) == etag
    return file_md5(path) == etag


def stored_sha256(uri: str) -> str:
    """The sha256 `upload` / `write` stored with an object ("" if none): one HEAD."""
    bucket, key = split_s3(uri)
    response = s3_filesystem().call_s3("head_object", Bucket=bucket, Key=key)
    return str((response.get("Metadata") or {}).get(SHA256_META, ""))


# --- conditional writes -------------------------------------------------------------------------


def put_if(uri: str, data: bytes, condition: dict[str, str]) -> bool:
    """One PUT with `condition` (IfNoneMatch "*" or IfMatch an ETag): True if it was written,
    False if the condition did not hold (or, for IfMatch, the object is gone)."""
    bucket, key = split_s3(uri)
    meta = _sha256_metadata(hashlib.sha256(data).hexdigest())
    try:
        s3_filesystem().call_s3(
            "put_object", Bucket=bucket, Key=key, Body=data, **condition, **meta
        )
    except Exception as err:
        gone = isinstance(err, FileNotFoundError) and "IfMatch" in condition
        if not (gone or precondition_failed(err)):
            raise
        return False
    return True
