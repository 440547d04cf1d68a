"""camtrap.stages: the configured image limits reach validation, and a tiny part2 run from a
part1-style run folder resumes after a crash with the uninterrupted numbers. The schedule, label
smoothing, the preset and the warm start: test_schedule, test_engine, test_config, test_models."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from camtrap import runfolder, stages
from camtrap.config import build_config
from camtrap.dataset import load_dataset
from camtrap.device import Precision
from camtrap.errors import DataError
from camtrap.models import resolve_init_from
from camtrap.runfolder import RunFiles
from camtrap.torchfile import load_torch

CPU32 = Precision("cpu", False, torch.float32)
FAKE_FINGERPRINT = "0" * 64  # a dataset's fingerprint


# --- learning-rate schedule ---------------------------------------------------------------------


# --- label smoothing ----------------------------------------------------------------------------


# --- the preset and its run id ------------------------------------------------------------------


# --- warm start from a part1-style run, and a tiny part2 run ------------------------------------

ARCH = "mobilenet_v3_small"  # the smallest model; part2's own (swin_t) is too slow on a CPU
TINY_PART2 = {
    "data.image_size": 32, "data.num_workers": 0, "train.epochs": 2, "train.batch_size": 8,
    "train.progress": False, "model.arch": ARCH, "model.drop_path": 0.0,
    "data.train_cache_size": 40, "train.device": "cpu",
}  # fmt: skip


def _train(config, demo_root, run_dir, on_epoch_end=None):
    """prepare + train: the run's model files, state and metrics (no evaluation, no plots)."""
    stages.prepare(config, load_dataset(demo_root), run_dir)
    return stages.train(stages.TrainJob(config, demo_root, run_dir), on_epoch_end=on_epoch_end)


@pytest.mark.slow
def test_part2_from_a_part1_run_then_resumed_after_a_crash_gives_the_same_numbers(
    source_run, demo_root, tmp_path
):
    """One test, so that its two tiny runs are not repeated in several test processes."""
    config = build_config(
        "part2", overrides={**TINY_PART2, "model.init_from": str(source_run.run_dir)}
    )
    config = resolve_init_from(config)  # as run_all and the flow do
    run_id = runfolder.run_id_for(config, load_dataset(demo_root).fingerprint)
    straight = tmp_path / "a" / "part2" / run_id
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores a second compute thread is slower
    try:
        _train(config, demo_root, straight)

        class Crash(Exception):
            pass

        def crash_after_one(record):
            if record.epoch == 1:
                raise Crash

        crashed = tmp_path / "b" / "part2" / run_id
        with pytest.raises(Crash):
            _train(config, demo_root, crashed, on_epoch_end=crash_after_one)
        resumed = stages.train(stages.TrainJob(config, demo_root, crashed))
    finally:
        torch.set_num_threads(saved)

    # It started from the source run's best model, and run.json names that file.
    assert run_id.startswith("part2-")
    files = RunFiles.for_config(straight, config)
    assert files.final_model.name == f"final_{ARCH}_model_part2.pth"
    assert files.best_model.exists() and files.final_model.exists()
    info = json.loads(files.run_json.read_text())
    assert info["config"]["model"]["init_from"] == str(source_run.best.resolve())
    # 6 steps at a peak rate of 1e-5 from the source's weights: still next to them (another
    # initialisation is ~0.1 away)
    source = load_torch(source_run.best)["model"]["features.0.0.weight"]
    trained = load_torch(files.final_model)["model"]["features.0.0.weight"]
    assert not torch.equal(source, trained) and (source - trained).abs().max() < 1e-3
    assert load_torch(files.state)["schedule"] == {"steps_done": 2 * 3}  # 24 images, batch 8

    # The train loss is label-smoothed; log loss (from the probabilities) and the val loss
    # are plain cross entropy (without smoothing the train loss equals its log loss to ~1e-7;
    # with it, near-uniform predictions as here differ by ~6e-4).
    epochs = pd.read_csv(files.epochs_csv)
    train, val = epochs[epochs.split == "train"], epochs[epochs.split == "val"]
    assert (train["loss"] - train["log_loss"]).abs().min() > 1e-4
    np.testing.assert_allclose(val["loss"], val["log_loss"], rtol=1e-5)

    # Resumed after epoch 1: the same crops, learning rates and weights as without the crash.
    assert resumed.resumed_from == 1 and resumed.epochs_run == 1
    pd.testing.assert_frame_equal(
        epochs, pd.read_csv(crashed / "metrics" / "epochs.csv"), check_exact=True
    )
    final_a = load_torch(files.final_model)["model"]
    final_b = load_torch(crashed / files.final_model.name)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def _demo_images(root: Path) -> pd.DataFrame:
    """The demo's features with each image's header size and file size."""
    frame = pd.read_csv(root / "train_features.csv", dtype=str)
    sizes = [Image.open(root / path).size for path in frame["filepath"]]
    frame["pixels"] = [width * height for width, height in sizes]
    frame["bytes"] = [(root / path).stat().st_size for path in frame["filepath"]]
    return frame


def _problems(config, root: Path, cache: Path) -> list:
    with pytest.raises(DataError) as caught:
        stages.validate(config, root, cache_root=cache)
    return caught.value.problems


def test_the_configured_pixel_limit_reaches_validation(demo_root, tiny_config, tmp_path):
    images = _demo_images(demo_root)
    # The demo has images of 360x240, 640x360 and 960x540: only the last are over 300,000.
    over = images[images["pixels"] > 300_000]
    assert set(over["pixels"]) == {960 * 540} and 0 < len(over) < len(images)
    problems = _problems(tiny_config(**{"data.max_image_pixels": 300_000}), demo_root, tmp_path)
    assert [p.id for p in problems] == list(over["id"])
    assert [p.line for p in problems] == [i + 2 for i in over.index]  # header = line 1
    assert problems[0].file == "train_features.csv"
    assert problems[0].message == (
        f"image {over['filepath'].iloc[0]} has 518,400 pixels (960 x 540), over the limit of "
        "300,000 pixels: data.max_image_pixels"
    )
    stages.validate(tiny_config(**{"data.max_image_pixels": 518_400}), demo_root, tmp_path)


def test_the_configured_file_size_limit_reaches_validation(demo_root, tiny_config, tmp_path):
    images = _demo_images(demo_root)
    limit = int(images["bytes"].median())
    over = images[images["bytes"] > limit]
    problems = _problems(tiny_config(**{"data.max_image_bytes": limit}), demo_root, tmp_path)
    assert [p.id for p in problems] == list(over["id"])
    first = over.iloc[0]
    assert problems[0].message == (
        f"image {first['filepath']} is too large ({first['bytes']:,} bytes, over the limit of "
        f"{limit:,} bytes: data.max_image_bytes)"
    )


# --- validation's rerun ---------------------------------------------------------------------------


def test_validate_on_unchanged_data_reads_no_image_again(
    demo_root, tiny_config, tmp_path, monkeypatch
):
    from camtrap import imagecache_hashes
    from camtrap.dataset import contract

    monkeypatch.setattr(imagecache_hashes, "RACY_NS", 0)  # the demo's files were just written
    reads: list[str] = []
    real = contract.read_image_bytes
    monkeypatch.setattr(
        contract,
        "read_image_bytes",
        lambda path, *a, **k: reads.append(path) or real(path, *a, **k),
    )
    first = stages.validate(tiny_config(), demo_root, cache_root=tmp_path)
    assert len(reads) == len(first.frame)
    reads.clear()
    again = stages.validate(tiny_config(), demo_root, cache_root=tmp_path)
    assert reads == [] and again.fingerprint == first.fingerprint
