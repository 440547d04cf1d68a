"""Every data and output location is a URI: `s3://bucket/prefix` or a local path (a
`file://` prefix is accepted). These helpers build and take apart URIs and say where the local
copies of remote ones live; they do no I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from camtrap.errors import StorageError

CACHE_DIR_ENV = "CAMTRAP_CACHE_DIR"


@dataclass(frozen=True)
class RemoteFile:
    """What a listing says about one file at a URI."""

    size: int
    etag: str  # S3: the object's ETag without quotes; local: "" (compared by content)


def is_remote(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def local_path(uri: str | Path) -> Path:
    """A local URI as a Path (`file://` dropped)."""
    return Path(str(uri).removeprefix("file://"))


def join(uri: str | Path, *parts: str) -> str:
    """`join("s3://b/runs", "part1", "x")` -> "s3://b/runs/part1/x"; local paths join as paths."""
    if not is_remote(uri):
        return str(local_path(uri).joinpath(*parts))
    text = str(uri).rstrip("/")
    clean = [p.strip("/") for p in parts if p.strip("/")]
    return "/".join([text, *clean])


def child(uri: str | Path, rel: str) -> str:
    """The URI of `rel`, a name list_files gave under `uri`, kept as it is: unlike join, an
    empty segment stays (an S3 key may hold one: `s3://b/p//a.jpg` lists under s3://b/p as
    "/a.jpg")."""
    if not is_remote(uri):
        return str(local_path(uri) / rel)
    return f"{str(uri).rstrip('/')}/{rel}"


def local_name(rel: str) -> str:
    """Where a listed name lands in a local folder: without empty segments, as a local path has
    none ("/a.jpg" -> "a.jpg", "sub//b.jpg" -> "sub/b.jpg")."""
    return "/".join(part for part in rel.split("/") if part)


def parent(uri: str | Path) -> str:
    """The folder holding `uri`: `s3://b/a/x` -> "s3://b/a"; a local path's parent."""
    if is_remote(uri):
        return str(uri).rstrip("/").rsplit("/", 1)[0]
    return str(Path(uri).parent)


def name(uri: str | Path) -> str:
    """The last part of `uri`: `s3://b/a/x.pth` -> "x.pth"."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    bucket, _, key = str(uri).removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{uri} names no bucket; write it as s3://bucket/prefix")
    return bucket, key.strip("/")


def default_cache_root() -> Path:
    """Local copies of data and runs: $CAMTRAP_CACHE_DIR, else ~/.cache/camtrap."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "camtrap")


def cache_path_for(uri: str, cache_root: Path) -> Path:
    """A readable, unique local folder for `uri` under `cache_root` (s3://b/p -> root/s3/b/p)."""
    bucket, key = split_s3(uri)
    parts = [p for p in PurePosixPath(key).parts if p not in ("", ".", "..")]
    return Path(cache_root, "s3", bucket, *parts)


def local_copy(uri: str, kind: str, cache_root: Path | None = None) -> Path:
    """Where the local copy of `uri` lives: a local folder is its own copy; an s3:// URI's is
    {cache_root}/{kind}/s3/{bucket}/{key} (kind: "data", "runs", "models")."""
    if not is_remote(uri):
        return local_path(uri)
    return cache_path_for(uri, Path(cache_root or default_cache_root()) / kind)
