"""camtrap.imagecache_hashes: a rerun on unchanged files reads none of them (their sha256 and
their check are remembered by the file's identity), and any change to a file (even of the same
size, its modification time set back) has it read, hashed and checked again."""

import hashlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from camtrap import imagecache_hashes
from camtrap.dataset import ImageLimits, contract, load_dataset
from camtrap.errors import DataError
from camtrap.imagecache import Decoder
from camtrap.imagecache_hashes import INDEX_NAME, HashMemo
from camtrap.imagecache_store import store_lock

SIZE = 32


@pytest.fixture
def root(demo_root, tmp_path) -> Path:
    """A copy of the demo dataset this test may change."""
    return Path(shutil.copytree(demo_root, tmp_path / "data"))


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (not only RACY_NS after their last change): the tests'
    files were all written a moment ago."""
    monkeypatch.setattr(imagecache_hashes, "RACY_NS", 0)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The image files validation reads, as it reads them."""
    seen: list[str] = []
    real = contract.read_image_bytes

    def reading(path, *args, **kwargs):
        seen.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(contract, "read_image_bytes", reading)
    return seen


def _validate(root: Path, store: Path, limits: ImageLimits = contract.DEFAULT_LIMITS):
    decoder = Decoder(SIZE, store)
    try:
        return load_dataset(root, check=decoder, limits=limits), decoder
    finally:
        decoder.commit()


def _bmp(colour: tuple[int, int, int]) -> bytes:
    """An uncompressed image: every colour gives a file of the same size."""
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, format="BMP")
    return out.getvalue()


def test_an_unchanged_rerun_reads_no_image_and_finds_the_same_data(root, tmp_path, settled, reads):
    first, _ = _validate(root, tmp_path / "store")
    assert len(reads) == len(first.frame) == 32
    reads.clear()
    again, decoder = _validate(root, tmp_path / "store")
    assert reads == [] and decoder.decoded == 0
    assert again.fingerprint == first.fingerprint
    assert again.frame["sha256"].tolist() == first.frame["sha256"].tolist()


def test_a_file_rewritten_in_place_with_the_same_size_and_mtime_is_hashed_again(
    root, tmp_path, settled, reads
):
    image = root / "train_features" / "ZJ000003.jpg"  # PIL goes by the bytes, not the name
    image.write_bytes(_bmp((200, 10, 10)))
    _validate(root, tmp_path / "store")
    before = image.stat()
    time.sleep(0.05)  # past the file system clock's tick: the change time moves
    new = _bmp((10, 200, 10))
    with image.open("r+b") as fh:  # same inode, same size
        fh.write(new)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # the old modification time
    after = image.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns,
    )  # fmt: skip
    reads.clear()
    data, decoder = _validate(root, tmp_path / "store")
    assert reads == [image.name] and decoder.decoded == 1
    row = data.frame.set_index("id").loc["ZJ000003"]
    assert row["sha256"] == hashlib.sha256(new).hexdigest()


def test_a_file_changed_just_before_it_was_read_is_read_again_next_time(
    root, tmp_path, monkeypatch, reads
):
    """A file changed within RACY_NS of its identity being taken could change again within the
    same tick of the file system's clock, unseen: it is not remembered (git's racy-clean rule).
    The clock is held still just after the change, so the test does not race the machine."""
    time.sleep(0.05)  # past a tick of the file system's clock
    fresh = root / "train_features" / "ZJ000005.jpg"
    fresh.write_bytes(fresh.read_bytes())
    changed = fresh.stat().st_ctime_ns
    before = max(p.stat().st_ctime_ns for p in fresh.parent.iterdir() if p != fresh)
    assert before < changed
    monkeypatch.setattr(imagecache_hashes, "time", SimpleNamespace(time_ns=lambda: changed))
    monkeypatch.setattr(imagecache_hashes, "RACY_NS", (changed - before) // 2)
    _validate(root, tmp_path / "store")
    reads.clear()
    _validate(root, tmp_path / "store")
    assert reads == [fresh.name]


def test_tighter_limits_check_remembered_images_again(root, tmp_path, settled, reads):
    first, _ = _validate(root, tmp_path / "store")
    reads.clear()
    with pytest.raises(DataError) as caught:
        _validate(root, tmp_path / "store", ImageLimits(max_pixels=300_000))
    big = {p.id for p in caught.value.problems}
    assert big and all("over the limit of 300,000 pixels" in str(p) for p in caught.value.problems)
    assert {f"{i}.jpg" for i in big} <= set(reads)
    smallest = int(os.path.getsize(first.frame["path"].iloc[0])) - 1
    with pytest.raises(DataError, match="data.max_image_bytes"):
        _validate(root, tmp_path / "store", ImageLimits(max_bytes=smallest))


def test_an_image_that_fails_its_check_is_read_and_reported_on_every_run(
    root, tmp_path, settled, reads
):
    broken = root / "train_features" / "ZJ000007.jpg"
    broken.write_bytes(broken.read_bytes()[:600])
    for run in range(3):
        reads.clear()
        with pytest.raises(DataError, match="ZJ000007.jpg is truncated or corrupt"):
            _validate(root, tmp_path / "store")
        expected = sorted(p.name for p in broken.parent.iterdir()) if run == 0 else [broken.name]
        assert sorted(reads) == expected  # after the first run, only the one that failed


def test_the_index_is_written_when_it_changed_and_merged_with_other_datasets(
    root, demo_root, tmp_path, settled
):
    store = tmp_path / "store"
    _validate(root, store)
    index = store / INDEX_NAME
    written = index.stat().st_mtime_ns
    _validate(root, store)
    assert index.stat().st_mtime_ns == written  # nothing new: not written again
    other = Path(shutil.copytree(demo_root, tmp_path / "other"))
    _validate(other, store)
    paths = set(json.loads(index.read_text())["files"])
    assert len(paths) == 64 and {Path(p).parents[1] for p in paths} == {root, other}
    assert [p.name for p in store.iterdir() if p.name.endswith(".tmp")] == []
    shutil.rmtree(root)  # a dataset gone: its entries go at the next write
    (other / "train_features" / "ZJ000001.jpg").write_bytes(_bmp((1, 2, 3)))
    _validate(other, store)
    paths = set(json.loads(index.read_text())["files"])
    assert len(paths) == 32 and {Path(p).parents[1] for p in paths} == {other}


def test_a_damaged_or_foreign_index_is_ignored_and_rewritten(root, tmp_path, settled, reads):
    store = tmp_path / "store"
    store.mkdir()
    for text in ("{not json", json.dumps({"format": 99, "files": {}}), '{"files": [1]}'):
        (store / INDEX_NAME).write_text(text)
        reads.clear()
        _validate(root, store)
        assert len(reads) == 32
    reads.clear()
    _validate(root, store)
    assert reads == []


def test_the_memo_recalls_only_what_it_was_told(tmp_path, settled):
    image = tmp_path / "a.png"
    image.write_bytes(b"x" * 10)
    memo = HashMemo(tmp_path / "store")
    calls = []

    def inspect():
        calls.append(1)
        return "f" * 64, None

    limits = (100, 1000)
    assert memo.inspected(str(image), *limits, inspect) == ("f" * 64, None)
    assert memo.inspected(str(image), *limits, inspect) == ("f" * 64, None)
    assert len(calls) == 1
    assert memo.inspected(str(image), 100, 2000, inspect) == ("f" * 64, None)  # wider: fine
    assert memo.inspected(str(image), 9, 1000, inspect) == ("f" * 64, None)  # 10 bytes > 9
    assert len(calls) == 2
    missing = str(tmp_path / "gone.png")
    failed = (None, "a problem")
    assert memo.inspected(missing, *limits, lambda: failed) == failed
    assert memo.inspected(missing, *limits, lambda: failed) == failed


def test_writing_the_index_does_not_wait_for_a_pack_being_built(root, tmp_path, settled):
    store = tmp_path / "store"
    _validate(root, store)
    image = root / "train_features" / "ZJ000002.jpg"
    image.write_bytes(image.read_bytes())  # the same bytes, a new change time: read again
    decoder = Decoder(SIZE, store)
    load_dataset(root, check=decoder)
    assert decoder.memo.dirty and decoder.kept == []
    with store_lock(store):  # as another process building a pack holds it, for minutes
        commit = threading.Thread(target=decoder.commit)
        commit.start()
        commit.join(timeout=20)
        assert not commit.is_alive()
    assert not decoder.memo.dirty
