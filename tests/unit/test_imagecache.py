"""camtrap.imagecache and the loader over it: exact pixels, decode once, content keys, damage
found and rebuilt, one writer at a time, bounded memory."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from camtrap import imagecache, imagecache_store, stages
from camtrap.dataset import load_dataset
from camtrap.errors import DataError, StorageError
from camtrap.imagecache import CacheEntry, Decoder, ensure_pack
from camtrap.images import open_rgb
from camtrap.loader import CachedBatches, DeviceNormalize, EpochShuffle, make_loader, seed_transform
from camtrap.samples import crop_entry

SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ROOT = Path(__file__).resolve().parents[2]


def _entries(data) -> list[CacheEntry]:
    frame = data.frame
    return [CacheEntry(*row) for row in frame[["id", "path", "sha256"]].itertuples(index=False)]


def _validate(root: Path, store: Path, size: int = SIZE) -> tuple:
    decoder = Decoder(size, store)
    data = load_dataset(root, check=decoder)
    decoder.commit()
    return data, decoder


def _reference(paths, size: int) -> torch.Tensor:
    transform = seed_transform(size, MEAN, STD)
    return torch.stack([transform(open_rgb(p)) for p in paths])


def _cached(pack, n: int) -> torch.Tensor:
    images, _ = CachedBatches(pack, range(n), [0] * n)[list(range(n))]
    return DeviceNormalize(MEAN, STD, torch.device("cpu"))(images)


@pytest.mark.parametrize("dataset", ["demo", "ena24"])
def test_cached_tensors_equal_the_reference_pil_path(dataset, demo_root, request, tmp_path):
    # The seed's path: PIL decode -> Resize((s, s)) -> ToTensor -> Normalize, per image.
    root = demo_root if dataset == "demo" else request.getfixturevalue("ena24_root")
    size = 64 if dataset == "demo" else 224
    data, _ = _validate(root, tmp_path, size)
    pack = ensure_pack(_entries(data), size, tmp_path).pack
    cached = _cached(pack, len(data.frame))
    reference = _reference(data.frame["path"], size)
    assert cached.shape == reference.shape == (len(data.frame), 3, size, size)
    assert torch.allclose(cached, reference, rtol=0, atol=1e-6)


def test_validation_decodes_each_new_image_once_and_the_cache_copies_them(demo_root, tmp_path):
    data, decoder = _validate(demo_root, tmp_path)
    n = len(data.frame)
    assert decoder.decoded == n  # validation's decode was the only one
    first = ensure_pack(_entries(data), SIZE, tmp_path)
    assert (first.reused, first.copied, first.decoded) == (False, n, 0)
    assert [p.name for p in tmp_path.glob("delta-*")] == []  # covered by the dataset's pack

    again, decoder = _validate(demo_root, tmp_path)
    assert decoder.decoded == 0  # a rerun decodes nothing
    second = ensure_pack(_entries(again), SIZE, tmp_path)
    assert second.reused and second.pack.path == first.pack.path


def test_new_images_alone_are_decoded_on_a_retrain(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    data, _ = _validate(root, tmp_path / "cache")
    ensure_pack(_entries(data), SIZE, tmp_path / "cache")
    # Two new photos: one new image file, and one existing file under a second id.
    Image.new("RGB", (90, 60), (200, 10, 10)).save(root / "train_features" / "new.png")
    with (root / "train_features.csv").open("a") as fh:
        fh.write("NEW1,train_features/new.png,S0001\nNEW2,train_features/ZJ000000.jpg,S0001\n")
    with (root / "train_labels.csv").open("a") as fh:
        fh.write("NEW1,1.0" + ",0.0" * 7 + "\nNEW2,1.0" + ",0.0" * 7 + "\n")
    bigger, decoder = _validate(root, tmp_path / "cache")
    assert decoder.decoded == 1
    report = ensure_pack(_entries(bigger), SIZE, tmp_path / "cache")
    assert (report.reused, report.copied, report.decoded) == (False, len(bigger.frame), 0)
    rows = report.pack.array()
    assert np.array_equal(rows[-1], rows[0])  # NEW2 is ZJ000000's bytes: the same row content
    assert rows[-2].reshape(-1, 3).tolist()[0] == [200, 10, 10]


def test_the_cache_step_decodes_what_validation_did_not(demo_root, tmp_path):
    # A cache wiped between validation and the cache step (another machine, a cleaned disk).
    data, _ = _validate(demo_root, tmp_path / "first")
    report = ensure_pack(_entries(data), SIZE, tmp_path / "second", workers=2)
    assert (report.copied, report.decoded) == (0, len(data.frame))
    assert torch.equal(_cached(report.pack, 4), _reference(data.frame["path"][:4], SIZE))


def test_an_image_that_cannot_be_decoded_in_the_cache_step_is_a_data_error(demo_root, tmp_path):
    data = load_dataset(demo_root)
    entries = _entries(data)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(entries[1].path).read_bytes()[:500])
    entries[1] = entries[1]._replace(path=str(broken))
    with pytest.raises(DataError) as err:
        ensure_pack(entries, SIZE, tmp_path / "cache")
    assert str(broken) in str(err.value) and "truncated" in str(err.value)
    assert list((tmp_path / "cache").glob("*.u8")) == []  # nothing committed


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "drop the rows"])
def test_a_damaged_pack_is_rebuilt_never_trained_on(demo_root, tmp_path, damage, caplog):
    data, _ = _validate(demo_root, tmp_path)
    pack = ensure_pack(_entries(data), SIZE, tmp_path).pack
    good = pack.path.read_bytes()
    if damage == "flip a byte":
        with pack.path.open("r+b") as fh:
            fh.seek(len(good) // 2)
            fh.write(bytes([good[len(good) // 2] ^ 0xFF]))
    elif damage == "truncate":
        os.truncate(pack.path, len(good) - 7)
    else:
        pack.path.unlink()
    report = ensure_pack(_entries(data), SIZE, tmp_path)
    assert not report.reused and report.decoded == len(data.frame)
    assert report.pack.path.read_bytes() == good
    assert "damaged" in caplog.text or damage == "drop the rows"


@pytest.mark.slow  # a second Python process: several seconds
def test_two_processes_building_one_pack_at_once_leave_one_intact_pack(demo_root, tmp_path):
    code = (
        "import sys; from camtrap import imagecache; from camtrap.dataset import load_dataset\n"
        "data = load_dataset(sys.argv[1], check_images=False)\n"
        "entries = [imagecache.CacheEntry(*r) for r in "
        "data.frame[['id', 'path', 'sha256']].itertuples(index=False)]\n"
        "r = imagecache.ensure_pack(entries, 48, imagecache.Path(sys.argv[2]), workers=1)\n"
        "print(r.reused, r.decoded)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(demo_root), str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outputs == [["False", "32"], ["True", "0"]]  # one decoded, the other waited and reused
    packs = list(tmp_path.glob("*.json"))
    assert len(packs) == 1 and list(tmp_path.glob(".*.tmp")) == []
    manifest = json.loads(packs[0].read_text())
    assert manifest["shape"] == [32, 48, 48, 3] and manifest["method"] == imagecache.METHOD


def test_a_changed_image_size_or_order_is_another_pack(demo_root, tmp_path):
    data, _ = _validate(demo_root, tmp_path)
    entries = _entries(data)
    key = imagecache.pack_key(entries, SIZE)
    assert imagecache.pack_key(entries, SIZE + 1) != key
    assert imagecache.pack_key(entries[::-1], SIZE) != key
    assert imagecache.pack_key([e._replace(sha256="0" * 64) for e in entries], SIZE) != key
    assert imagecache.store_dir(SIZE, tmp_path) != imagecache.store_dir(SIZE + 1, tmp_path)


def test_batches_hold_the_rows_asked_for_in_the_order_asked(demo_root, tmp_path):
    data, _ = _validate(demo_root, tmp_path)
    pack = ensure_pack(_entries(data), SIZE, tmp_path).pack
    rows = pack.array()
    dataset = CachedBatches(pack, rows=[5, 0, 31, 7], targets=[1, 2, 3, 4])
    images, targets = dataset[[2, 0, 3]]
    assert images.dtype == torch.uint8 and images.shape == (3, SIZE, SIZE, 3)
    assert np.array_equal(images.numpy(), rows[[31, 5, 7]])
    assert targets.tolist() == [3, 1, 4]


def test_a_truncated_pack_fails_loudly_while_reading(demo_root, tmp_path):
    data, _ = _validate(demo_root, tmp_path)
    pack = ensure_pack(_entries(data), SIZE, tmp_path).pack
    os.truncate(pack.path, pack.row_bytes * 10)
    with pytest.raises(StorageError, match="ended early"):
        CachedBatches(pack, range(32), [0] * 32)[[3, 20]]


def test_shuffle_depends_on_seed_and_epoch_alone():
    a, b = EpochShuffle(50, seed=3), EpochShuffle(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)


def test_loader_covers_every_row_once_per_epoch_in_batches(demo_root, tmp_path):
    data, _ = _validate(demo_root, tmp_path)
    pack = ensure_pack(_entries(data), SIZE, tmp_path).pack
    order = EpochShuffle(32, seed=0)
    loader = make_loader(CachedBatches(pack, range(32), range(32)), 10, order=order)
    seen = [t.tolist() for _, t in loader]
    assert [len(s) for s in seen] == [10, 10, 10, 2]
    assert sorted(sum(seen, [])) == list(range(32))
    order.set_epoch(2)
    assert [t.tolist() for _, t in loader] != seen


def test_device_normalize_is_to_tensor_then_normalize():
    pixels = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)  # one 1x1 image, NHWC
    out = DeviceNormalize(MEAN, STD, torch.device("cpu"))(pixels)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), MEAN, STD, strict=True)]
    assert out.shape == (1, 3, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_reading_a_large_pack_does_not_hold_it_in_memory(tmp_path):
    # 400 MB of rows (a sparse file: no disk used), read end to end in batches of 64.
    size, n = 224, 2800
    pack = imagecache.Pack(tmp_path / "big.u8", size, tuple(map(str, range(n))), ("",) * n, "")
    with pack.path.open("wb") as fh:
        fh.truncate(n * pack.row_bytes)
    dataset = CachedBatches(pack, range(n), [0] * n)
    loader = make_loader(dataset, 64)
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    batches = 0
    for _images, _targets in loader:
        peak = max(peak, process.memory_info().rss)
        batches += 1
    assert batches == -(-n // 64)
    assert (peak - before) < 64 * 2**20  # a few batches, not the 400 MB file


def test_pipeline_cache_step_reads_the_run_split(demo_root, tmp_path, tiny_config):
    config = tiny_config()
    data = stages.validate(config, demo_root, cache_root=tmp_path / "images")
    run_dir = tmp_path / "run"
    stages.prepare(config, data, run_dir)
    report = stages.cache_images(config, run_dir, demo_root, cache_root=tmp_path / "images")
    assert report.decoded == 0 and list(report.pack.ids) == data.frame["id"].tolist()


def test_an_unchanged_pack_is_not_hashed_again_a_touched_one_is(demo_root, tmp_path, monkeypatch):
    data, _ = _validate(demo_root, tmp_path)
    pack = ensure_pack(_entries(data), SIZE, tmp_path).pack
    hashed: list[Path] = []
    real = imagecache_store.file_sha256
    monkeypatch.setattr(imagecache_store, "file_sha256",
                        lambda path: hashed.append(path) or real(path))  # fmt: skip
    assert ensure_pack(_entries(data), SIZE, tmp_path).reused and hashed == []
    os.utime(pack.path)  # any change to the file, even of its times alone, means a new check
    assert ensure_pack(_entries(data), SIZE, tmp_path).reused and hashed == [pack.path]
    assert ensure_pack(_entries(data), SIZE, tmp_path).reused and hashed == [pack.path]


def test_cpu_batches_reuse_two_buffers_and_autograd_catches_misuse():
    normalize = DeviceNormalize(MEAN, STD, torch.device("cpu"))
    pixels = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    first, second, third = normalize(pixels), normalize(pixels), normalize(pixels)
    assert first.data_ptr() != second.data_ptr() and third.data_ptr() == first.data_ptr()
    weight = torch.ones(1, requires_grad=True)
    loss = (normalize(pixels) * weight).sum()  # saved for backward: the buffer of `second`
    normalize(pixels)
    normalize(pixels)  # overwrites it: backward must refuse, not use wrong values
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_crop_is_its_own_row_decoded_once_and_keyed_by_box_and_margin(tmp_path, ena24_root):
    from PIL import Image

    path = str(ena24_root / "train_features" / "ENA24_02480.jpg")
    whole = imagecache.CacheEntry("a", path, "f" * 64)
    box = (0.35, 0.35, 0.3, 0.3)
    crop = crop_entry(whole, box, 0.15)
    assert crop.sha256 != whole.sha256 and crop.crop == (*box, 0.15)
    assert crop_entry(whole, box, 0.2).sha256 != crop.sha256  # margin in the key
    assert crop_entry(whole, None, 0.15) == whole
    store = tmp_path / "store"
    pack = imagecache.ensure_pack([crop, whole], 32, store).pack
    rows = np.memmap(pack.path, np.uint8, "r", shape=(2, 32, 32, 3))
    image = Image.open(path).convert("RGB")
    left, top, right, bottom = imagecache.crop_pixels(image.width, image.height, (*box, 0.15))
    by_hand = image.crop((left, top, right, bottom)).resize((32, 32), Image.BILINEAR)
    assert np.array_equal(rows[0], np.asarray(by_hand))
    assert np.array_equal(rows[1], imagecache.decode_resized(path, 32))
    again = imagecache.ensure_pack([whole, crop], 32, store)
    assert (again.copied, again.decoded) == (2, 0)  # both rows reused, the crop not decoded again


def test_the_crops_of_one_photo_are_cut_from_one_decode(tmp_path, ena24_root, monkeypatch):
    """data.crop=all: a photo with three boxes is read and decoded once, not three times."""
    path = str(ena24_root / "train_features" / "ENA24_02480.jpg")
    other = str(ena24_root / "train_features" / "ENA24_02595.jpg")
    boxes = [(0.35, 0.35, 0.3, 0.3), (0.0, 0.5, 0.3, 0.5), (0.6, 0.0, 0.4, 0.4)]
    entries = [crop_entry(imagecache.CacheEntry(f"a#{k}", path, "f" * 64), b, 0.15)
               for k, b in enumerate(boxes)]  # fmt: skip
    entries.append(imagecache.CacheEntry("b", other, "e" * 64))
    opened = []
    real = imagecache.open_rgb
    monkeypatch.setattr(imagecache, "open_rgb", lambda p, *a: opened.append(p) or real(p, *a))
    pack = imagecache.ensure_pack(entries, 32, tmp_path / "store").pack
    assert sorted(opened) == [path, other]
    rows = np.memmap(pack.path, np.uint8, "r", shape=(4, 32, 32, 3))
    for k, box in enumerate(boxes):  # each row its own crop
        assert np.array_equal(rows[k], imagecache.decode_resized(path, 32, crop=(*box, 0.15)))


def test_a_short_write_is_completed_not_left_as_zeros(demo_root, tmp_path, monkeypatch):
    """pwrite may write less than asked (a disk nearly full writes what fits): the rest is
    written after it, so no row is committed with zeros in it."""
    entries = _entries(load_dataset(demo_root, check_images=False))[:4]
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: real(fd, bytes(data)[:1000], at))
    decoded = ensure_pack(entries, SIZE, tmp_path).pack
    copied = ensure_pack(entries[::-1], SIZE, tmp_path)
    monkeypatch.undo()
    assert copied.copied == 4
    for row, entry in zip(decoded.array(), entries, strict=True):
        assert np.array_equal(row, imagecache.decode_resized(entry.path, SIZE))
    assert np.array_equal(copied.pack.array(), decoded.array()[::-1])


def test_a_decoder_committed_twice_makes_two_whole_packs(demo_root, tmp_path):
    paths = sorted((demo_root / "train_features").iterdir())[:2]
    decoder = Decoder(SIZE, tmp_path)
    packs = []
    for path in paths:
        data = path.read_bytes()
        assert decoder(data, hashlib.sha256(data).hexdigest(), str(path)) is None
        packs.append(decoder.commit())
    assert [len(p) for p in packs] == [1, 1] and decoder.commit() is None
    for pack, path in zip(packs, paths, strict=True):
        assert np.array_equal(pack.array()[0], imagecache.decode_resized(path, SIZE))
