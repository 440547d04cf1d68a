"""The model file: what camtrap writes for a trained model, and how it is read back.

A model file (`final_*.pth`) is a plain dict loadable with `torch.load(path, weights_only=True)`:
`model` (state_dict), `arch`, `classes`, `image_size`, `mean`, `std`, `epoch`, `metrics`,
`config` (URIs redacted) and `temperature` (1.0 until the run's evaluate stage fits one on val;
camtrap.calibration). Calibration rewrites the file with its temperature and keeps the sha256 the
file had as training wrote it in `calibrated_from`: state/last.pt records that sha256, so a
resume still recognises the calibrated file as its best model (`is_recorded_file`)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch
from torch import nn

from camtrap.errors import StorageError
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
    def of(cls, blob: dict[str, Any]) -> ModelMeta:
        """The metadata of a model file's dict (as read_model_file returns it)."""
        return cls(
            arch=blob["arch"],
            classes=list(blob["classes"]),
            image_size=int(blob["image_size"]),
            mean=list(blob["mean"]),
            std=list(blob["std"]),
            epoch=blob.get("epoch"),
            metrics=dict(blob.get("metrics") or {}),
            config=dict(blob.get("config") or {}),
            temperature=float(blob.get("temperature", 1.0)),
        )


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
