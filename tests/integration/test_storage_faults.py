"""camtrap.storage when S3 or the disk misbehaves: lasting 503s, bytes altered in transit, an
object replaced between LIST and GET, opaque ETags, a full disk, a killed fetch.

S3 is moto's server on 127.0.0.1, reached through a small proxy (below) that counts requests and
alters answers as a test asks. Retry waits run on a fake clock: no test sleeps for a backoff."""

from __future__ import annotations

import errno
import http.client
import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from camtrap import storage
from camtrap.errors import StorageError
from camtrap.storage import mirror, retry, s3

SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
_HOP_BY_HOP = {"transfer-encoding", "connection", "keep-alive", "content-length"}

# What the proxy does with one request: None forwards it untouched; "503" answers SlowDown;
# "flip" / "truncate" alter the body of the answer (checksum headers dropped, so only camtrap's
# own check can notice); "opaque" gives the answer an ETag that is no MD5, as SSE-KMS does
# ("opaque-flip": and flips a byte); "lost" forwards the request, then drops the connection
# without an answer (the write happened, the client never hears of it).
Policy = Callable[[str, str], str | None]


class S3Proxy:
    def __init__(self, upstream: str, policy: Policy) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.policy = policy
        self.seen: list[tuple[str, str]] = []  # (method, "bucket/key") of every request
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, method: str | None = None, key: str | None = None) -> int:
        with self.lock:
            return sum(
                1 for m, k in self.seen if method in (None, m) and key in (None, k)
            )  # fmt: skip


def _handler(proxy: S3Proxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def _handle(self) -> None:
            body = self._body()
            key = unquote(urlsplit(self.path).path).lstrip("/")
            with proxy.lock:
                proxy.seen.append((self.command, key))
            action = proxy.policy(self.command, key)
            if action == "503":
                self._send(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                return
            status, headers, data = self._forward(body)
            if action == "lost":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action in ("flip", "truncate", "opaque", "opaque-flip") and status == 200:
                headers, data = _alter(action, headers, data)
            self._send(status, headers, data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                return response.status, kept, data
            finally:
                conn.close()

        def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def _alter(action: str, headers: list[tuple[str, str]], data: bytes):
    headers = [(k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")]
    if action in ("flip", "opaque-flip") and data:
        data = bytes([data[0] ^ 0xFF]) + data[1:]
    if action == "truncate":
        data = data[:-1]
    if action.startswith("opaque"):
        headers = [(k, v) for k, v in headers if k.lower() != "etag"]
        headers += [("ETag", '"' + "f" * 32 + '"'), ("x-amz-server-side-encryption", "aws:kms")]
    return headers, data


@pytest.fixture
def proxy(s3_server, monkeypatch) -> Iterator[Callable[[Policy], S3Proxy]]:
    """`proxy(policy)` starts a proxy in front of moto and points this process's S3 at it."""
    started: list[S3Proxy] = []

    def start(policy: Policy) -> S3Proxy:
        running = S3Proxy(s3_server.endpoint, policy)
        threading.Thread(target=running.server.serve_forever, daemon=True).start()
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.shutdown()
        running.server.server_close()


class FakeTime:
    """storage's clock and sleep: a sleep advances the clock at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    """Retry waits on a fake clock, without jitter (raising=False: before this change storage
    had none of these, and the tests must fail there by their assertions)."""
    fake = FakeTime()
    monkeypatch.setattr(retry, "_clock", fake.clock, raising=False)
    monkeypatch.setattr(retry, "_sleep", fake.sleep, raising=False)
    monkeypatch.setattr(retry, "JITTER", 0.0, raising=False)
    monkeypatch.delenv("CAMTRAP_S3_RETRY_SECONDS", raising=False)
    return fake


def _put(s3_server, bucket: str, key: str, body: bytes) -> None:
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=body)


# --- item 4: one retry layer, bounded by time ------------------------------------------------


@pytest.mark.parametrize("operation", ["read", "upload", "list"])
def test_a_lasting_503_costs_eight_requests_then_a_storage_error(
    s3_server, bucket, proxy, fake_time, tmp_path, operation
):
    source = tmp_path / "f.bin"
    source.write_bytes(b"12345")
    uri = f"s3://{bucket}/d/f.bin"
    calls = {
        "read": lambda: storage.read_bytes(uri),
        "upload": lambda: storage.upload_file(source, uri),
        "list": lambda: storage.list_files(f"s3://{bucket}/d"),
    }
    slow = proxy(lambda method, key: "503")
    with pytest.raises(StorageError) as info:
        calls[operation]()
    # Default budget 60 s, waits 0.5, 1, 2, 4, 8, 15, 15 (capped): tries at 0, 0.5, 1.5, 3.5,
    # 7.5, 15.5, 30.5, 45.5 s; the next would start at 60.5 s. One request per try (botocore
    # and s3fs retry nothing): 8. Before: 5 (botocore) x 5 (s3fs) x 3 (camtrap) = 75.
    assert slow.count() == 8
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    message = str(info.value)
    assert f"s3://{bucket}/d" in message and "8 tries" in message and "fix:" in message
    assert "127.0.0.1" not in message


def test_the_retry_budget_comes_from_the_environment(
    s3_server, bucket, proxy, fake_time, monkeypatch
):
    monkeypatch.setenv("CAMTRAP_S3_RETRY_SECONDS", "3")
    slow = proxy(lambda method, key: "503")
    with pytest.raises(StorageError):
        storage.read_bytes(f"s3://{bucket}/k")
    assert slow.count() == 3  # tries at 0, 0.5, 1.5 s; the next (3.5 s) is past 3 s
    monkeypatch.setenv("CAMTRAP_S3_RETRY_SECONDS", "soon")
    with pytest.raises(StorageError, match="CAMTRAP_S3_RETRY_SECONDS='soon'.*fix:"):
        storage.read_bytes(f"s3://{bucket}/k")


# --- item 2: downloads are the listed object, whole ------------------------------------------


@pytest.mark.parametrize("fault", ["flip", "truncate", "opaque-flip"])
def test_a_corrupted_download_is_retried_then_correct(
    s3_server, bucket, proxy, fake_time, tmp_path, fault
):
    storage.write_bytes(f"s3://{bucket}/d/a.bin", b"0123456789")  # stores its sha256 too
    first_get = iter([fault])
    watch = proxy(lambda method, key: next(first_get, None) if method == "GET" else None)
    target = tmp_path / "out" / "a.bin"
    storage.download_file(f"s3://{bucket}/d/a.bin", target)
    assert target.read_bytes() == b"0123456789"
    assert watch.count("GET") == 2 and fake_time.sleeps == [0.5]
    assert sorted(os.listdir(target.parent)) == ["a.bin"]  # no temp file left


@pytest.mark.parametrize("fault", ["flip", "truncate", "opaque-flip"])
def test_a_download_that_stays_corrupt_is_a_storage_error_naming_the_uri(
    s3_server, bucket, proxy, fake_time, tmp_path, fault
):
    storage.write_bytes(f"s3://{bucket}/d/a.bin", b"0123456789")
    watch = proxy(lambda method, key: fault if method == "GET" else None)
    target = tmp_path / "out" / "a.bin"
    with pytest.raises(StorageError) as info:
        storage.download_file(f"s3://{bucket}/d/a.bin", target)
    assert f"s3://{bucket}/d/a.bin" in str(info.value) and "fix:" in str(info.value)
    assert watch.count("GET") == 8
    assert not target.parent.exists() or os.listdir(target.parent) == []


def test_an_opaque_etag_is_not_taken_for_a_corrupt_download(s3_server, bucket, proxy, tmp_path):
    # SSE-KMS: the ETag is no MD5 of the content. The download must not fail for that; the
    # sha256 stored at upload checks the bytes instead.
    storage.write_bytes(f"s3://{bucket}/d/a.bin", b"0123456789")
    watch = proxy(lambda method, key: "opaque" if method == "GET" else None)
    storage.download_file(f"s3://{bucket}/d/a.bin", tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"0123456789"
    assert watch.count("GET") == 1


def test_an_object_replaced_between_list_and_get_is_not_taken(s3_server, bucket, tmp_path):
    _put(s3_server, bucket, "d/a.jpg", b"version 1")
    listing = storage.list_files(f"s3://{bucket}/d")
    _put(s3_server, bucket, "d/a.jpg", b"version 2")  # same size, new content
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match=rf"s3://{bucket}/d/a.jpg: it changed since it was"):
        mirror.fetch_files(f"s3://{bucket}/d", ["a.jpg"], cache, listing=listing)
    assert not (cache / "a.jpg").exists()
    manifest = cache / mirror.MANIFEST_NAME
    assert not manifest.exists() or "a.jpg" not in json.loads(manifest.read_text())


def test_the_fetch_manifest_is_written_as_files_arrive(s3_server, bucket, tmp_path, monkeypatch):
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    for name in names:
        _put(s3_server, bucket, f"d/{name}", name.encode())
    cache = tmp_path / "cache"
    monkeypatch.setattr(mirror, "DOWNLOAD_THREADS", 1)  # one at a time, in order
    monkeypatch.setattr(mirror, "MANIFEST_FLUSH_SECONDS", 0.0, raising=False)
    on_disk: list[list[str]] = []
    download = storage.download_file

    def download_noting_the_manifest(uri, path, *args, **kwargs):
        # What a kill -9 at this moment would leave: the manifest file as it is now.
        manifest = cache / mirror.MANIFEST_NAME
        on_disk.append(sorted(json.loads(manifest.read_text())) if manifest.exists() else [])
        download(uri, path, *args, **kwargs)

    monkeypatch.setattr(storage, "download_file", download_noting_the_manifest)
    report = mirror.fetch_files(f"s3://{bucket}/d", names, cache)
    assert report.downloaded == names
    assert on_disk == [[], ["a.jpg"], ["a.jpg", "b.jpg"], ["a.jpg", "b.jpg", "c.jpg"]]


def _age(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


@pytest.mark.parametrize("how", ["fetch", "sync"])
def test_orphan_temp_files_are_removed_when_a_fetch_or_sync_starts(
    s3_server, bucket, tmp_path, how
):
    _put(s3_server, bucket, "d/a.jpg", b"a")
    local = tmp_path / "local"
    orphans = [
        _age(local / ".a.jpg.1a2b3c4d.tmp", 3600),  # a killed download's
        _age(local / "sub" / ".last.pt.k3_9x0qz.tmp", 3600),  # a killed atomic write's
    ]
    in_flight = _age(local / ".b.jpg.0badf00d.tmp", 5)  # another process writing it now
    not_ours = _age(local / "notes.tmp", 3600)
    if how == "fetch":
        mirror.fetch_files(f"s3://{bucket}/d", ["a.jpg"], local)
    else:
        mirror.sync_uri_to_dir(f"s3://{bucket}/d", local)
    assert [p.exists() for p in orphans] == [False, False]
    assert in_flight.exists() and not_ours.exists()
    assert (local / "a.jpg").read_bytes() == b"a"


# --- item 3: unchanged files are recognised where ETags are opaque ----------------------------


def test_an_upload_stores_the_sha256_as_metadata(s3_server, bucket, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"alpha")
    storage.upload_file(tmp_path / "a.txt", f"s3://{bucket}/r/a.txt")
    storage.write_bytes(f"s3://{bucket}/r/b.txt", b"bravo")
    client = s3_server.client()
    assert client.head_object(Bucket=bucket, Key="r/a.txt")["Metadata"] == {
        "camtrap-sha256": "8ed3f6ad685b959ead7022518e1af76cd816f8e8ec7ccdda1ed4018e8f2223f8"
    }
    assert client.head_object(Bucket=bucket, Key="r/b.txt")["Metadata"] == {
        "camtrap-sha256": "f144a6907dc4284d1f9fe6a7d9b9ff53c02c1d07ba68f24d413d7ff7f757a782"
    }


def test_unchanged_files_are_not_uploaded_again_where_etags_are_opaque(
    s3_server, bucket, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.txt").write_bytes(b"alpha")
    (run / "b.txt").write_bytes(b"bravo")
    uri = f"s3://{bucket}/runs/r"
    assert mirror.sync_dir_to_uri(run, uri) == ["a.txt", "b.txt"]

    listed = storage.list_files

    def opaque_etags(target):  # an SSE-KMS bucket: same sizes, ETags unrelated to the content
        return {k: storage.RemoteFile(v.size, "e" * 32) for k, v in listed(target).items()}

    monkeypatch.setattr(storage, "list_files", opaque_etags)
    assert mirror.sync_dir_to_uri(run, uri) == []
    (run / "b.txt").write_bytes(b"BRAVO")  # same size, new content
    assert mirror.sync_dir_to_uri(run, uri) == ["b.txt"]
    assert storage.read_bytes(f"{uri}/b.txt") == b"BRAVO"


def test_an_unchanged_sync_with_md5_etags_makes_no_request_but_the_listing(
    s3_server, bucket, tmp_path, proxy
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.txt").write_bytes(b"alpha")
    (run / "b.txt").write_bytes(b"bravo")
    uri = f"s3://{bucket}/runs/r"
    mirror.sync_dir_to_uri(run, uri)
    watch = proxy(lambda method, key: None)
    assert mirror.sync_dir_to_uri(run, uri) == []
    assert watch.count() == 1 and watch.count("GET", bucket) == 1  # the LIST; no HEAD


# --- item 5: a full disk says so -------------------------------------------------------------


class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_download_says_disk_full_at_the_path(
    s3_server, bucket, tmp_path, monkeypatch
):
    _put(s3_server, bucket, "d/a.bin", b"abc")
    opened = []
    monkeypatch.setattr(
        s3, "_new_file", lambda path: opened.append(path) or _FullDisk(), raising=False
    )
    target = tmp_path / "cache" / "a.bin"
    with pytest.raises(StorageError) as info:
        storage.download_file(f"s3://{bucket}/d/a.bin", target)
    assert str(info.value) == (
        f"cannot download s3://{bucket}/d/a.bin: disk full at {target} — fix: free space or set "
        "CAMTRAP_CACHE_DIR to a bigger disk"
    )
    assert len(opened) == 1  # not retried: waiting does not free a disk


def test_a_full_disk_on_a_local_write_says_disk_full_at_the_path(tmp_path, monkeypatch):
    target = tmp_path / "out" / "run.json"
    storage.write_text(target, "old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError) as info:
        storage.write_text(target, "new")
    assert str(info.value) == (
        f"disk full at {target} — fix: free space or set CAMTRAP_CACHE_DIR to a bigger disk"
    )
    assert target.read_text() == "old" and os.listdir(target.parent) == ["run.json"]


# --- item 7: a conditional write whose answer was lost ----------------------------------------


def test_a_create_whose_answer_was_lost_is_still_won(s3_server, bucket, proxy, fake_time):
    # The first PUT lands but its answer never arrives; the retry then meets If-None-Match's
    # 412. The bytes there are this caller's, so it has won; another caller's create has not.
    puts = iter(["lost"])
    watch = proxy(lambda method, key: next(puts, None) if method == "PUT" else None)
    assert storage.create_exclusive(f"s3://{bucket}/run.lease", b"lease-a") is True
    assert storage.create_exclusive(f"s3://{bucket}/run.lease", b"lease-b") is False
    assert watch.count("PUT") == 3 and storage.read_bytes(f"s3://{bucket}/run.lease") == b"lease-a"


# --- a local folder that can't be written, or a parent that is a file ----------------------------


def _is_under(path: object, folder: Path) -> bool:
    try:
        return Path(os.fspath(path)).absolute().is_relative_to(folder) and Path(path) != folder
    except TypeError:  # an open file descriptor
        return False


@pytest.fixture
def read_only(monkeypatch) -> Callable[[Path], None]:
    """Make a folder read-only for this test: chmod 0o555, or, as root (whom modes do not bind),
    the calls that create something under it raise PermissionError as the kernel would."""
    import builtins
    import io

    chmodded: list[Path] = []

    def deny(folder: Path) -> None:
        folder = folder.absolute()
        if os.geteuid() != 0:
            folder.chmod(0o555)
            chmodded.append(folder)
            return

        def denied(path: object) -> PermissionError:
            return PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

        def guard(real: Callable, writes: Callable[..., bool]) -> Callable:
            def call(path, *args, **kwargs):
                if _is_under(path, folder) and writes(*args, **kwargs):
                    raise denied(path)
                return real(path, *args, **kwargs)

            return call

        create = os.O_WRONLY | os.O_RDWR | os.O_CREAT
        monkeypatch.setattr(os, "open", guard(os.open, lambda flags, *a, **k: flags & create))
        writing = guard(io.open, lambda mode="r", *a, **k: any(c in mode for c in "wxa+"))
        monkeypatch.setattr(io, "open", writing)
        monkeypatch.setattr(builtins, "open", writing)
        monkeypatch.setattr(os, "mkdir", guard(os.mkdir, lambda *a, **k: True))

    yield deny
    for folder in chmodded:
        folder.chmod(0o755)


def test_a_read_only_folder_is_permission_denied_not_aws_credentials(tmp_path, read_only):
    out = tmp_path / "out"
    out.mkdir()
    read_only(out)
    target = out / "run.json"
    with pytest.raises(StorageError) as info:
        storage.write_text(target, "{}")
    assert str(info.value) == (
        f"cannot write {target}: permission denied — fix: check the permissions (owner, mode) "
        f"of {out}, or choose another output"
    )
    with pytest.raises(StorageError) as info:
        storage.write_text(out / "runs" / "run.json", "{}")  # a folder it can't create
    assert str(info.value) == (
        f"cannot write {out / 'runs' / 'run.json'}: permission denied — fix: check the "
        f"permissions (owner, mode) of {out}, or choose another output"
    )


def test_a_download_into_a_read_only_folder_names_the_local_file(
    s3_server, bucket, tmp_path, read_only
):
    _put(s3_server, bucket, "d/a.bin", b"abc")
    cache = tmp_path / "cache"
    cache.mkdir()
    read_only(cache)
    with pytest.raises(StorageError) as info:
        storage.download_file(f"s3://{bucket}/d/a.bin", cache / "a.bin")
    assert str(info.value) == (
        f"cannot download s3://{bucket}/d/a.bin: permission denied writing {cache / 'a.bin'} — "
        f"fix: check the permissions (owner, mode) of {cache}, or set CAMTRAP_CACHE_DIR to a "
        "folder you can write"
    )


def test_a_parent_that_is_a_file_is_named(s3_server, bucket, tmp_path):
    _put(s3_server, bucket, "d/a.bin", b"abc")
    blocker = tmp_path / "runs"
    blocker.write_text("a file where a folder should be")
    uri = f"s3://{bucket}/d/a.bin"
    with pytest.raises(StorageError) as info:  # mkdir of runs/: FileExistsError
        storage.download_file(uri, blocker / "a.bin")
    assert str(info.value) == (
        f"cannot download {uri}: {blocker} is a file, not a folder — fix: move or rename "
        f"{blocker}, or set CAMTRAP_CACHE_DIR to another folder"
    )
    deeper = blocker / "part1" / "run.json"
    with pytest.raises(StorageError) as info:  # mkdir of runs/part1: NotADirectoryError
        storage.write_text(deeper, "{}")
    assert str(info.value) == (
        f"cannot write {deeper}: {blocker} is a file, not a folder — fix: move or rename "
        f"{blocker}, or choose another output"
    )
    with pytest.raises(StorageError) as info:
        storage.read_text(blocker / "x.json")
    assert str(info.value) == (
        f"cannot read {blocker / 'x.json'}: {blocker} is a file, not a folder — fix: check the path"
    )
