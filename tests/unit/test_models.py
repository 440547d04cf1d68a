import json
import logging

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from camtrap import modelfile, models
from camtrap.config import HEADS, build_config
from camtrap.errors import ConfigError, StorageError
from camtrap.modelfile import ModelMeta, model_file_dict
from camtrap.models import build_model, load_model, resolve_init_from, warm_start

REQUIRED = [
    "swin_t",
    "swin_s",
    "swin_b",
    "resnet18",
    "resnet50",
    "convnext_tiny",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "vit_b_16",
]


def _head(model: nn.Module, arch: str) -> nn.Linear:
    return model.get_submodule(HEADS[arch])


@pytest.mark.parametrize("arch", REQUIRED)
def test_head_is_replaced_for_every_required_arch(arch):
    model = build_model(arch, num_classes=7, weights="none", image_size=64)
    head = _head(model, arch)
    assert isinstance(head, nn.Linear) and head.out_features == 7


def test_swin_t_head_is_768_to_n_classes_like_the_seed():
    model = build_model("swin_t", num_classes=8, weights="none", drop_path=0.2)
    assert (model.head.in_features, model.head.out_features) == (768, 8)


def test_drop_path_sets_the_largest_stochastic_depth_rate():
    model = build_model("swin_t", num_classes=3, weights="none", drop_path=0.1)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    # torchvision's swin_t schedule is 0.2 * i / 11 for its 12 blocks; scaled to a 0.1 maximum
    assert max(rates) == pytest.approx(0.1)
    assert rates[0] == pytest.approx(0.0)
    assert rates[6] == pytest.approx(0.1 * 6 / 11)


def test_drop_path_0_2_on_swin_t_keeps_torchvision_schedule():
    model = build_model("swin_t", num_classes=3, weights="none", drop_path=0.2)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert rates == pytest.approx([0.2 * i / 11 for i in range(12)])


def test_vit_builds_for_small_images_without_pretrained_weights():
    model = build_model("vit_b_16", num_classes=2, weights="none", image_size=32)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_unknown_arch_and_unknown_weights_name_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown arch"):
        build_model("resnet9000", 2, weights="none")
    with pytest.raises(StorageError, match="does not exist"):
        build_model("resnet18", 2, weights=str(tmp_path / "missing.pth"))


def test_weights_from_a_torchvision_state_dict_file(tmp_path):
    source = build_model("resnet18", 1000, weights="none")
    # An ImageNet-style file: the full torchvision state_dict with its 1000-class head.
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", 5, weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)  # backbone taken
    assert model.fc.out_features == 5  # head replaced


def test_weights_file_of_another_arch_is_refused(tmp_path):
    torch.save(build_model("resnet18", 10, weights="none").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match="does not fit"):
        build_model("resnet50", 5, weights=str(tmp_path / "r18.pth"))


def _meta(**kw):
    base = dict(
        arch="resnet18",
        classes=["a", "b", "c"],
        image_size=32,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        epoch=4,
        metrics={"val_accuracy": 0.75},
        config={"train": {"epochs": 4}},
    )
    base.update(kw)
    return ModelMeta(**base)


def test_model_file_round_trips_with_weights_only(tmp_path):
    model = build_model("resnet18", 3, weights="none")
    path = tmp_path / "m.pth"
    torch.save(model_file_dict(model, _meta()), path)
    blob = torch.load(path, weights_only=True)  # the format's promise: plain types + tensors
    assert set(blob) >= {"model", "arch", "classes", "image_size", "mean", "std", "epoch"}
    loaded, meta = load_model(path)
    assert meta.classes == ["a", "b", "c"] and meta.epoch == 4
    assert meta.metrics == {"val_accuracy": 0.75}
    assert not loaded.training  # ready for inference
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))


def test_camtrap_model_file_as_weights_for_new_classes(tmp_path):
    model = build_model("resnet18", 3, weights="none")
    torch.save(model_file_dict(model, _meta()), tmp_path / "m.pth")
    fine_tune = build_model("resnet18", 9, weights=str(tmp_path / "m.pth"))
    assert torch.equal(fine_tune.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    assert fine_tune.fc.out_features == 9


def test_load_model_rejects_a_file_that_is_not_a_model(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(StorageError, match="not a readable PyTorch file"):
        load_model(tmp_path / "junk.pth")


# --- secrets in model.weights ----------------------------------------------------------------

CANARY_URI = "s3://b/w.pth?X-Amz-Credential=ASIAXYZ&X-Amz-Signature=CANARY123"
SHOWN_URI = "s3://b/w.pth?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"


def test_a_model_file_never_holds_the_weights_uris_credentials():
    cfg = build_config("smoke", overrides={"model.weights": CANARY_URI})
    model = build_model("resnet18", 3, weights="none")
    # As fit writes it (the config's JSON dump), and from a dict that skipped the dump.
    for config in (cfg.model_dump(mode="json"), {"model": {"weights": CANARY_URI}}):
        blob = model_file_dict(model, _meta(config=config))
        metadata = json.dumps({k: v for k, v in blob.items() if k != "model"})
        assert "CANARY" not in metadata
        assert blob["config"]["model"]["weights"] == SHOWN_URI
    assert cfg.model.weights == CANARY_URI  # the caller's config is left as it was


def _state_dict_as_read(monkeypatch, blob) -> list[str]:
    """read_model_file returns `blob` for any URI (no S3 here); returns the URIs it was given."""
    asked: list[str] = []

    def read(uri):
        asked.append(uri)
        return blob

    monkeypatch.setattr(models, "read_model_file", read)
    return asked


def test_loading_weights_logs_the_uri_redacted_and_reads_the_real_one(monkeypatch, caplog):
    source = build_model("resnet18", 1000, weights="none")
    asked = _state_dict_as_read(monkeypatch, source.state_dict())
    with caplog.at_level(logging.INFO, logger="camtrap"):
        model = build_model("resnet18", 2, weights=CANARY_URI)
    assert asked == [CANARY_URI]  # the real URI (with its signature) is what is read
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert f"loaded backbone weights for resnet18 from {SHOWN_URI}" in caplog.text
    assert "CANARY" not in caplog.text


def test_weights_errors_show_the_uri_redacted(monkeypatch):
    blob = {"arch": "resnet50", "model": {}}
    _state_dict_as_read(monkeypatch, blob)
    with pytest.raises(ConfigError) as caught:
        build_model("resnet18", 2, weights=CANARY_URI)
    assert str(caught.value) == f"weights file {SHOWN_URI} holds a resnet50 model, not resnet18"


@pytest.mark.parametrize(
    "error, message",
    [
        (FileNotFoundError(2, "No such file"), f"model file {SHOWN_URI} does not exist"),
        (OSError(f"403 Forbidden: GET {CANARY_URI}"), f"cannot read model file {SHOWN_URI}: 403"),
    ],
)
def test_read_errors_show_the_uri_redacted_and_chain_nothing(monkeypatch, error, message):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(modelfile.fsspec, "open", fail)
    with pytest.raises(StorageError) as caught:
        modelfile.read_model_file(CANARY_URI)
    assert str(caught.value).startswith(message)
    assert "CANARY" not in str(caught.value)
    # A chained cause would print the library's own text (with the full URL) in a traceback.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- warm start from a finished run (stage part2's model.init_from) ------------------------------


@pytest.mark.slow  # builds and loads models (no training)
def test_warm_start_gives_the_source_models_outputs(source_run):
    source, _ = load_model(source_run.best)
    model = build_model(source_run.arch, len(source_run.classes), "none", 0.0, 32)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model.eval()(x), source(x))
    warm_start(model, str(source_run.best), source_run.arch, source_run.classes)
    assert torch.equal(model.eval()(x), source(x))


@pytest.mark.slow  # builds and loads models (no training)
def test_init_from_resolves_a_run_folder_a_latest_pointer_and_a_file(source_run):
    best = str(source_run.best.resolve())
    for given in (source_run.run_dir, source_run.out / "smoke" / "latest.json", best):
        overrides = {"model.init_from": str(given), "model.arch": source_run.arch}
        config = build_config("part2", overrides=overrides)
        assert resolve_init_from(config).model.init_from == best, given


@pytest.mark.slow  # builds and loads models (no training)
def test_warm_start_refuses_other_classes_or_arch_and_names_a_missing_file(source_run):
    classes, best = source_run.classes, str(source_run.best)
    other = list(reversed(classes))
    model = build_model(source_run.arch, len(other), "none", 0.0, 32)
    with pytest.raises(ConfigError, match="was trained on classes") as err:
        warm_start(model, best, source_run.arch, other)
    assert str(classes) in str(err.value) and str(other) in str(err.value)
    with pytest.raises(ConfigError, match=f"holds a {source_run.arch} model, not resnet34"):
        warm_start(build_model("resnet34", 8, "none"), best, "resnet34", classes)
    missing = build_config(
        "part2", overrides={"model.init_from": str(source_run.out / "part1" / "latest.json")}
    )
    with pytest.raises(StorageError, match="model.init_from .*fix:"):
        resolve_init_from(missing)
