"""Label new photos with a trained model: one probability per class for every image a features CSV
lists, in the competition's submission format.

    model (file, run folder or latest.json) -> the features CSV and its images, validated as for
    training (every problem at once) and decoded once into the image cache at the model's
    image_size -> batches through the model (AMP on CUDA: engine's one path) -> the model file's
    temperature (camtrap.calibration) -> `id` + one column per class, in the CSV's order

Preprocessing is the evaluation's: each image decoded and resized straight to the model's
image_size, normalised with the model file's mean/std. So the best model's probabilities for the
val images equal those its run wrote to predictions/val.csv.

`predict` is the whole path for the CLI; the flow `predict-swin` calls its parts one task at a
time (`validate`, `predict_features`, `write_predictions`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from camtrap import imagecache, storage
from camtrap.calibration import apply_temperature
from camtrap.config import TEST_FEATURES_CSV, TTA_CHOICES
from camtrap.dataset import FeatureData, ImageLimits, fetch_dataset, load_features
from camtrap.device import precision_for, resolve_device
from camtrap.engine import infer
from camtrap.errors import ConfigError
from camtrap.latest import resolve_model_uri
from camtrap.loader import CachedBatches, DeviceNormalize, make_loader
from camtrap.modelfile import ModelMeta
from camtrap.models import MirrorAverage, load_model
from camtrap.redact import redact_uri
from camtrap.storage import StorageNotFound
from camtrap.storage.mirror import fetch_files
from camtrap.storage.uris import cache_path_for, default_cache_root, local_copy

log = logging.getLogger("camtrap")

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEFAULT_BATCH_SIZE = 64


@dataclass
class Predictions:
    """What `predict_features` computed, and with what."""

    frame: pd.DataFrame  # id, then one column per class (the model's order); the CSV's row order
    model_uri: str  # the model file used
    meta: ModelMeta
    temperature: float  # the temperature applied (1.0: none, or --no-calibration)
    tta: str
    fingerprint: str  # of the features CSV and its images (camtrap.dataset.FeatureData)

    def describe(self) -> str:
        calibration = (
            f"temperature {self.temperature:.4g} applied"
            if self.temperature != 1.0
            else "no temperature applied"
        )
        return (
            f"model {redact_uri(self.model_uri)} (epoch {self.meta.epoch}, {calibration}, "
            f"tta {self.tta}): {len(self.frame)} images, {len(self.meta.classes)} classes"
        )


def check_options(tta: str, device: str, batch_size: int) -> None:
    """ConfigError for an option no run could use, before any data is read."""
    if tta not in TTA_CHOICES:
        raise ConfigError(f"tta {tta!r} is not one of {', '.join(TTA_CHOICES)}")
    if device not in DEVICE_CHOICES:
        raise ConfigError(f"device {device!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda, but no CUDA GPU is visible — fix: use device auto or cpu")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} — fix: give a positive number, e.g. 64")


# --- inputs ------------------------------------------------------------------------------------


def local_model_file(model_uri: str, cache_root: Path | None = None) -> Path:
    """A local copy of the model file at `model_uri` (a model file, not a run: see
    camtrap.latest.resolve_model_uri). S3: fetched into the cache (reused while its ETag is the
    same); a local file is used in place."""
    if not storage.is_remote(model_uri):
        return Path(model_uri)
    folder, name = model_uri.rstrip("/").rsplit("/", 1)
    cache = cache_path_for(folder, _cache_root(cache_root) / "models")
    report = fetch_files(folder, [name], cache)
    if report.missing:
        raise StorageNotFound(f"model file {model_uri} does not exist — fix: check the URI")
    return report.root / name


def fetch_features(data_uri: str, features_csv: str, cache_root: Path | None = None) -> Path:
    """The local root holding the features CSV and every image it lists (camtrap.dataset.fetch:
    S3 into the data cache, a local folder in place)."""
    cache = local_copy(data_uri, "data", cache_root)
    return fetch_dataset(data_uri, cache, features_csv, labels_csv=None)


def _cache_root(cache_root: Path | None) -> Path:
    return Path(cache_root) if cache_root is not None else default_cache_root()


def image_limits(meta: ModelMeta) -> ImageLimits:
    """The per-image limits the model's training run used (the defaults for an older file)."""
    data = meta.config.get("data", {}) if isinstance(meta.config, dict) else {}
    default = ImageLimits()
    return ImageLimits(
        int(data.get("max_image_bytes", default.max_bytes)),
        int(data.get("max_image_pixels", default.max_pixels)),
    )


def validate(
    root: Path,
    features_csv: str,
    image_size: int,
    limits: ImageLimits | None = None,
    image_cache: Path | None = None,
) -> FeatureData:
    """The features CSV and its images checked as for training (DataError with every problem);
    each image not in the image cache at `image_size` is decoded once here and kept there."""
    decoder = imagecache.Decoder(image_size, imagecache.store_dir(image_size, image_cache))
    try:
        return load_features(root, features_csv, check=decoder, limits=limits or ImageLimits())
    finally:
        decoder.commit()


# --- the model on the images ---------------------------------------------------------------------


def load(model_file: Path, device: str = "auto") -> tuple[torch.nn.Module, ModelMeta]:
    """The model in `model_file` on `device` (auto: CUDA when there is one), in eval mode."""
    return load_model(model_file, resolve_device(device))


def predict_features(
    model: torch.nn.Module,
    meta: ModelMeta,
    data: FeatureData,
    model_uri: str,
    *,
    tta: str = "none",
    calibration: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    image_cache: Path | None = None,
) -> Predictions:
    """Probabilities of `model` (from the file at `model_uri`, described by `meta`) for every
    image of `data` (validated), read from the image cache (built here for the images validation
    did not decode), on the model's device."""
    if tta not in TTA_CHOICES:
        raise ConfigError(f"tta {tta!r} is not one of {', '.join(TTA_CHOICES)}")
    device = next(model.parameters()).device
    pack = _pack(data, meta.image_size, image_cache)
    probs = _probabilities(model, meta, pack, tta, batch_size, device, progress)
    temperature = meta.temperature if calibration else 1.0
    probs = _normalised(apply_temperature(probs, temperature))
    frame = pd.DataFrame(probs, columns=list(meta.classes))
    frame.insert(0, "id", data.frame["id"].to_numpy())
    result = Predictions(frame, model_uri, meta, temperature, tta, data.fingerprint)
    log.info("predict: %s", result.describe())
    return result


def _pack(data: FeatureData, image_size: int, image_cache: Path | None) -> imagecache.Pack:
    entries = [
        imagecache.CacheEntry(row.id, row.path, row.sha256) for row in data.frame.itertuples()
    ]
    store = imagecache.store_dir(image_size, image_cache)
    return imagecache.ensure_pack(entries, image_size, store).pack


def _probabilities(
    model: torch.nn.Module,
    meta: ModelMeta,
    pack: imagecache.Pack,
    tta: str,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> np.ndarray:
    """softmax of the model (hflip: the mean of the image's and its mirror's) for every row of
    `pack`, in order. The targets the engine wants are placeholders: no labels here."""
    rows = list(range(len(pack)))
    dataset = CachedBatches(pack, rows, [0] * len(rows))
    loader = make_loader(dataset, batch_size, pin_memory=device.type == "cuda")
    train = meta.config.get("train", {}) if isinstance(meta.config, dict) else {}
    precision = precision_for(device, train.get("amp", True), train.get("amp_dtype", "float16"))
    net = MirrorAverage(model) if tta == "hflip" else model
    to_input = DeviceNormalize(meta.mean, meta.std, device)
    out = infer(net, loader, to_input, precision, progress=progress, desc="predict")
    return out.probs


def _normalised(probs: np.ndarray) -> np.ndarray:
    """float64 rows that sum to 1 to float64 precision (float32 softmax sums are 1 +- 1e-7)."""
    wide = probs.astype(np.float64)
    return wide / wide.sum(axis=1, keepdims=True)


# --- outputs -----------------------------------------------------------------------------------


def write_predictions(frame: pd.DataFrame, output_uri: str) -> None:
    """The submission CSV at `output_uri` (local: atomic rename; S3: one PUT), every float at
    full precision (repr: 17 significant digits at most)."""
    storage.write_text(output_uri, frame.to_csv(index=False))


def check_output(output_uri: str) -> None:
    """ConfigError for an output that cannot be a file, before minutes of work."""
    if not storage.is_remote(output_uri) and Path(output_uri).is_dir():
        raise ConfigError(
            f"--out {output_uri} is a folder — fix: name the CSV file to write, e.g. "
            f"{Path(output_uri) / 'predictions.csv'}"
        )


def prediction_name(fingerprint: str, tta: str = "none", calibration: bool = True,
                    model_file: str = "") -> str:  # fmt: skip
    """`{fingerprint}.csv` for the run's best model with the defaults; other choices are named
    after the fingerprint, so one run's predictions with different options never overwrite each
    other (e.g. `{fp}-final_swin_t_model_part1_best_logloss-hflip-uncalibrated.csv`)."""
    parts = [fingerprint]
    if model_file and not model_file.endswith("_best.pth"):
        parts.append(Path(model_file).stem)
    if tta != "none":
        parts.append(tta)
    if not calibration:
        parts.append("uncalibrated")
    return "-".join(parts) + ".csv"


# --- the whole path (the CLI) --------------------------------------------------------------------


def predict(
    model_uri: str,
    data_uri: str,
    output_uri: str,
    *,
    features_csv: str = TEST_FEATURES_CSV,
    tta: str = "none",
    calibration: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    progress: bool = False,
    cache_root: Path | None = None,
) -> Predictions:
    """Resolve the model, fetch and validate the photos, predict, write the CSV to `output_uri`.
    Nothing is written unless every step succeeded."""
    check_options(tta, device, batch_size)
    check_output(output_uri)
    model_uri = resolve_model_uri(model_uri)
    model, meta = load(local_model_file(model_uri, cache_root), device)
    root = fetch_features(data_uri, features_csv, cache_root)
    image_cache = _cache_root(cache_root) / "images" if cache_root is not None else None
    data = validate(root, features_csv, meta.image_size, image_limits(meta), image_cache)
    result = predict_features(
        model,
        meta,
        data,
        model_uri,
        tta=tta,
        calibration=calibration,
        batch_size=batch_size,
        progress=progress,
        image_cache=image_cache,
    )
    write_predictions(result.frame, output_uri)
    log.info("predictions written to %s", output_uri)
    return result
