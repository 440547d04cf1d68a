"""camtrap.storage against moto's S3 server over real HTTP (and against local folders)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from camtrap import dataset, storage
from camtrap.errors import StorageError
from camtrap.storage import files, mirror, retry, s3, uris


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _dataset(root: Path, n_images: int = 5) -> Path:
    names = [f"train_features/img{i}.jpg" for i in range(n_images)]
    rows = "".join(f"img{i},{name},S{i % 2}\n" for i, name in enumerate(names))
    _write(root / "train_features.csv", ("id,filepath,site\n" + rows).encode())
    labels = "".join(f"img{i},1.0,0.0\n" for i in range(n_images))
    _write(root / "train_labels.csv", ("id,cat,dog\n" + labels).encode())
    for i, name in enumerate(names):
        _write(root / name, bytes([i]) * (100 + i))
    return root


def _put_tree(s3_server, local: Path, bucket: str, prefix: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local).as_posix()}"
            s3_server.client().upload_file(str(path), bucket, key)


def test_join_and_cache_path(tmp_path):
    assert storage.join("s3://b/runs/", "part1", "x/") == "s3://b/runs/part1/x"
    assert storage.join(str(tmp_path), "a", "b") == str(tmp_path / "a" / "b")
    assert uris.cache_path_for("s3://bkt/a/../b", tmp_path) == tmp_path / "s3" / "bkt" / "a" / "b"
    assert files.safe_relative("train/x.jpg")
    assert not files.safe_relative("../x.jpg")
    assert not files.safe_relative("/etc/passwd")


def test_write_read_exists_roundtrip(s3_server, bucket):
    uri = f"s3://{bucket}/some/dir/file.txt"
    assert not storage.exists(uri)
    storage.write_text(uri, "hello")
    assert storage.exists(uri)
    assert storage.read_text(uri) == "hello"
    assert s3_server.keys(bucket) == ["some/dir/file.txt"]


def test_upload_download_file(s3_server, bucket, tmp_path):
    source = _write(tmp_path / "src.bin", b"x" * 1000)
    storage.upload_file(source, f"s3://{bucket}/a/src.bin")
    storage.download_file(f"s3://{bucket}/a/src.bin", tmp_path / "out" / "copy.bin")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == b"x" * 1000
    assert not list((tmp_path / "out").glob(".*.tmp"))  # the temp file is gone


def test_local_etag_matches_s3_for_single_and_multipart(s3_server, bucket, tmp_path):
    small = _write(tmp_path / "small.bin", b"abc" * 1000)
    big = _write(tmp_path / "big.bin", bytes(range(256)) * 4096 * 12)  # 12 MiB
    storage.upload_file(small, f"s3://{bucket}/small.bin")
    chunk = 5 * 2**20  # S3's smallest part: a 3-part upload
    s3.s3_filesystem().put_file(str(big), f"{bucket}/big.bin", chunksize=chunk)
    listed = storage.list_files(f"s3://{bucket}")
    assert listed["small.bin"].etag == s3.local_etag(small)
    assert listed["big.bin"].etag.endswith("-3")
    assert listed["big.bin"].etag == s3.local_etag(big, chunk=chunk)


def test_wrong_bucket_is_a_storage_error_naming_the_uri(s3_server):
    uri = "s3://no-such-bucket-camtrap/data"
    with pytest.raises(StorageError) as info:
        storage.list_files(uri)
    message = str(info.value)
    assert uri in message and "fix:" in message
    assert s3_server.endpoint not in message
    assert "127.0.0.1" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_key_is_a_storage_error(s3_server, bucket):
    with pytest.raises(StorageError, match=rf"s3://{bucket}/nope.csv.*does not exist"):
        storage.read_bytes(f"s3://{bucket}/nope.csv")


def test_unreachable_endpoint_is_a_storage_error_without_the_endpoint(monkeypatch, free_port):
    endpoint = f"http://127.0.0.1:{free_port}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    # botocore's own retries are off in s3_filesystem (else ~20 s here); camtrap's budget is 1 s.
    monkeypatch.setenv("CAMTRAP_S3_RETRY_SECONDS", "1")
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", 0.01)
    with pytest.raises(StorageError) as info:
        storage.read_bytes("s3://bucket-x/file.csv")
    assert "s3://bucket-x/file.csv" in str(info.value)
    assert endpoint not in str(info.value) and "127.0.0.1" not in str(info.value)


def test_transient_errors_are_retried(monkeypatch):
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", 0.0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert retry.attempt(flaky, "read", "s3://b/k") == "ok"
    assert len(calls) == 3


def test_errors_s3fs_used_to_retry_are_retried_here():
    # s3fs's own retries are off now (s3_filesystem); these it retried must still be retried.
    from botocore.exceptions import FlexibleChecksumError, HTTPClientError
    from botocore.parsers import ResponseParserError

    assert retry.is_transient(HTTPClientError(error="Bad status line"))
    assert retry.is_transient(ResponseParserError("unparseable XML from a throttled S3"))
    assert retry.is_transient(FlexibleChecksumError(error_msg="crc32 of the body differs"))
    assert not retry.is_transient(OSError(errno.EINVAL, "At least one of the pre-conditions"))


def test_permanent_errors_are_not_retried(monkeypatch):
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(StorageError):
        retry.attempt(missing, "read", "s3://b/k")
    assert len(calls) == 1


def test_fetch_dataset_downloads_once_then_nothing_unchanged(s3_server, bucket, tmp_path):
    local = _dataset(tmp_path / "src")
    _put_tree(s3_server, local, bucket, "data")
    uri = f"s3://{bucket}/data"
    cache = tmp_path / "cache"

    root = dataset.fetch_dataset(uri, cache)
    assert root == cache
    for path in local.rglob("*"):
        if path.is_file():
            assert (cache / path.relative_to(local)).read_bytes() == path.read_bytes()

    names = dataset.image_names(cache / "train_features.csv")
    first = mirror.fetch_files(uri, names, cache)
    assert first.downloaded == [] and len(first.reused) == 5

    # One image changes on S3: only it comes over again, and the digest changes.
    s3_server.client().put_object(Bucket=bucket, Key="data/" + names[2], Body=b"new content")
    second = mirror.fetch_files(uri, names, cache)
    assert second.downloaded == [names[2]]
    assert (cache / names[2]).read_bytes() == b"new content"
    assert second.digest != first.digest
    manifest = json.loads((cache / mirror.MANIFEST_NAME).read_text())
    assert set(manifest) == {"train_features.csv", "train_labels.csv", *names}


def test_fetch_reports_missing_and_unsafe_names_without_writing_outside(
    s3_server, bucket, tmp_path
):
    s3_server.client().put_object(Bucket=bucket, Key="d/ok.jpg", Body=b"1")
    cache = tmp_path / "cache"
    report = mirror.fetch_files(f"s3://{bucket}/d", ["ok.jpg", "gone.jpg", "../x.jpg"], cache)
    assert report.downloaded == ["ok.jpg"]
    assert report.missing == ["gone.jpg", "../x.jpg"]
    assert not (tmp_path / "x.jpg").exists()


def test_fetch_from_a_missing_prefix_is_a_storage_error(s3_server, bucket, tmp_path):
    with pytest.raises(StorageError, match=rf"s3://{bucket}/nothing-here holds no files"):
        dataset.fetch_dataset(f"s3://{bucket}/nothing-here", tmp_path)


def test_fetch_local_data_uses_it_in_place(tmp_path):
    local = _dataset(tmp_path / "src")
    assert dataset.fetch_dataset(str(local), tmp_path / "unused") == local
    assert not (tmp_path / "unused").exists()


def test_sync_dir_to_uri_uploads_only_changes_and_state_last(s3_server, bucket, tmp_path):
    run = tmp_path / "run"
    _write(run / "metrics" / "epochs.csv", b"epoch\n1\n")
    _write(run / "state" / "last.pt", b"state-1")
    _write(run / "run.json", b"{}")
    _write(run / ".x.pt.abcd.tmp", b"partial")
    uri = f"s3://{bucket}/runs/part1/r1"

    uploaded = mirror.sync_dir_to_uri(run, uri, last=("state/last.pt", "run.json"))
    assert uploaded == ["metrics/epochs.csv", "state/last.pt", "run.json"]
    assert s3_server.keys(bucket) == [
        "runs/part1/r1/metrics/epochs.csv",
        "runs/part1/r1/run.json",
        "runs/part1/r1/state/last.pt",
    ]
    assert mirror.sync_dir_to_uri(run, uri) == []
    _write(run / "state" / "last.pt", b"state-2")
    assert mirror.sync_dir_to_uri(run, uri) == ["state/last.pt"]


def test_sync_uri_to_dir_mirrors_and_deletes(s3_server, bucket, tmp_path):
    uri = f"s3://{bucket}/runs/r"
    storage.write_bytes(f"{uri}/state/last.pt", b"remote-state")
    storage.write_bytes(f"{uri}/split.csv", b"id\n")
    local = tmp_path / "mirror"
    _write(local / "stale.pth", b"from a failed attempt")
    _write(local / "split.csv", b"id\n")

    downloaded = mirror.sync_uri_to_dir(uri, local, delete=True)
    assert downloaded == ["state/last.pt"]
    assert (local / "state" / "last.pt").read_bytes() == b"remote-state"
    assert not (local / "stale.pth").exists()
    assert mirror.sync_uri_to_dir(uri, local) == []


def test_sync_skips_keys_that_lead_outside_the_folder(s3_server, bucket, tmp_path, caplog):
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="runs/part1/r1/../../../x", Body=b"escaped")
    client.put_object(Bucket=bucket, Key="runs/part1/r1/ok.txt", Body=b"ok")
    local = tmp_path / "a" / "b" / "c" / "local"
    with caplog.at_level("WARNING", logger="camtrap"):
        assert mirror.sync_uri_to_dir(f"s3://{bucket}/runs/part1/r1", local) == ["ok.txt"]
    assert (local / "ok.txt").read_bytes() == b"ok"
    assert not (tmp_path / "a" / "x").exists()  # local/../../../x
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["ok.txt"]
    assert f"s3://{bucket}/runs/part1/r1/../../../x" in caplog.text


def test_sync_never_writes_through_a_link_that_leads_outside(s3_server, bucket, tmp_path):
    storage.write_bytes(f"s3://{bucket}/r/linked/evil.txt", b"evil")
    outside = tmp_path / "outside"
    outside.mkdir()
    local = tmp_path / "local"
    local.mkdir()
    (local / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageError, match="linked/evil.txt would be written outside"):
        mirror.sync_uri_to_dir(f"s3://{bucket}/r", local)
    assert list(outside.iterdir()) == []


def test_sync_delete_keeps_what_a_link_leads_to(s3_server, bucket, tmp_path):
    # A regression guard: rglob (Python 3.11) does not descend into linked folders, and the
    # delete branch also checks that each file it unlinks lies inside the folder.
    storage.write_bytes(f"s3://{bucket}/r/kept.txt", b"k")
    outside = _write(tmp_path / "outside" / "precious.txt", b"p").parent
    local = tmp_path / "local"
    _write(local / "stale.txt", b"s")
    (local / "linked").symlink_to(outside, target_is_directory=True)
    (local / "file-link").symlink_to(outside / "precious.txt")
    assert mirror.sync_uri_to_dir(f"s3://{bucket}/r", local, delete=True) == ["kept.txt"]
    assert (outside / "precious.txt").read_bytes() == b"p"
    assert not (local / "stale.txt").exists() and not (local / "file-link").is_symlink()
    assert (local / "linked").is_symlink()


def test_inside_checks_the_resolved_folder(tmp_path):
    (tmp_path / "root" / "d").mkdir(parents=True)
    (tmp_path / "root" / "out").symlink_to(tmp_path, target_is_directory=True)
    root = tmp_path / "root"
    assert files.inside(root, "d/x.txt") == root / "d" / "x.txt"
    for rel in ("../x.txt", "/etc/x", "out/x.txt", "d/../../x.txt"):
        with pytest.raises(StorageError, match="would be written outside"):
            files.inside(root, rel)


def test_sync_from_a_prefix_that_does_not_exist_yet_is_empty(s3_server, bucket, tmp_path):
    assert mirror.sync_uri_to_dir(f"s3://{bucket}/runs/new", tmp_path / "x") == []


def test_local_to_local_sync(tmp_path):
    run = tmp_path / "run"
    _write(run / "a.txt", b"a")
    out = tmp_path / "out"
    assert mirror.sync_dir_to_uri(run, str(out)) == ["a.txt"]
    assert mirror.sync_dir_to_uri(run, str(out)) == []
    assert (out / "a.txt").read_bytes() == b"a"
    assert mirror.sync_dir_to_uri(run, str(run)) == []


def test_camtrap_validate_checks_a_dataset_in_s3(
    s3_server, bucket, demo_dir, tmp_path, monkeypatch, capsys
):
    from camtrap.cli import main

    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))
    uri = s3_server.upload_tree(demo_dir, bucket, "train")
    assert main(["validate", "--data", uri]) == 0
    # 8 classes x 4 images in the demo set
    assert "32 images, 8 classes, no problems" in capsys.readouterr().out
    s3_server.client().delete_object(Bucket=bucket, Key="train/train_features/ZJ000003.jpg")
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache2"))  # a machine without copies
    assert main(["validate", "--data", uri]) == 2
    err = capsys.readouterr().err
    assert "ZJ000003" in err and "does not exist" in err


def test_runs_verify_checks_a_run_in_s3(s3_server, bucket, tmp_path):
    from camtrap import runfolder
    from camtrap.storage.files import file_sha256

    run = tmp_path / "run"
    _write(run / "a.txt", b"alpha")
    _write(run / "state" / "last.pt", b"state")
    files = {rel: {"bytes": (run / rel).stat().st_size,
                   "sha256": file_sha256(run / rel)}
             for rel in ("a.txt", "state/last.pt")}  # fmt: skip
    runfolder.write_run_json(run, {"status": "completed", "files": files})
    uri = f"s3://{bucket}/runs/smoke/r1"
    runfolder.push(run, uri)
    assert runfolder.verify(uri) == []
    s3_server.client().put_object(Bucket=bucket, Key="runs/smoke/r1/a.txt", Body=b"alphx")
    s3_server.client().delete_object(Bucket=bucket, Key="runs/smoke/r1/state/last.pt")
    assert runfolder.verify(uri) == [
        "a.txt: sha256 differs from run.json",
        "state/last.pt: missing",
    ]


# --- keys with an empty segment (`prefix//a.jpg`, legal in S3) ---------------------------------


def test_a_key_with_an_empty_segment_is_listed_synced_and_fetched(s3_server, bucket, tmp_path):
    client = s3_server.client()
    for key, body in [("d//a.jpg", b"first"), ("d/sub//b.jpg", b"inner"), ("d/c.jpg", b"plain")]:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    uri = f"s3://{bucket}/d"
    # Relative to s3://bucket/d, the key d//a.jpg is "/a.jpg": its empty segment is kept.
    assert sorted(storage.list_files(uri)) == ["/a.jpg", "c.jpg", "sub//b.jpg"]
    assert sorted(storage.list_files(f"{uri}/")) == ["/a.jpg", "c.jpg", "sub//b.jpg"]

    local = tmp_path / "copy"
    assert mirror.sync_uri_to_dir(uri, local) == ["/a.jpg", "c.jpg", "sub//b.jpg"]
    # A local path has no empty segments: d//a.jpg lands at a.jpg.
    assert (local / "a.jpg").read_bytes() == b"first"
    assert (local / "sub" / "b.jpg").read_bytes() == b"inner"
    assert mirror.sync_uri_to_dir(uri, local, delete=True) == []  # nothing new, nothing deleted
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.jpg")) == [
        "a.jpg", "c.jpg", "sub/b.jpg",
    ]  # fmt: skip

    cache = tmp_path / "cache"
    report = mirror.fetch_files(uri, ["sub//b.jpg", "c.jpg", "a.jpg"], cache)
    assert report.downloaded == ["sub//b.jpg", "c.jpg"]
    assert report.missing == ["a.jpg"]  # no key d/a.jpg: reported, not a failed fetch
    assert (cache / "sub//b.jpg").read_bytes() == b"inner"


def test_an_empty_segment_key_that_collides_with_a_plain_one_is_skipped(
    s3_server, bucket, tmp_path, caplog
):
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="e/c.jpg", Body=b"plain")
    client.put_object(Bucket=bucket, Key="e//c.jpg", Body=b"empty segment")
    local = tmp_path / "copy"
    with caplog.at_level("WARNING", logger="camtrap"):
        assert mirror.sync_uri_to_dir(f"s3://{bucket}/e", local, delete=True) == ["c.jpg"]
    assert (local / "c.jpg").read_bytes() == b"plain"
    assert f"skipped s3://{bucket}/e//c.jpg: it would land on the same local file" in caplog.text
    assert mirror.sync_uri_to_dir(f"s3://{bucket}/e", local) == []


def test_folder_markers_are_not_listed_as_files(s3_server, bucket, tmp_path):
    # The S3 console's "Create folder" makes zero-byte keys ending in "/": no files to copy.
    client = s3_server.client()
    for key, body in [("f/", b""), ("f/sub/", b""), ("f/sub/x.jpg", b"x")]:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    assert sorted(storage.list_files(f"s3://{bucket}/f")) == ["sub/x.jpg"]
    assert mirror.sync_uri_to_dir(f"s3://{bucket}/f", tmp_path / "copy") == ["sub/x.jpg"]
    assert (tmp_path / "copy" / "sub" / "x.jpg").read_bytes() == b"x"
