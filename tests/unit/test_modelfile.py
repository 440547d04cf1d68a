"""The two best models without training: a calibrated file stays the one state/last.pt names,
and the summary artifact says where each best model comes from. (Trained runs: test_fit.py.)"""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from camtrap import torchfile
from camtrap.modelfile import (
    CALIBRATED_FROM,
    ModelMeta,
    is_recorded_file,
    model_file_dict,
    store_temperature,
)
from camtrap.models import build_model, load_model
from camtrap.report import best_models_lines, calibration_lines, per_site_lines, tta_lines
from camtrap.storage import files as storage_files


@pytest.fixture
def model_file(tmp_path):
    """A small model file as training writes it, and its sha256."""
    model = build_model("resnet18", 3, weights="none", image_size=32)
    meta = ModelMeta("resnet18", ["a", "b", "c"], 32, [0.5] * 3, [0.25] * 3, epoch=2)
    path = tmp_path / "final_resnet18_model_smoke_best.pth"
    return path, torchfile.save_torch(model_file_dict(model, meta), path)


def test_a_calibrated_file_is_still_the_one_the_state_records(model_file):
    path, trained_sha256 = model_file
    store_temperature(path, 1.5)
    assert storage_files.file_sha256(path) != trained_sha256  # rewritten...
    assert is_recorded_file(path, trained_sha256)  # ...yet recognised
    assert load_torch_key(path, CALIBRATED_FROM) == trained_sha256
    _, meta = load_model(path)
    assert meta.temperature == 1.5 and meta.epoch == 2


def test_another_file_is_not_the_recorded_one(model_file, tmp_path):
    path, trained_sha256 = model_file
    assert is_recorded_file(path, trained_sha256)
    assert not is_recorded_file(path, hashlib.sha256(b"another attempt").hexdigest())
    assert not is_recorded_file(tmp_path / "missing.pth", trained_sha256)
    path.write_bytes(b"not a model file")
    assert not is_recorded_file(path, trained_sha256)


def test_calibrating_again_keeps_the_trained_sha256(model_file):
    path, trained_sha256 = model_file
    store_temperature(path, 1.5)
    calibrated = storage_files.file_sha256(path)
    store_temperature(path, 1.5)  # evaluate retried: nothing to change
    assert storage_files.file_sha256(path) == calibrated
    store_temperature(path, 0.8)  # a new fit (e.g. the run was extended, the best unchanged)
    assert load_torch_key(path, "temperature") == 0.8
    assert is_recorded_file(path, trained_sha256)


def load_torch_key(path, key):
    return torchfile.load_torch(path)[key]


INFO = {
    "config": {"model": {"arch": "resnet18"}, "output": {"stage": "smoke"}},
    "best_epoch": 3,
    "best_logloss_epoch": 2,
    "calibration": {
        "best": {
            "file": "final_resnet18_model_smoke_best.pth",
            "epoch": 3,
            "temperature": 1.5,
            "log_loss_before": 0.9,
            "log_loss_after": 0.7,
            "ece_before": 0.2,
            "ece_after": 0.05,
        },
    },  # fmt: skip
    "tta": {
        "none": {"accuracy": 0.75, "log_loss": 0.7},
        "hflip": {"accuracy": 0.8, "log_loss": 0.6},
    },
    "per_site": [
        {"site": "S1", "images": 4, "accuracy": 1.0, "log_loss": 0.1},
        {"site": "S2", "images": 2, "accuracy": 0.5, "log_loss": 1.2},
        {"site": "S3", "images": 3, "accuracy": 0.6667, "log_loss": 0.5},
    ],
}
EPOCHS = pd.DataFrame({
    "epoch": [2, 2, 3, 3],
    "split": ["train", "val", "train", "val"],
    "accuracy": [0.5, 0.625, 0.9, 0.75],
    "log_loss": [1.0, 0.55, 0.3, 0.9],
})  # fmt: skip


def test_summary_says_which_epoch_each_best_model_comes_from():
    lines = best_models_lines(INFO, EPOCHS, "val_accuracy")
    assert lines[4:6] == [
        "| `final_resnet18_model_smoke_best.pth` | val_accuracy | 3 | 0.7500 | 0.9000 |",
        "| `final_resnet18_model_smoke_best_logloss.pth` | val_log_loss | 2 | 0.6250 | 0.5500 |",
    ]


def test_summary_tables_of_calibration_tta_and_sites_worst_first():
    assert calibration_lines(INFO)[4] == "| best | 3 | 1.5000 | 0.9000 | 0.7000 | 0.2000 | 0.0500 |"
    assert tta_lines(INFO)[4:6] == ["| none | 0.7500 | 0.7000 |", "| hflip | 0.8000 | 0.6000 |"]
    assert per_site_lines(INFO)[4:7] == [
        "| S2 | 2 | 0.5000 | 1.2000 |",
        "| S3 | 3 | 0.6667 | 0.5000 |",
        "| S1 | 4 | 1.0000 | 0.1000 |",
    ]
    assert calibration_lines({}) == tta_lines({}) == per_site_lines({}) == []
