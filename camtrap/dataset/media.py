"""Media a dataset names by URI rather than by a path inside its data root: Camtrap DP's
`filePath` may be `s3://bucket/key`, a local file (`file:///data/x.jpg`; the schema refuses an
absolute path), or `https://` (Agouti's and GBIF's exports; fetched only with
data.allow_http=true).

A URI-named image keeps its URI as `filepath` (so outputs and problems name it as the user
wrote it); its bytes live at `local_path(uri)`: the file itself for a local one, else a copy in
the media cache ({cache}/media/...), fetched once by `fetch_media`: S3 through the ETag-keyed
mirror (a changed object is fetched again), HTTP(S) by URL (a URL is taken to name one
content, as the exports' media URLs do), never more than data.max_image_bytes per image."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path, PurePosixPath

from camtrap.errors import Problem
from camtrap.storage import StorageError
from camtrap.storage.files import atomic_write_bytes
from camtrap.storage.mirror import fetch_files
from camtrap.storage.uris import cache_path_for, default_cache_root

SCHEMES = ("s3://", "file://", "https://", "http://")
HTTP_FIX = "set data.allow_http=true to fetch it, or download the media into the package"
HTTP_TIMEOUT_S = 60


def is_uri(filepath: str) -> bool:
    """Whether `filepath` names its image by URI (see the module docstring)."""
    return filepath.startswith(SCHEMES)


def media_root() -> Path:
    return default_cache_root() / "media"


def local_path(uri: str) -> Path:
    """Where the bytes of the image at `uri` are on this machine (once fetched)."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if uri.startswith("s3://"):
        folder, name = uri.rsplit("/", 1)
        return cache_path_for(folder, media_root()) / name
    digest = hashlib.sha256(uri.encode()).hexdigest()
    suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()[:8]
    return media_root() / "http" / digest[:2] / f"{digest}{suffix}"


def fetch_media(uris: list[str], allow_http: bool, max_bytes: int) -> dict[str, str]:
    """Fetch the images at `uris` not yet on this machine; returns uri -> why it could not be
    (a missing S3 object, an HTTP error, an https URL without allow_http, over max_bytes).
    Images that could not be fetched are reported by validation as missing, with these
    reasons."""
    failed: dict[str, str] = {}
    by_folder: dict[str, list[str]] = defaultdict(list)
    for uri in dict.fromkeys(uris):
        if uri.startswith("s3://"):
            folder, name = uri.rsplit("/", 1)
            by_folder[folder].append(name)
        elif uri.startswith(("https://", "http://")):
            if not allow_http:
                failed[uri] = "is an http(s) URL, fetched only with data.allow_http=true"
            elif not local_path(uri).is_file():
                reason = _download(uri, local_path(uri), max_bytes)
                if reason:
                    failed[uri] = reason
    for folder, names in by_folder.items():
        try:
            report = fetch_files(folder, names, cache_path_for(folder, media_root()))
        except StorageError as err:
            failed.update({f"{folder}/{name}": str(err) for name in names})
            continue
        failed.update({f"{folder}/{name}": "does not exist" for name in report.missing})
    return failed


def fetch_problems(
    file: str, named: list[tuple[int, str, str]], allow_http: bool, max_bytes: int
) -> list[Problem]:
    """`fetch_media` for the (line, id, uri) a table names, its failures as Problems."""
    failed = fetch_media([uri for _, _, uri in named], allow_http, max_bytes)
    fix = {True: HTTP_FIX, False: "check the URI and that this machine may read it"}
    return [
        Problem(
            file,
            f"filePath {uri!r} {failed[uri]}",
            fix["allow_http" in failed[uri]],
            line,
            media_id or None,
        )  # fmt: skip
        for line, media_id, uri in named
        if uri in failed
    ]


def _download(url: str, target: Path, max_bytes: int) -> str | None:
    """The image at `url` into `target` (whole or not at all); why not, or None."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            data = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        return f"cannot be fetched ({getattr(err, 'reason', err)})"
    if len(data) > max_bytes:
        return f"is over data.max_image_bytes ({max_bytes} bytes)"
    atomic_write_bytes(target, data)
    return None
