"""Camtrap DP media named by URI (camtrap.dataset.media): a local file (file://) is read in
place (an absolute path is refused by the Camtrap DP schema); an http(s) URL (served here from
127.0.0.1) is fetched only with data.allow_http=true, at most data.max_image_bytes, once; what
cannot be fetched is a problem with the media table's line and the fix. (s3:// media:
tests/integration/test_dataset_media_s3.py.)"""

from __future__ import annotations

import csv
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.formats import write_table

from camtrap.config import DataConfig
from camtrap.dataset import ImageLimits, load_data, validate_data
from camtrap.dataset.media import is_uri, local_path

DP = DataConfig(format="camtrap-dp")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def web(package_once) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving the package folder; (base URL, requested paths)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            requested.append(self.path)

    handler = functools.partial(Handler, directory=str(package_once))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()


def _rewrite_media(root: Path, to_uri) -> list[dict[str, str]]:
    """media.csv with the first 3 filePaths replaced by to_uri(row); the package's own copies
    of those images removed, so only the URI can give them."""
    with (root / "media.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows[:3]:
        (root / row["filePath"]).unlink()
        row["filePath"] = to_uri(row)
    write_table(root / "media.csv", "media", rows)
    return rows


def test_local_media_by_file_uri_are_read_in_place(package, package_once):
    rows = _rewrite_media(package, lambda r: f"file://{package_once / r['filePath']}")
    data = load_data(package, DP)
    assert len(data.frame) == 21
    first = data.frame.set_index("id").loc[rows[0]["mediaID"]]
    assert first["filepath"] == rows[0]["filePath"]  # as the user wrote it
    assert first["path"] == rows[0]["filePath"].removeprefix("file://")  # in place: not copied


def test_an_absolute_file_path_is_refused_by_the_schema(package, package_once):
    _rewrite_media(package, lambda r: str(package_once / r["filePath"]))
    _, problems = validate_data(package, DP)
    assert [(p.file, p.line) for p in problems if "filePath" in p.message] == [
        ("media.csv", 2), ("media.csv", 3), ("media.csv", 4)]  # fmt: skip


def test_http_media_need_allow_http_then_are_fetched_once(package, web):
    base, requested = web
    rows = _rewrite_media(package, lambda r: f"{base}/{r['filePath']}")
    data, problems = validate_data(package, DP)
    assert data is None
    assert [(p.file, p.line, p.id) for p in problems] == [
        ("media.csv", i + 2, rows[i]["mediaID"]) for i in range(3)
    ]
    assert "fetched only with data.allow_http=true" in problems[0].message
    assert problems[0].fix.startswith("set data.allow_http=true")
    assert requested == []  # nothing fetched without the setting

    allowed = DP.model_copy(update={"allow_http": True})
    data = load_data(package, allowed)
    assert len(data.frame) == 21 and len(requested) == 3
    for row in rows[:3]:
        assert local_path(row["filePath"]).is_file()
    again = load_data(package, allowed)
    assert len(requested) == 3  # cached: not fetched again
    assert again.fingerprint == data.fingerprint


def test_a_missing_or_oversized_http_image_is_a_problem_with_its_line(package, web):
    base, _ = web
    rows = _rewrite_media(package, lambda r: f"{base}/{r['filePath']}")
    rows[0]["filePath"] = f"{base}/media/nope.jpg"
    write_table(package / "media.csv", "media", rows)
    allowed = DP.model_copy(update={"allow_http": True})
    small = ImageLimits(max_bytes=1000)  # below every photo's size (data.max_image_bytes)
    _, problems = validate_data(package, allowed, limits=small)
    fetched = [(p.line, p.message.split("' ", 1)[1]) for p in problems if "filePath" in p.message]
    assert fetched == [(2, "cannot be fetched (File not found)"),
                       (3, "is over data.max_image_bytes (1000 bytes)"),
                       (4, "is over data.max_image_bytes (1000 bytes)")]  # fmt: skip
    _, problems = validate_data(package, allowed)
    assert [(p.line, "cannot be fetched" in p.message) for p in problems] == [(2, True)]


def test_which_paths_are_uris():
    assert [is_uri(p) for p in ["s3://b/k.jpg", "https://x/y.jpg", "file:///a.jpg", "media/a.jpg",
                                "/abs.jpg"]] == [True, True, True, False, False]  # fmt: skip
