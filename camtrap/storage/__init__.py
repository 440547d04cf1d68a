"""Every file and S3 read or write goes through here: one API over local paths and `s3://` URIs.

    camtrap.storage          exists / read / write / remove / upload / download / list, and the
                             conditional writes leases use; each call retried (storage.retry)
    camtrap.storage.files    local files: atomic writes, sha256, `inside(root, rel)`
    camtrap.storage.uris     building URIs, where local copies live (no I/O)
    camtrap.storage.retry    the one retry layer and the StorageError each failure becomes
    camtrap.storage.s3       one S3 request per call, its bytes checked
    camtrap.storage.mirror   folders: sync both ways, the ETag-keyed fetch cache, freshness
    camtrap.storage.contents a folder's files by content (watch-data's fingerprint)

Guarantees: local writes are atomic; a download is accepted only if it is the object that was
listed, whole; errors name the URI and the fix, never the endpoint or a credential; a full disk, a
folder that can't be written or a file where a folder should be is reported as such, with the
local path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from camtrap.errors import StorageError
from camtrap.storage import files, s3
from camtrap.storage.retry import StorageNotFound, attempt
from camtrap.storage.uris import RemoteFile, is_remote, join, local_path

__all__ = [
    "RemoteFile", "StorageError", "StorageNotFound", "create_exclusive", "download_file",
    "etags_digest", "exists", "is_remote", "join", "list_files", "modified_at", "read_bytes",
    "read_text", "read_with_tag", "remove", "replace_if_match", "upload_file", "write_bytes",
    "write_text",
]  # fmt: skip


def exists(uri: str | Path) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    return attempt(lambda: s3.exists(str(uri)), "check", str(uri))


def read_bytes(uri: str | Path) -> bytes:
    """The bytes at `uri` (S3: checked against the object's MD5 or stored sha256)."""
    if not is_remote(uri):
        return attempt(lambda: local_path(uri).read_bytes(), "read", str(uri))
    return attempt(lambda: s3.read_object(str(uri))[0], "read", str(uri))


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Local: an atomic write; S3: one PUT."""
    if not is_remote(uri):
        path = local_path(uri)
        attempt(lambda: files.atomic_write_bytes(path, data), "write", str(uri), path)
        return
    attempt(lambda: s3.write(str(uri), data), "write", str(uri))


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove(uri: str | Path) -> None:
    """Delete one file; a file that is already gone is fine."""
    if not is_remote(uri):
        attempt(lambda: local_path(uri).unlink(missing_ok=True), "delete", str(uri))
        return
    attempt(lambda: s3.remove(str(uri)), "delete", str(uri))


def upload_file(path: str | Path, uri: str | Path) -> None:
    """Copy a local file to `uri` (S3: its sha256 stored as metadata; see camtrap.storage.s3)."""
    path = Path(path)
    if not is_remote(uri):
        target = local_path(uri)
        attempt(lambda: files.copy_atomic(path, target), "write", str(uri), target)
        return
    attempt(lambda: s3.upload(path, str(uri)), "upload to", str(uri))


def download_file(uri: str | Path, path: str | Path, expected: RemoteFile | None = None) -> None:
    """Copy `uri` to a local file atomically: a crash never leaves half a file under `path`.
    S3: the bytes are checked (whole, and their MD5 or stored sha256) and retried if wrong; with
    the listing's `expected` entry the GET is pinned to that version, and an object replaced
    since is a StorageError, never silently taken."""
    path = Path(path)
    if not is_remote(uri):
        attempt(lambda: files.copy_atomic(local_path(uri), path), "read", str(uri), path)
        return
    attempt(lambda: s3.download(str(uri), path, expected), "download", str(uri), path)


def list_files(uri: str | Path) -> dict[str, RemoteFile]:
    """Every file under `uri`, by path relative to it. An absent prefix gives {}; an absent
    bucket raises StorageError."""
    if not is_remote(uri):
        root = local_path(uri)
        if not root.is_dir():
            return {}
        return {
            p.relative_to(root).as_posix(): RemoteFile(p.stat().st_size, "")
            for p in root.rglob("*")
            if p.is_file()
        }
    return attempt(lambda: s3.list_files(str(uri)), "list", str(uri))


def etags_digest(listing: dict[str, RemoteFile]) -> str:
    """One hash over every (path, size, ETag): changes when any file changes on S3."""
    body = json.dumps({k: [v.size, v.etag] for k, v in sorted(listing.items())}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


# --- conditional writes (leases) --------------------------------------------------------------


def read_with_tag(uri: str | Path) -> tuple[bytes, str]:
    """The bytes at `uri` and a tag of that version, for replace_if_match (S3: the ETag; local:
    the sha256 of the bytes). A missing file raises StorageNotFound."""
    if not is_remote(uri):
        data = attempt(lambda: local_path(uri).read_bytes(), "read", str(uri))
        return data, hashlib.sha256(data).hexdigest()
    return attempt(lambda: s3.read_object(str(uri)), "read", str(uri))


def modified_at(uri: str | Path) -> float:
    """When `uri` was last written (unix time), by the clock of what stores it: S3's LastModified
    (the server's), a local file's mtime (its file system's). Missing: StorageNotFound."""
    if not is_remote(uri):
        return attempt(lambda: local_path(uri).stat().st_mtime, "check", str(uri))
    key = str(uri).removeprefix("s3://")  # s3fs's path
    return attempt(
        lambda: s3.s3_filesystem().info(key)["LastModified"].timestamp(), "check", str(uri)
    )


def create_exclusive(uri: str | Path, data: bytes) -> bool:
    """Write `data` to `uri` only if nothing is there: True if this call created it, False if it
    existed. Of racing callers exactly one wins (S3: PUT with If-None-Match "*"; local: a
    complete, fsynced temp file hard-linked to the name, which fails if the name exists). Put
    something unique to the caller in `data`: when the condition fails, the object holding
    exactly `data` counts as this caller's (a PUT that landed, its answer lost, then retried)."""
    if not is_remote(uri):
        path = local_path(uri)
        return attempt(lambda: files.link_new(path, data), "create", str(uri), path)
    return _put_conditional(str(uri), data, {"IfNoneMatch": "*"}, "create")


def replace_if_match(uri: str | Path, data: bytes, tag: str) -> bool:
    """Replace `uri` with `data` only if it still holds the version read_with_tag tagged `tag`:
    True if replaced, False if it changed or is gone (S3: PUT with If-Match; local: compare and
    swap under an exclusive lock on the folder). As for create_exclusive, make `data` unique to
    the caller: on S3 an object already holding exactly `data` counts as this call's write."""
    if not is_remote(uri):
        path = local_path(uri)
        return attempt(lambda: files.swap_if_tag(path, data, tag), "replace", str(uri), path)
    return _put_conditional(str(uri), data, {"IfMatch": f'"{tag}"'}, "replace")


def _put_conditional(uri: str, data: bytes, condition: dict[str, str], what: str) -> bool:
    def put() -> bool:
        # A PUT can land and its answer be lost; the retry (ours, or aiohttp's on a reused
        # connection, which we can't see) then fails its condition. The bytes tell.
        return s3.put_if(uri, data, condition) or _holds(uri, data)

    return attempt(put, what, uri)


def _holds(uri: str, data: bytes) -> bool:
    try:
        return read_bytes(uri) == data
    except StorageNotFound:
        return False
