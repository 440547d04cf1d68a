"""Nets: torchvision models with camtrap's head, built for a run (`build_model`), warm-started
from another run's model file (model.init_from), or loaded ready to predict from a model file
(`load_model`; the file's format is camtrap.modelfile's)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import StochasticDepth

from camtrap import storage
from camtrap.config import HEADS, SUPPORTED_ARCHS, RunConfig
from camtrap.errors import ConfigError, ModelFileError, StorageError
from camtrap.latest import resolve_model_uri
from camtrap.modelfile import MODEL_FILE_FIX, ModelMeta, read_model_file
from camtrap.redact import redact_text, redact_uri

log = logging.getLogger("camtrap")

TORCHVISION_WEIGHTS = ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT")


def build_model(
    arch: str,
    num_classes: int,
    weights: str = "IMAGENET1K_V1",
    drop_path: float = 0.0,
    image_size: int = 224,
) -> nn.Module:
    """A torchvision `arch` with its head replaced by Linear(in_features -> num_classes).

    weights: a torchvision weights name (downloaded and cached by torchvision), "none", or a
    path/URI of a file holding a torchvision state_dict or a camtrap model file.
    drop_path: the largest stochastic-depth rate; each arch keeps its own per-block schedule.
    """
    if arch not in HEADS:
        raise ConfigError(f"unknown arch {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
    model = _torchvision_model(arch, weights, image_size)
    if _is_weights_file(weights):
        _load_weights_file(model, weights, arch)
    _replace_head(model, arch, num_classes)
    _set_drop_path(model, arch, drop_path)
    return model


def _is_weights_file(weights: str) -> bool:
    return weights.lower() != "none" and weights.upper() not in TORCHVISION_WEIGHTS


def _torchvision_model(arch: str, weights: str, image_size: int) -> nn.Module:
    if weights.upper() in TORCHVISION_WEIGHTS:
        enum = torchvision.models.get_model_weights(arch)
        name = weights.upper()
        if name != "DEFAULT" and name not in enum.__members__:
            raise ConfigError(
                f"{arch} has no weights {name}; choose one of {list(enum.__members__)}"
            )
        return torchvision.models.get_model(arch, weights=enum[name])
    # ViT's position embeddings are sized by the image; other archs adapt to any size.
    kwargs = {"image_size": image_size} if arch.startswith("vit") else {}
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _load_weights_file(model: nn.Module, uri: str, arch: str) -> None:
    """Load a torchvision state_dict (ImageNet head) or a camtrap model file into `model`.

    A camtrap file's head has other classes than ImageNet's, so its head is skipped: only the
    backbone is taken, and the head is replaced afterwards anyway."""
    blob = read_model_file(uri)
    state = blob["model"] if isinstance(blob, dict) and "model" in blob else blob
    if isinstance(blob, dict) and blob.get("arch") not in (None, arch):
        shown = redact_uri(uri)
        raise ConfigError(f"weights file {shown} holds a {blob['arch']} model, not {arch}")
    head = HEADS[arch] + "."
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = [k for k in own if not k.startswith(head) and k not in backbone]
    if missing:
        raise ConfigError(
            f"weights file {redact_uri(uri)} does not fit {arch}: {len(missing)} tensors missing "
            f"(first: {missing[0]}); use a file saved from the same architecture"
        )
    model.load_state_dict(backbone, strict=False)
    log.info("loaded backbone weights for %s from %s", arch, redact_uri(uri))


# --- warm start (model.init_from) ------------------------------------------------------------


def resolve_init_from(config: RunConfig) -> RunConfig:
    """`config` with model.init_from resolved to the model file it stands for now: a run folder
    -> its best model, a latest.json pointer -> the best model of the run it names (a local path
    made absolute). Called before the run id is derived, so a different starting model is a
    different run and run.json names the file used. StorageError, with the fix, when there is
    no such file."""
    given = config.model.init_from
    if given is None:
        return config
    try:
        found = resolve_model_uri(given)
    except StorageError as err:
        raise StorageError(f"model.init_from {redact_uri(given)}: {redact_text(str(err))} "
                           "(part2 starts from a finished part1 run)") from None  # fmt: skip
    if not storage.is_remote(found):
        found = str(Path(found).resolve())
    if found != given:
        log.info("model.init_from %s -> %s", redact_uri(given), redact_uri(found))
    return config.model_copy(update={"model": config.model.model_copy(update={"init_from": found})})


def warm_start(model: nn.Module, uri: str, arch: str, classes: list[str]) -> None:
    """Every weight of `model`, head included, from the camtrap model file `uri`
    (model.init_from, resolved). ConfigError when it holds another arch or other classes: its
    head would predict the wrong classes (fix: start from a model of this dataset)."""
    shown = redact_uri(uri)
    blob = read_model_file(resolve_model_uri(uri))  # resolved already: unchanged
    if not isinstance(blob, dict) or not {"arch", "classes", "model"} <= set(blob):
        raise ConfigError(
            f"model.init_from {shown} is not a camtrap model file (no arch/classes/model) — fix: "
            "use a final_*_best.pth, its run folder or a latest.json; a torchvision state_dict "
            "goes in model.weights"
        )
    if blob["arch"] != arch:
        raise ConfigError(
            f"model.init_from {shown} holds a {blob['arch']} model, not {arch} — fix: set "
            f"model.arch={blob['arch']} or start from a {arch} run"
        )
    if list(blob["classes"]) != list(classes):
        raise ConfigError(
            f"model.init_from {shown} was trained on classes {list(blob['classes'])}, but this "
            f"dataset has {list(classes)} — fix: start from a model of the same classes (in "
            "the same order), or leave model.init_from unset"
        )
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as err:
        raise ConfigError(f"model.init_from {shown} does not fit {arch}: {err}") from None
    log.info("warm start: every weight from %s (epoch %s)", shown, blob.get("epoch"))


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    parent_name, _, attr = HEADS[arch].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def _set_drop_path(model: nn.Module, arch: str, drop_path: float) -> None:
    layers = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    if not layers:
        if drop_path > 0:
            log.warning(
                "%s has no stochastic depth; model.drop_path=%s is ignored", arch, drop_path
            )
        return
    # Rescale torchvision's own schedule (rate rising with depth) so its largest rate is drop_path.
    top = max(m.p for m in layers)
    for m in layers:
        m.p = m.p * drop_path / top if top > 0 else drop_path


def load_model(uri: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """A ready-to-use model (eval mode) from a camtrap model file, plus its metadata. The file is
    not trusted: its metadata is validated (camtrap.modelfile.FileFields) and its weights must
    be its arch's with its number of classes; else one ModelFileError naming the file."""
    shown = redact_uri(str(uri))
    blob = read_model_file(uri)
    meta = ModelMeta.of(blob, shown)
    model = build_model(meta.arch, len(meta.classes), weights="none", image_size=meta.image_size)
    _load_own_weights(model, blob["model"], meta, shown)
    return model.to(device).eval(), meta


def _load_own_weights(model: nn.Module, state: dict, meta: ModelMeta, shown: str) -> None:
    """`state` into `model` (strict), or a ModelFileError that counts what does not fit: torch's
    own message lists every key, kilobytes of them."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and _shape(state[k]) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        found = {"missing": missing, "unexpected": unexpected, "wrong shape": shapes}
        counts = [f"{name}: {len(keys)}" for name, keys in found.items() if keys]
        if shapes:  # the classes' head, most often: the one a reader can check
            counts[-1] += f", e.g. {shapes[0]}"
        raise ModelFileError(
            f"model file {shown}: its weights are not a {meta.arch} with {len(meta.classes)} "
            f"classes ({', '.join(counts)}) — fix: {MODEL_FILE_FIX}"
        )
    model.load_state_dict(state)


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


class MirrorAverage(nn.Module):
    """Test-time augmentation: the mean of the softmax of `model` on a batch and on its mirror
    image (flipped left-right). Returns the log of that mean, so the softmax that every caller
    applies to a model's output gives the mean probabilities back exactly."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        plain = torch.softmax(self.model(images).float(), dim=1)
        mirrored = torch.softmax(self.model(torch.flip(images, dims=[3])).float(), dim=1)
        return torch.log((plain + mirrored) / 2)
