"""camtrap.modelfile without training: a calibrated file stays the one state/last.pt names.
(Trained runs: test_fit.py; the summary of the best models: test_report.py.)"""

from __future__ import annotations

import hashlib

import pytest

from camtrap import torchfile
from camtrap.errors import ModelFileError
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


# --- a model file is checked when it is loaded -----------------------------------------------

GOOD = {"arch": "mobilenet_v3_small", "classes": ["a", "b", "c"], "image_size": 32,
        "mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 2, "metrics": {}, "config": {},
        "temperature": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def weights():
    """mobilenet_v3_small's (6 MB, where resnet18's are 45 MB): a file per case stays fast."""
    return build_model("mobilenet_v3_small", 3, weights="none", image_size=32).state_dict()


def _write(path, blob):
    torchfile.save_torch(blob, path)
    return path


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("classes", None, "classes is missing"),
        ("classes", [], "classes has 0 classes, needs at least 2"),
        ("classes", ["a", "b", "a"], "classes lists 'a' twice"),
        ("classes", ["id", "b"], "classes: 'id' is a column name the outputs use"),
        ("classes", ["a", " "], "classes: a class name is blank"),
        ("classes", "abc", "classes should be a valid list"),
        ("image_size", 0, "image_size must be a whole number from 16 to 1024 (got 0)"),
        ("image_size", "224", "image_size should be a valid integer (got '224')"),
        ("temperature", 0.0, "temperature must be a positive finite number (got 0.0)"),
        ("temperature", -1.5, "temperature must be a positive finite number (got -1.5)"),
        ("temperature", float("nan"), "temperature must be a positive finite number (got nan)"),
        ("mean", [0.5, 0.5], "mean must be 3 finite numbers (one per RGB channel), has 2"),
        ("std", [0.0, 0.0, 0.0], "std must be 3 positive finite numbers"),
        ("config", ["a"], "config should be a valid dictionary (got ['a'])"),
        ("arch", "resnet19", "arch 'resnet19' is not one of swin_t,"),
        ("epoch", "3", "epoch should be a valid integer"),
        ("notes", "hi", "notes is not a field of a camtrap model file"),
    ],
)
def test_a_model_file_with_a_bad_field_is_one_clear_error(tmp_path, weights, field, value, says):
    blob = {**GOOD, "model": weights, field: value}
    if value is None:
        del blob[field]
    path = _write(tmp_path / "final_mobilenet_v3_small_model_part1_best.pth", blob)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    text = str(info.value)
    assert text.startswith(f"model file {path}: ") and says in text, text
    assert "— fix: " in text and "\n" not in text and len(text) < 450


def test_a_file_that_is_not_a_model_files_dict_is_one_clear_error(tmp_path, weights):
    for blob in ([1, 2], {**GOOD}, {**GOOD, "model": [1]}):
        path = _write(tmp_path / "m.pth", blob)
        with pytest.raises(ModelFileError, match=f"model file {path}: .* — fix: "):
            load_model(path)


@pytest.mark.parametrize("weights_of", [("mobilenet_v3_small", 5), ("resnet18", 3)])
def test_weights_that_do_not_match_the_arch_are_named_shortly(tmp_path, weights, weights_of):
    other = build_model(*weights_of, weights="none", image_size=32).state_dict()
    path = _write(tmp_path / "m.pth", {**GOOD, "model": other})
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    text = str(info.value)
    assert text.startswith(
        f"model file {path}: its weights are not a mobilenet_v3_small with 3 classes ("
    )
    missing, unexpected = set(weights) - set(other), set(other) - set(weights)
    shape = [k for k in weights if k in other and weights[k].shape != other[k].shape]
    counts = [
        f"{name}: {len(keys)}"
        for name, keys in [("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)]
        if keys
    ]
    assert f"({', '.join(counts)}" in text and "— fix: " in text and len(text) < 400, text


def test_files_camtrap_writes_load_including_older_ones_without_temperature(model_file, weights):
    path, _ = model_file
    _, meta = load_model(path)
    assert (meta.classes, meta.image_size, meta.temperature) == (["a", "b", "c"], 32, 1.0)
    blob = torchfile.load_torch(path)
    for key in ("temperature", "metrics", "config", "epoch"):  # an older file's
        del blob[key]
    blob["config"] = None
    _, meta = load_model(_write(path, blob))
    assert (meta.temperature, meta.config, meta.metrics, meta.epoch) == (1.0, {}, {}, None)
