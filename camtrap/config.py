"""Run configuration: one pydantic model per concern, validated at the edge (CLI, flow parameters).

A run is a preset (`part1` = the seed recipe, `smoke` = a two-minute CPU run), optionally a YAML
file on top, then `key=value` overrides with dotted keys (`train.epochs=2`)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

from camtrap.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BestMetric = Literal["val_accuracy", "val_loss", "val_log_loss", "val_top3_accuracy"]

# Images larger than these are refused at validation, before their pixels are decoded: a
# hostile or broken file must not take the machine's memory. 50 megapixels is above every
# camera-trap camera (12-24 MP typical) and decodes to 150 MB of RGB. 50 MB is far above a
# camera-trap JPEG (1-10 MB; even a 50 MP JPEG at quality 95 is about 20 MB) and bounds what
# validation holds in memory at once (each of its 8 reader threads holds one whole file: 400 MB).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_MAX_IMAGE_BYTES = 50 * 2**20


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    features_csv: str = "train_features.csv"
    labels_csv: str = "train_labels.csv"
    split: Literal["random", "stratified", "site"] = "random"
    val_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    split_seed: int = 42
    image_size: int = Field(224, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = Field(4, ge=0)
    # Also keep each dataset's image cache under {output_uri}/cache/, so a worker on another
    # machine downloads it instead of decoding every image again.
    cache_mirror: bool = False
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)  # width x height, per image
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1)  # file size, per image


class ModelConfig(_Section):
    arch: str = "swin_t"
    # "IMAGENET1K_V1" / "DEFAULT" (torchvision's download), "none", or a local path / s3:// URI
    # of a file (a torchvision state_dict or a camtrap model file).
    weights: str = "IMAGENET1K_V1"
    drop_path: float = Field(0.2, ge=0.0, lt=1.0)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        from camtrap.models import (
            SUPPORTED_ARCHS,
        )  # local: models imports torch, config must stay light

        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
        return arch

    # A weights URI may carry credentials (a presigned query string, user:password@). Every dump
    # (run.json, model files, resume state, Prefect cache keys) and repr shows it redacted; the
    # attribute keeps the real value, which is what loads the file.
    @field_serializer("weights")
    def _redacted_weights(self, weights: str) -> str:
        return redact_uri(weights)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_uri(value) if name == "weights" else value


REDACTED = "REDACTED"
# A URI inside a message, without the punctuation that usually follows one there.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")


def redact_uri(uri: str) -> str:
    """`uri` without its secrets: user info (`user:password@`) and the values of its query
    string and fragment (a presigned URL's signature and token) become REDACTED; the scheme,
    host, path and query keys stay, so the file is still recognisable. Plain paths and names
    are returned as they are."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # not parseable (e.g. an unclosed "[" in the host): hide all after ://
        return uri.partition("://")[0] + "://" + REDACTED
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return uri  # nothing secret: left byte for byte as given
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query, fragment = _redact_pairs(parts.query), _redact_pairs(parts.fragment)
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_pairs(text: str) -> str:
    """`a=1&b=2` -> `a=REDACTED&b=REDACTED`; a part without `=` may itself be a token."""
    if not text:
        return text
    pairs = (part.partition("=") for part in text.split("&"))
    return "&".join(f"{key}={REDACTED}" if sep else REDACTED for key, sep, _ in pairs)


def redact_text(text: str) -> str:
    """`text` (an error message, a log line) with every URI in it redacted (`redact_uri`)."""
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)


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

    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


class OutputConfig(_Section):
    stage: str = Field("part1", pattern=r"^[A-Za-z0-9_.-]+$")


class RunConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()


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
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, f"preset {preset}")) from None
