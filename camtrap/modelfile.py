"""The model file: what camtrap writes for a trained model, and how it is read back.

A model file (`final_*.pth`) is a plain dict loadable with `torch.load(path, weights_only=True)`:
`model` (state_dict), `arch`, `classes`, `image_size`, `mean`, `std`, `epoch`, `metrics`,
`config` (URIs redacted) and `temperature` (1.0 until the run's evaluate stage fits one on val;
camtrap.calibration). Calibration rewrites the file with its temperature and keeps the sha256 the
file had as training wrote it in `calibrated_from`: state/last.pt records that sha256, so a
resume still recognises the calibrated file as its best model (`is_recorded_file`).

A model file is not trusted when it is loaded (camtrap.models.load_model): its keys are validated
(`FileFields`) and its weights must be its arch's with its classes; else one ModelFileError names
the file and what is wrong."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from camtrap.config import SUPPORTED_ARCHS
from camtrap.dataset.contract import MIN_CLASSES, RESERVED_COLUMNS
from camtrap.errors import ModelFileError, StorageError
from camtrap.redact import redact_config, redact_text, redact_uri
from camtrap.storage.files import file_sha256
from camtrap.torchfile import load_torch, save_torch

# The model-file key that names the file a calibration rewrote: its sha256 as training wrote it
# (state/last.pt records that sha256, so a resume recognises the calibrated file as the same).
CALIBRATED_FROM = "calibrated_from"


@dataclass
class ModelMeta:
    """What a model file says about itself, beyond the weights."""

    arch: str
    classes: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    # Divides the logits before the softmax (camtrap.calibration): fitted on the val split after
    # training; 1.0 (no change) for a file written before calibration or without it.
    temperature: float = 1.0

    @classmethod
    def of(cls, blob: Any, shown: str = "") -> ModelMeta:
        """The metadata of a model file's dict (as read_model_file returns it), validated
        (FileFields): ModelFileError naming the file `shown` and each bad field."""
        fields = validated_fields(blob, shown)
        return cls(
            arch=fields.arch,
            classes=list(fields.classes),
            image_size=fields.image_size,
            mean=list(fields.mean),
            std=list(fields.std),
            epoch=fields.epoch,
            metrics=dict(fields.metrics or {}),
            config=dict(fields.config or {}),
            temperature=fields.temperature,
        )


# Any fix for a model file is the same: the file as camtrap wrote it.
MODEL_FILE_FIX = "use a model file camtrap wrote (a run's final_*_best.pth), unedited"
# data.image_size's bounds (camtrap.config.DataConfig): every file training wrote is inside them
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024


class FileFields(BaseModel):
    """A model file's keys besides the weights, checked when it is loaded: a file camtrap did
    not write (or one edited by hand) is refused naming the field, instead of failing deep in
    predict or, worse, writing a submission of empty probabilities. Strict: a string is not a
    number. Optional keys are those older files lack."""

    model_config = ConfigDict(extra="forbid", strict=True)

    arch: str
    classes: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    epoch: int | None = Field(None, ge=0)
    metrics: dict[str, float] | None = None
    config: dict[str, Any] | None = None
    temperature: float = 1.0
    calibrated_from: str | None = None  # CALIBRATED_FROM

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"{arch!r} is not one of {', '.join(SUPPORTED_ARCHS)}")
        return arch

    @field_validator("classes")
    @classmethod
    def _usable_classes(cls, classes: list[str]) -> list[str]:
        # one output column per class, beside the pipeline's own (id, site, ...)
        if len(classes) < MIN_CLASSES:
            raise ValueError(f"has {len(classes)} classes, needs at least {MIN_CLASSES}")
        if any(not name.strip() for name in classes):
            raise ValueError(": a class name is blank")
        if repeated := next((c for c in classes if classes.count(c) > 1), None):
            raise ValueError(f"lists {repeated!r} twice")
        if reserved := next((c for c in classes if c in RESERVED_COLUMNS), None):
            raise ValueError(f": {reserved!r} is a column name the outputs use for their own")
        return classes

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, size: int) -> int:
        if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"must be a whole number from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (got {size})"
            )
        return size

    @field_validator("mean")
    @classmethod
    def _mean(cls, mean: list[float]) -> list[float]:
        if len(mean) != 3 or not all(math.isfinite(x) for x in mean):
            raise ValueError(f"must be 3 finite numbers (one per RGB channel), has {len(mean)}")
        return mean

    @field_validator("std")
    @classmethod
    def _std(cls, std: list[float]) -> list[float]:
        if len(std) != 3 or not all(math.isfinite(x) and x > 0 for x in std):
            raise ValueError("must be 3 positive finite numbers (one per RGB channel)")
        return std

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, temperature: float) -> float:
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"must be a positive finite number (got {temperature})")
        return temperature


def validated_fields(blob: Any, shown: str) -> FileFields:
    """`blob`'s metadata as FileFields, and its weights a state_dict; else one ModelFileError
    naming the file and every bad field."""
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise ModelFileError(
            f"model file {shown}: not a camtrap model file (a dict with the weights under "
            f"'model' and arch, classes, ...) — fix: {MODEL_FILE_FIX}"
        )
    try:
        return FileFields.model_validate({k: v for k, v in blob.items() if k != "model"})
    except ValidationError as err:
        problems = "; ".join(_field_problem(item) for item in err.errors())
        raise ModelFileError(f"model file {shown}: {problems} — fix: {MODEL_FILE_FIX}") from None


def _field_problem(item: Any) -> str:
    """One pydantic error as `field what (got value)`, the value cut short (a config is big)."""
    where = ".".join(str(p) for p in item["loc"])
    if item["type"] == "missing":
        return f"{where} is missing"
    if item["type"] == "extra_forbidden":
        return f"{where} is not a field of a camtrap model file"
    message = item["msg"].removeprefix("Value error, ").replace("Input should", "should")
    separator = "" if message.startswith(":") else " "
    if item["type"] == "value_error":  # FileFields' own checks: their message says enough
        return f"{where}{separator}{message}"
    got = repr(item.get("input"))
    return f"{where}{separator}{message} (got {got if len(got) <= 40 else got[:37] + '...'})"


def model_file_dict(model: nn.Module, meta: ModelMeta) -> dict[str, Any]:
    """The dict stored in a model file: weights on CPU plus metadata of plain types only."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "model": state,
        "arch": meta.arch,
        "classes": list(meta.classes),
        "image_size": int(meta.image_size),
        "mean": [float(x) for x in meta.mean],
        "std": [float(x) for x in meta.std],
        "epoch": meta.epoch,
        "metrics": {k: float(v) for k, v in meta.metrics.items()},
        "config": redact_config(meta.config),
        "temperature": float(meta.temperature),
    }


def read_model_file(uri: str | Path) -> dict[str, Any]:
    """torch.load a local path or an fsspec URI, tensors only (weights_only=True).

    Errors show the URI redacted (a presigned URL's signature, user:password@) and are raised
    `from None`: the underlying error's text may hold the full URL, and a chained traceback
    would print it."""
    shown = redact_uri(str(uri))
    try:
        with fsspec.open(str(uri), "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise StorageError(f"model file {shown} does not exist; check the path or URI") from None
    except OSError as err:
        reason = redact_text(str(err))
        raise StorageError(f"cannot read model file {shown}: {reason}") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        reason = redact_text(str(err))
        raise StorageError(f"{shown} is not a readable PyTorch file: {reason}") from None


def with_temperature(model_file: dict[str, Any], temperature: float, sha256: str) -> dict[str, Any]:
    """A model file's dict with `temperature` set. `sha256` is the file's as it is now; the
    file as training wrote it stays named in CALIBRATED_FROM (kept from an earlier calibration),
    so calibrating again never loses the link to the state's record."""
    return {
        **model_file,
        "temperature": float(temperature),
        CALIBRATED_FROM: model_file.get(CALIBRATED_FROM) or sha256,
    }


def store_temperature(path: Path, temperature: float) -> None:
    """Rewrite the model file at `path` (atomically) with `temperature`. The file keeps the
    sha256 it had as training wrote it (CALIBRATED_FROM), which state/last.pt records: a resume
    recognises the calibrated file as that best model (`is_recorded_file`) instead of
    rebuilding or refusing it."""
    blob = load_torch(path)
    if blob.get("temperature") == temperature and blob.get(CALIBRATED_FROM):
        return  # calibrated already (evaluate retried): the same bytes
    save_torch(with_temperature(blob, temperature, file_sha256(path)), path)


def is_recorded_file(path: Path, sha256: str) -> bool:
    """Whether `path` is the model file whose sha256 the state recorded: that very file, or
    that file after calibration, which rewrote it with a temperature and kept the recorded
    sha256 in CALIBRATED_FROM (same weights, same epoch)."""
    if not path.exists():
        return False
    if file_sha256(path) == sha256:
        return True
    try:
        blob = load_torch(path)
    except StorageError:  # not a model file at all
        return False
    return isinstance(blob, dict) and blob.get(CALIBRATED_FROM) == sha256
