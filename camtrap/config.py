"""Run configuration: one pydantic model per concern, validated at the edge (CLI, flow parameters).

A run is a preset (`part1` = the seed recipe, `smoke` = a two-minute CPU run, `part2` = fine-tuning
a part1 model with augmentation), optionally a YAML file on top, then `key=value` overrides with
dotted keys (`train.epochs=2`)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from camtrap.errors import ConfigError
from camtrap.redact import URI_SETTINGS, redact_uri

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The supported archs (torchvision builders): arch -> dotted name of its classification head, the
# Linear layer camtrap.models replaces for our classes. Here, not in models: validating a config
# must not import torch (a flow checks its arguments before any work).
HEADS: dict[str, str] = {
    "swin_t": "head",
    "swin_s": "head",
    "swin_b": "head",
    "swin_v2_t": "head",
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "convnext_tiny": "classifier.2",
    "convnext_small": "classifier.2",
    "efficientnet_b0": "classifier.1",
    "efficientnet_b3": "classifier.1",
    "efficientnet_v2_s": "classifier.1",
    # 1.5M parameters (6 MB files): CPU-only machines and edge devices; the tests' tiny runs
    "mobilenet_v3_small": "classifier.3",
    "vit_b_16": "heads.head",
}
SUPPORTED_ARCHS = tuple(HEADS)

BestMetric = Literal["val_accuracy", "val_loss", "val_log_loss", "val_top3_accuracy"]

# Images larger than these are refused at validation, before their pixels are decoded: a
# hostile or broken file must not take the machine's memory. 50 megapixels is above every
# camera-trap camera (12-24 MP typical) and decodes to 150 MB of RGB. 50 MB is far above a
# camera-trap JPEG (1-10 MB; even a 50 MP JPEG at quality 95 is about 20 MB) and bounds what
# validation holds in memory at once (each of its 8 reader threads holds one whole file: 400 MB).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_MAX_IMAGE_BYTES = 50 * 2**20

# The Conser-vision file names, in one place: the defaults of data.features_csv /
# data.labels_csv, what `camtrap demo-data` writes, and the features CSV `camtrap predict` reads.
FEATURES_CSV = "train_features.csv"
LABELS_CSV = "train_labels.csv"
TEST_FEATURES_CSV = "test_features.csv"

# The dataset formats camtrap reads (camtrap.dataset.formats); "auto" picks the one a data root
# holds. Camtrap DP's package descriptor and the images of the folders layout:
DATA_FORMATS = ("auto", "conservision", "coco", "camtrap-dp", "folders")
DATAPACKAGE_JSON = "datapackage.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Prediction's options, here so that the predict flow's parameters need no torch import.
TTA_CHOICES = ("none", "hflip")
# What `camtrap predict` labels (camtrap.dataset.photos), what it writes (camtrap.outputs) and
# how frames make an event's prediction (camtrap.events).
PREDICT_INPUTS = ("auto", "conservision", "folder", "coco", "camtrap-dp")
PREDICT_FORMATS = ("csv", "megadetector", "camtrap-dp")
EVENT_RULES = ("mean", "max-animal")
DEFAULT_EVENT_GAP_S = 60.0


class _Section(BaseModel):
    # allow_inf_nan: every float setting is finite (train.warmup_epochs=.inf passed validation
    # and stopped training in an OverflowError).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _inside_data_root(name: str | None) -> str | None:
    """A dataset file's name (data.labels_csv, ...) if it is a relative path that stays inside
    the data root: never a file elsewhere on the machine (data.labels_csv=/etc/passwd was read,
    and a line of it quoted in the error). Links that lead out: csvtable.read_file."""
    if name is None:
        return name
    path = PurePosixPath(name.replace("\\", "/"))  # a Windows path's backslashes too
    parts = path.parts if name.strip() else ()
    if not parts or path.is_absolute() or ".." in parts or ":" in parts[0]:  # C:, s3://
        raise ValueError(
            f"{name!r} is not a file inside the data root — fix: name it relative to the data "
            "root, without '..' (e.g. meta/train_labels.csv); copy a file from elsewhere into "
            "the data root first"
        )
    return name


class DataConfig(_Section):
    # conservision: features_csv + labels_csv; coco: the COCO Camera Traps JSON `annotations`
    # (relative to the data root); camtrap-dp: datapackage.json at the root; folders:
    # ROOT/<class>/<image>; auto: whichever the data root holds (camtrap.dataset.formats).
    format: Literal["auto", "conservision", "coco", "camtrap-dp", "folders"] = "auto"
    features_csv: str = FEATURES_CSV
    labels_csv: str = LABELS_CSV
    annotations: str | None = None
    # An image labelled with two different classes: refuse (a problem to fix) or drop (left out,
    # counted), in every format.
    multi_label: Literal["refuse", "drop"] = "refuse"
    # Camtrap DP media whose filePath is an http(s) URL (Agouti's, GBIF's exports) are fetched
    # only when this is true (with the max_image_bytes limit); s3:// and local ones always are.
    allow_http: bool = False
    split: Literal["random", "stratified", "site"] = "random"
    # The train order each epoch: shuffle (every image once) or balanced (each class equally
    # likely per draw, with replacement; seeded by train.seed and the epoch, so resumable).
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    # Train on the animal, not the frame (camtrap.dataset.detections): a MegaDetector batch
    # output file (relative to the data root) and data.crop: best (each image's most confident
    # animal box with conf >= detection_threshold) or all (every such box its own sample,
    # labelled with its image's label), squared with crop_margin context on each side, clipped
    # to the image; an image with no such box keeps its whole frame (blanks).
    detections: str | None = None
    crop: Literal["none", "best", "all"] = "none"
    detection_threshold: float = Field(0.1, ge=0.0, le=1.0)
    crop_margin: float = Field(0.15, ge=0.0, le=1.0)
    val_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    split_seed: int = 42
    image_size: int = Field(224, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # With augment.enabled, the train split is cached at this size (px) and each epoch's random
    # crops of it are resized to image_size on the device; None: image_size. Validation and
    # predict always use images resized straight to image_size.
    train_cache_size: int | None = Field(None, ge=16, le=1024)
    num_workers: int = Field(4, ge=0)
    # Also keep each dataset's image cache under {output_uri}/cache/, so a worker on another
    # machine downloads it instead of decoding every image again.
    cache_mirror: bool = False
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)  # width x height, per image
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1)  # file size, per image

    _files_inside_root = field_validator("features_csv", "labels_csv", "annotations", "detections")(
        _inside_data_root
    )


class ModelConfig(_Section):
    arch: str = "swin_t"
    # "IMAGENET1K_V1" / "DEFAULT" (torchvision's download), "none", or a local path / s3:// URI
    # of a file (a torchvision state_dict or a camtrap model file).
    weights: str = "IMAGENET1K_V1"
    drop_path: float = Field(0.2, ge=0.0, lt=1.0)
    # Warm start: every weight (head included) from a camtrap model file of the same arch and
    # classes, instead of `weights`. A model file path/URI, a run folder (its best model) or a
    # stage's latest.json pointer (the best model of that stage's newest finished run); resolved
    # to the model file before the run id is derived (camtrap.models.resolve_init_from).
    init_from: str | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
        return arch

    # A weights URI may carry credentials (a presigned query string, user:password@). Every dump
    # (run.json, model files, resume state, Prefect cache keys) and repr shows it redacted; the
    # attribute keeps the real value, which is what loads the file.
    @field_serializer(*URI_SETTINGS)
    def _redacted_weights(self, uri: str | None) -> str | None:
        return None if uri is None else redact_uri(uri)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            uri = name in URI_SETTINGS and isinstance(value, str)
            yield name, redact_uri(value) if uri else value


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-5, gt=0.0)
    weight_decay: float = Field(1e-8, ge=0.0)
    # AMP is used where it helps: autocast + GradScaler on CUDA. On CPU it is always off (bf16
    # autocast is ~20x slower there), whatever this says.
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    best_metric: BestMetric = "val_accuracy"
    progress: bool | None = None  # None: a progress bar only when stderr is a terminal
    # Evaluation keeps no activations for backward, so it runs larger batches (None: twice
    # batch_size). Speed only: in eval mode each image's output is its own (up to float rounding).
    eval_batch_size: int | None = Field(None, ge=1)
    compile: bool = False  # torch.compile the model (the first epoch pays the compile time)
    # Learning rate per optimizer step: a linear warm-up over `warmup_epochs` (from lr/steps to
    # lr), then `lr` ("none") or a cosine decay to 0 at the last step ("cosine").
    schedule: Literal["none", "cosine"] = "none"
    warmup_epochs: float = Field(0.0, ge=0.0)
    # In the training loss only; val loss and log loss stay plain cross entropy.
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Per-class loss weights from the train split's counts (camtrap.balance): none, inverse
    # (N / (C n_c)) or effective (class-balanced loss, beta 0.999). Val loss stays unweighted.
    class_weights: Literal["none", "inverse", "effective"] = "none"
    # Training processes (DDP through torchrun, camtrap.launch): "auto" = one per visible
    # GPU (1 without GPUs); above 1 on CPU, that many gloo processes. batch_size is per process:
    # the effective batch is batch_size x nproc.
    nproc: Annotated[int, Field(ge=1)] | Literal["auto"] = 1

    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


class AugmentConfig(_Section):
    """Augmentation of the train split, per batch on the device (camtrap.augment): a random
    resized crop of the cached image (data.train_cache_size) to data.image_size, a horizontal
    flip, colour jitter. Off by default (part1 is the recipe without augmentation)."""

    enabled: bool = False
    # torchvision RandomResizedCrop's defaults: the crop's share of the image's area, and its
    # width/height ratio (drawn log-uniformly).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(0.5, ge=0.0, le=1.0)  # probability of a mirrored image
    # ColorJitter's: each factor drawn uniformly from [1 - x, 1 + x] per image; 0 turns it off.
    brightness: float = Field(0.0, ge=0.0, lt=1.0)
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    saturation: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _ordered_range(cls, pair: tuple[float, float]) -> tuple[float, float]:
        low, high = pair
        if not 0 < low <= high:
            raise ValueError(f"needs 0 < low <= high, not {list(pair)}")
        return pair

    @field_validator("crop_scale")
    @classmethod
    def _scale_at_most_one(cls, pair: tuple[float, float]) -> tuple[float, float]:
        if pair[1] > 1:
            raise ValueError(f"a crop is at most the whole image (scale <= 1), not {list(pair)}")
        return pair


class PredictConfig(_Section):
    """How photos make events (camtrap.events): frames of one site less than event_gap_s apart
    are one event where the data gives no event ids; an event's prediction is the mean of its
    frames', or (max-animal) its most confident non-blank frame's. A run scores its val events
    with these (metrics/events.csv) and `camtrap predict` with its model uses them."""

    event_gap_s: float = Field(DEFAULT_EVENT_GAP_S, gt=0)
    event_rule: Literal["mean", "max-animal"] = "mean"


class PredictOptions(_Section):
    """What `camtrap predict` and the predict-swin flow label and write. input auto: the
    features CSV when the data root has it (today's behaviour), else a Camtrap DP package, the
    COCO file `annotations`, else every image under the root (a memory card's folder)."""

    input: Literal["auto", "conservision", "folder", "coco", "camtrap-dp"] = "auto"
    features_csv: str = TEST_FEATURES_CSV
    annotations: str | None = None  # the COCO Camera Traps JSON, relative to the data root
    format: Literal["csv", "megadetector", "camtrap-dp"] = "csv"
    # A CSV (class, scientificName) naming the classes in Camtrap DP output; None: the class names
    taxonomy: str | None = None
    allow_http: bool = False  # fetch Camtrap DP media named by http(s) URL (data.allow_http)
    # The MegaDetector output for the photos (relative to the data root): a model trained on
    # crops (data.crop=best or all) labels the same crops of new photos
    detections: str | None = None
    # A new Camtrap DP package from photos that are not one (camtrap.outputs.newpackage): the
    # deployments CSV (deploymentID = each photo's site, latitude, longitude), and the UTC
    # offset of capture times written without one.
    deployments: str | None = None
    utc_offset: str | None = Field(None, pattern=r"^(Z|[+-]\d\d:\d\d)$")
    # None: the model's run's predict.event_gap_s / predict.event_rule (PredictConfig)
    event_gap_s: float | None = Field(None, gt=0)
    event_rule: Literal["mean", "max-animal"] | None = None

    _files_inside_root = field_validator("features_csv", "annotations", "detections")(
        _inside_data_root
    )


class OutputConfig(_Section):
    stage: str = Field("part1", pattern=r"^[A-Za-z0-9_.-]+$")


class RunConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    predict: PredictConfig = PredictConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        size, cache = self.data.image_size, self.data.train_cache_size
        if cache is not None and cache < size:
            raise ValueError(
                f"data.train_cache_size ({cache}) is below data.image_size ({size}): crops are "
                "taken from the cached image — fix: set it to image_size or more (e.g. 256 for 224)"
            )
        if cache not in (None, size) and not self.augment.enabled:
            raise ValueError(
                f"data.train_cache_size={cache} without augment.enabled: without random crops "
                "the model would train at another size than it is validated at — fix: set "
                "augment.enabled=true, or drop data.train_cache_size"
            )
        if (self.data.crop != "none") != (self.data.detections is not None):
            raise ValueError(
                f"data.crop={self.data.crop} and data.detections="
                f"{self.data.detections or 'none'}: crops and detections go together (the "
                "crops come from the detections) — fix: set both (data.detections=FILE.json "
                "relative to the data root, data.crop=best or all), or neither"
            )
        if self.model.init_from is not None and self.model.weights.lower() != "none":
            raise ValueError(
                f"model.init_from and model.weights={self.model.weights!r} both set: the warm "
                "start replaces every weight — fix: set model.weights=none (preset part2 does)"
            )
        return self

    def train_size(self) -> int:
        """The size (px) of the cached train images the loader yields."""
        if not self.augment.enabled:
            return self.data.image_size
        return self.data.train_cache_size or self.data.image_size


PRESETS: dict[str, dict[str, Any]] = {
    # The seed recipe, exactly: the defaults above are that recipe.
    "part1": {},
    # A CPU run of about two minutes on the demo data: small images, a small net, no pretrained
    # weights (so a higher learning rate), a few epochs.
    "smoke": {
        "data": {"image_size": 64, "num_workers": 0},
        "model": {"arch": "resnet18", "weights": "none", "drop_path": 0.0},
        "train": {"epochs": 15, "batch_size": 32, "lr": 5e-4, "weight_decay": 1e-4},
        "output": {"stage": "smoke"},
    },
    # Fine-tuning a part1 model (model.init_from, required) with augmentation. Each value, why:
    "part2": {
        # Crops of a 256 px image resized to 224 (ImageNet's 0.875 ratio): at crop scale 1 a
        # train image is the whole frame, as val and predict see it (straight to 224).
        "data": {"train_cache_size": 256},
        # The part1 model replaces the ImageNet weights: nothing to download.
        "model": {"weights": "none"},
        "train": {
            # The model starts trained; half of part1's epochs, more than a few because each
            # epoch now shows new crops of every image.
            "epochs": 15,
            # part1's learning rate as the peak: the warm-started weights were tuned at it, a
            # larger one undoes that. One epoch of warm-up: Adam's moment estimates start at
            # zero and the first steps on augmented images would otherwise be full-size jumps.
            "lr": 1e-5,
            "schedule": "cosine",
            "warmup_epochs": 1,
            # Softer targets against over-confident probabilities (the score is log loss);
            # the temperature fitted after training corrects the rest.
            "label_smoothing": 0.1,
        },
        "augment": {
            "enabled": True,
            # Camera-trap animals are often small or at the frame's edge: a crop of 8% of the
            # frame (torchvision's lower bound) often holds no animal, teaching labels on empty
            # ground. A quarter of the area keeps half of each side at least.
            "crop_scale": [0.25, 1.0],
            # Animals walk both ways; day/night, weather and camera models vary exposure and
            # colour (night IR images are grey: saturation leaves them unchanged).
            "hflip": 0.5,
            "brightness": 0.2,
            "contrast": 0.2,
            "saturation": 0.2,
        },
        "output": {"stage": "part2"},
    },
}
# Settings a preset cannot run without: (dotted key, the fix shown when it is missing).
REQUIRED: dict[str, dict[str, str]] = {
    "part2": {
        "model.init_from": "--set model.init_from=OUTPUT/part1/latest.json (or a part1 run folder "
        "or model file)",
    },
}


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=2` -> ("train.epochs", 2). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not key=value (example: --set train.epochs=2)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A new tree: `extra` over `base`; neither input is modified or shared (PRESETS stay)."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping (data:, model:, train:, output:)"
        )
    return loaded


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        lines.append(f"  - {where}: {item['msg']}")
    return "\n".join(lines)


def predict_options(**fields: Any) -> PredictOptions:
    """PredictOptions from command-line values; ConfigError listing every invalid one."""
    try:
        return PredictOptions(**fields)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "camtrap predict options")) from None


def build_config(
    preset: str = "part1",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> RunConfig:
    """Preset, then YAML file, then overrides (dotted keys); ConfigError lists every problem."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    tree = _merge({}, PRESETS[preset])
    if config_file is not None:
        tree = _merge(tree, _read_yaml(config_file))
    pairs = (
        overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    )
    for key, value in pairs:
        _set_dotted(tree, key, value)
    try:
        config = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, f"preset {preset}")) from None
    _check_required(preset, config)
    return config


def _check_required(preset: str, config: RunConfig) -> None:
    for key, fix in REQUIRED.get(preset, {}).items():
        section, _, name = key.partition(".")
        if getattr(getattr(config, section), name) is None:
            raise ConfigError(f"preset {preset} needs {key} — fix: {fix}")
