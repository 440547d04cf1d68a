"""camtrap.modelfile without training: a calibrated file stays the one state/last.pt names.
(Trained runs: test_fit.py; the summary of the best models: test_report.py.)"""

from __future__ import annotations

import hashlib

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
