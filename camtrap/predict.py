"""Label new photos with a trained model: one probability per class for every photo, written in
the submission CSV, a MegaDetector batch file or a Camtrap DP package (camtrap.outputs).

    model (file, run folder or latest.json) -> the photos (a features CSV, every image under a
    folder, a COCO file's or a Camtrap DP package's: camtrap.dataset.photos), validated as for
    training (every problem at once) and decoded once into the image cache at the model's
    image_size -> batches through the model (AMP on CUDA: engine's one path) -> the model file's
    temperature (camtrap.calibration) -> `id` + one column per class, in the input's order ->
    per event too, where the photos have events (camtrap.events) -> the chosen format

Preprocessing is the evaluation's: each image decoded and resized straight to the model's
image_size, normalised with the model file's mean/std. So the best model's probabilities for the
val images equal those its run wrote to predictions/val.csv.

`predict` is the whole path for the CLI; the flow `predict-swin` calls its parts one task at a
time (`validate_photos`, `predict_features`, `write_outputs`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from camtrap import events, imagecache, outputs, samples, storage
from camtrap.calibration import apply_temperature
from camtrap.config import TTA_CHOICES, PredictConfig, PredictOptions
from camtrap.dataset import FeatureData, ImageLimits, fetch_dataset, load_features
from camtrap.dataset.detections import apply_detections
from camtrap.dataset.fetch import fetch_detections, fetch_photos
from camtrap.dataset.photos import load_photos, resolve_input
from camtrap.device import precision_for, resolve_device
from camtrap.engine import infer
from camtrap.errors import ConfigError, DataError, ModelFileError
from camtrap.latest import resolve_model_uri
from camtrap.loader import CachedBatches, DeviceNormalize, make_loader
from camtrap.modelfile import ModelMeta
from camtrap.models import MirrorAverage, load_model
from camtrap.outputs.newpackage import NewPackage, read_deployments
from camtrap.redact import redact_uri
from camtrap.storage import StorageNotFound
from camtrap.storage.files import file_sha256
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
    # the photos (camtrap.dataset.FeatureData.frame: id, filepath, site, event, timestamp, ...)
    photos: pd.DataFrame = field(default_factory=pd.DataFrame)
    failed: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=outputs.FAILED_COLUMNS)
    )
    model_sha256: str = ""
    # data.crop=all: id, x, y, w, h, then one probability per class, for each box of a photo
    boxes: pd.DataFrame | None = None
    written: list[str] = field(default_factory=list)  # `predict`: the URIs it wrote

    def describe(self) -> str:
        calibration = (
            f"temperature {self.temperature:.4g} applied"
            if self.temperature != 1.0
            else "no temperature applied"
        )
        return (
            f"model {redact_uri(self.model_uri)} (epoch {self.meta.epoch}, {calibration}, "
            f"tta {self.tta}): {len(self.frame)} images, {len(self.meta.classes)} classes"
            + (f", {len(self.failed)} could not be read" if len(self.failed) else "")
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


def fetch_input(data_uri: str, options: PredictOptions, cache_root: Path | None = None) -> Path:
    """The local root holding the photos of `options.input` (resolved), what lists them and
    their detections (--detections)."""
    cache = local_copy(data_uri, "data", cache_root)
    root = fetch_photos(data_uri, cache, options)
    if options.detections:
        fetch_detections(data_uri, cache, options.detections)
    return root


def resolved(data_uri: str, options: PredictOptions) -> PredictOptions:
    """`options` with input auto replaced by what `data_uri` holds (camtrap.dataset.photos)."""
    chosen = resolve_input(data_uri, options.input, options.features_csv, options.annotations)
    return options.model_copy(update={"input": chosen})


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
    with _decoding(image_size, image_cache) as decoder:
        return load_features(root, features_csv, check=decoder, limits=limits or ImageLimits())


@contextmanager
def _decoding(image_size: int, image_cache: Path | None) -> Iterator[imagecache.Decoder]:
    """The image cache's decoder as validation's image check: what it decoded is kept."""
    decoder = imagecache.Decoder(image_size, imagecache.store_dir(image_size, image_cache))
    try:
        yield decoder
    finally:
        decoder.commit()


@dataclass(frozen=True)
class Crops:
    """How the model's run cropped its images (data.crop): predict crops alike."""

    threshold: float
    margin: float
    mode: str = "best"  # data.crop: best (one box per photo) or all (each box its own)


def model_crops(meta: ModelMeta) -> Crops | None:
    """The model's run's crop settings, None for a model trained on whole frames."""
    data = meta.config.get("data", {}) if isinstance(meta.config, dict) else {}
    mode = data.get("crop", "none")
    if mode == "none":
        return None
    threshold, margin = data.get("detection_threshold", 0.1), data.get("crop_margin", 0.15)
    return Crops(float(threshold), float(margin), str(mode))


def validate_photos(
    root: Path,
    options: PredictOptions,
    image_size: int,
    limits: ImageLimits | None = None,
    image_cache: Path | None = None,
    crops: Crops | None = None,
) -> FeatureData:
    """The photos of `options.input` (resolved) checked as for training: a DataError with every
    problem of the listing; an image that cannot be read is a `failure` the outputs list (a
    features CSV has no place for one: there it is a problem, as before). With `crops` (a model
    trained on crops), each photo's crop from `options.detections`."""
    if options.input == "conservision":
        data = validate(root, options.features_csv, image_size, limits, image_cache)
    else:
        with _decoding(image_size, image_cache) as decoder:
            data = load_photos(root, options.input, options.annotations, check=decoder,
                               limits=limits or ImageLimits(),
                               allow_http=options.allow_http)  # fmt: skip
    return _with_crops(root, data, options.detections, crops)


def _with_crops(root: Path, data: FeatureData, detections: str | None,
                crops: Crops | None) -> FeatureData:  # fmt: skip
    if crops is None:
        if detections:
            log.info("the model was trained on whole frames: --detections %s not used", detections)
        return data
    if not detections:
        raise ConfigError(
            f"the model was trained on MegaDetector crops (data.crop={crops.mode}), so its "
            "photos need "
            "their detections too — fix: give --detections FILE.json (the MegaDetector output "
            "for these photos, relative to --data)"
        )
    listed = [*data.frame["filepath"], *data.failed["filepath"]]
    frame, fingerprint, problems = apply_detections(
        root, detections, data.frame, data.fingerprint, crops.threshold, listed, crops.mode
    )
    if problems:
        raise DataError(problems, root=str(root))
    return dataclasses.replace(data, frame=frame, fingerprint=fingerprint)


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
    model_sha256: str = "",
) -> Predictions:
    """Probabilities of `model` (from the file at `model_uri`, described by `meta`) for every
    image of `data` (validated), read from the image cache (built here for the images validation
    did not decode), on the model's device."""
    if tta not in TTA_CHOICES:
        raise ConfigError(f"tta {tta!r} is not one of {', '.join(TTA_CHOICES)}")
    device = next(model.parameters()).device
    crops = model_crops(meta)
    found = samples.sample_table(data.frame)  # a photo, or each of its boxes (data.crop=all)
    pack = _pack(found, meta.image_size, image_cache, crops)
    raw = _probabilities(model, meta, pack, tta, batch_size, device, progress)
    classes = list(meta.classes)
    temperature = meta.temperature if calibration else 1.0
    per_photo = samples.image_probabilities(raw, found["image"].to_numpy(), classes)
    frame = pd.DataFrame(_calibrated(per_photo, temperature), columns=classes)
    frame.insert(0, "id", data.frame["id"].to_numpy())
    check_finite(frame, classes, model_uri)
    boxes = None
    if crops is not None and crops.mode == "all":
        boxes = _box_table(found, _calibrated(raw, temperature), classes)
    result = Predictions(frame, model_uri, meta, temperature, tta, data.fingerprint,
                         data.frame, data.failed, model_sha256, boxes)  # fmt: skip
    log.info("predict: %s", result.describe())
    return result


def check_finite(frame: pd.DataFrame, classes: list[str], model_uri: str) -> None:
    """ModelFileError when a probability is NaN or infinite (weights that hold one): written,
    it would be an empty cell a submission or a reviewer takes for an answer."""
    bad = ~np.isfinite(frame[classes].to_numpy()).all(axis=1)
    if bad.any():
        raise ModelFileError(
            f"model file {redact_uri(model_uri)} gives probabilities that are not numbers (NaN "
            f"or infinite) for {bad.sum()} of {len(frame)} photos (first: "
            f"{frame['id'].iloc[bad.argmax()]}): its weights hold NaN or infinite values — fix: "
            "use another model file (e.g. one saved before its training diverged), or retrain"
        )


def _calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    return _normalised(apply_temperature(probs, temperature))


def _box_table(found: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """id, x, y, w, h and the class probabilities of every sample that is a box (a photo
    without one is its whole frame: not a box)."""
    is_box = found["box"].notna().to_numpy()
    table = pd.DataFrame(probs[is_box], columns=classes)
    coords = pd.DataFrame(found.loc[is_box, "box"].tolist(), columns=["x", "y", "w", "h"])
    return pd.concat([found.loc[is_box, ["id"]].reset_index(drop=True), coords, table], axis=1)


def _pack(found: pd.DataFrame, image_size: int, image_cache: Path | None,
          crops: Crops | None = None) -> imagecache.Pack:  # fmt: skip
    """The image cache's pack of the samples `found` (camtrap.samples.sample_table)."""
    margin = crops.margin if crops is not None else 0.0
    entries = samples.cache_entries(found, found["path"], margin)
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


def labelled(result: Predictions, options: PredictOptions) -> outputs.Labelled:
    """What the outputs write: the predictions, the photos, the failures and, where the photos
    have events, each event's prediction (options.event_rule over frames event_gap_s apart)."""
    classes = list(result.meta.classes)
    gap_s, rule = event_settings(options, result.meta)
    photos = _with_event_columns(result.photos)
    photos = photos.assign(event=events.event_ids(photos, gap_s).to_numpy())
    table = None
    if events.has_events(photos, gap_s):
        probs = result.frame[classes].to_numpy()
        table = events.events_table(photos, probs, classes, rule, gap_s)
    return outputs.Labelled(
        probs=result.frame, photos=photos, classes=classes,
        model_name=Path(result.model_uri).name, model_sha256=result.model_sha256,
        failed=result.failed, events=table, boxes=result.boxes,
    )  # fmt: skip


def event_settings(options: PredictOptions, meta: ModelMeta) -> tuple[float, str]:
    """(gap, rule): the options', else the model's run's predict section, else the defaults."""
    saved = meta.config.get("predict", {}) if isinstance(meta.config, dict) else {}
    run = PredictConfig(**{k: v for k, v in saved.items() if k in PredictConfig.model_fields})
    return (options.event_gap_s or run.event_gap_s, options.event_rule or run.event_rule)


def _with_event_columns(photos: pd.DataFrame) -> pd.DataFrame:
    missing = {c: "" for c in ("site", "event", "timestamp") if c not in photos.columns}
    return photos.assign(**missing) if missing else photos


def write_outputs(result: Predictions, output_uri: str, options: PredictOptions,
                  root: Path | None = None) -> list[str]:  # fmt: skip
    """`result` at `output_uri` in `options.format` (camtrap.outputs); `root`: the local copy
    of the input (a Camtrap DP package's, for --format camtrap-dp). Returns the URIs written."""
    package = root if options.input == "camtrap-dp" else None
    new = None
    if package is None and options.deployments and root is not None:
        new = NewPackage(root, options.deployments, options.utc_offset, root.name)
    taxonomy = outputs.read_taxonomy(options.taxonomy)
    return outputs.write(labelled(result, options), output_uri, options.format, package, taxonomy,
                         new)  # fmt: skip


OUTPUT_SUFFIX = {"csv": ".csv", "megadetector": ".json", "camtrap-dp": "-camtrap-dp"}


def prediction_name(fingerprint: str, tta: str = "none", calibration: bool = True,
                    model_file: str = "", fmt: str = "csv") -> str:  # fmt: skip
    """`{fingerprint}.csv` for the run's best model with the defaults; other choices are named
    after the fingerprint, so one run's predictions with different options never overwrite each
    other (e.g. `{fp}-final_swin_t_model_part1_best_logloss-hflip-uncalibrated.csv`); `fmt`
    gives the suffix (`.json` for megadetector, `-camtrap-dp` for a package's folder)."""
    parts = [fingerprint]
    if model_file and not model_file.endswith("_best.pth"):
        parts.append(Path(model_file).stem)
    if tta != "none":
        parts.append(tta)
    if not calibration:
        parts.append("uncalibrated")
    return "-".join(parts) + OUTPUT_SUFFIX[fmt]


# --- the whole path (the CLI) --------------------------------------------------------------------


def predict(
    model_uri: str,
    data_uri: str,
    output_uri: str,
    *,
    options: PredictOptions | None = None,
    tta: str = "none",
    calibration: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    progress: bool = False,
    cache_root: Path | None = None,
    out_inside_data: bool = False,
) -> Predictions:
    """Resolve the model, fetch and validate the photos, predict, write `options.format` to
    `output_uri` (checked first: camtrap.outputs.check_output; inside `data_uri` only with
    `out_inside_data`). Nothing is written unless every step succeeded; `written` says where."""
    options = options or PredictOptions()
    check_options(tta, device, batch_size)
    given, model_uri = model_uri, resolve_model_uri(model_uri)
    output_uri = outputs.check_output(output_uri, options.format,  # before minutes of work
                                      inputs_of(data_uri, options, given, model_uri), data_uri,
                                      out_inside_data)  # fmt: skip
    options = resolved(data_uri, options)
    check_format(options)
    model_file = local_model_file(model_uri, cache_root)
    model, meta = load(model_file, device)
    root = fetch_input(data_uri, options, cache_root)
    image_cache = _cache_root(cache_root) / "images" if cache_root is not None else None
    data = validate_photos(root, options, meta.image_size, image_limits(meta), image_cache,
                           model_crops(meta))  # fmt: skip
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
        model_sha256=file_sha256(model_file),
    )
    written = write_outputs(result, output_uri, options, root)
    for uri in written:
        log.info("predictions written to %s", uri)
    return dataclasses.replace(result, written=written)


def inputs_of(data_uri: str, options: PredictOptions, *models: str) -> dict[str, str]:
    """What a predict reads, URI -> what it is: no --out may be one of them."""
    named = {"the features CSV": options.features_csv, "the COCO file": options.annotations,
             "the detections file": options.detections}  # fmt: skip
    inputs = {storage.join(data_uri, rel): what for what, rel in named.items() if rel}
    inputs.update({uri: "the model file" for uri in models})
    given = {options.taxonomy: "the taxonomy CSV", options.deployments: "the deployments CSV"}
    inputs.update({uri: what for uri, what in given.items() if uri})
    return inputs


def check_format(options: PredictOptions) -> None:
    """ConfigError for an output the input cannot give, or a --taxonomy / --deployments that
    cannot be read, before any photo is."""
    if options.format == "camtrap-dp" and options.input != "camtrap-dp":
        if not options.deployments:
            raise outputs.not_a_package(f"{options.input} photos")
        read_deployments(options.deployments)
    outputs.read_taxonomy(options.taxonomy)
