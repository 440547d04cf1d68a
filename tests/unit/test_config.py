import json

import pytest

from camtrap.config import PRESETS, DataConfig, RunConfig, build_config, parse_override
from camtrap.errors import ConfigError
from camtrap.redact import redact_text, redact_uri


def test_part1_is_the_seed_recipe():
    cfg = build_config("part1")
    # Every number of the seed's stage-1 recipe, one by one.
    assert cfg.model.arch == "swin_t"
    assert cfg.model.weights == "IMAGENET1K_V1"
    assert cfg.model.drop_path == 0.2
    assert (cfg.train.lr, cfg.train.weight_decay) == (1e-5, 1e-8)
    assert cfg.train.batch_size == 64
    assert cfg.train.epochs == 30
    assert cfg.data.image_size == 224
    assert (cfg.data.split, cfg.data.val_fraction) == ("random", 0.25)
    assert cfg.data.num_workers == 4
    assert cfg.train.amp is True
    assert cfg.train.best_metric == "val_accuracy"
    assert cfg.data.mean == (0.485, 0.456, 0.406) and cfg.data.std == (0.229, 0.224, 0.225)
    assert cfg.output.stage == "part1"


def test_smoke_is_a_small_cpu_run():
    cfg = build_config("smoke")
    assert cfg.model.arch == "resnet18" and cfg.model.weights == "none"
    assert cfg.data.image_size == 64
    assert cfg.output.stage == "smoke"


def test_overrides_with_dotted_keys_are_typed():
    cfg = build_config("part1", overrides=["train.epochs=2", "data.split=site", "train.lr=3e-4"])
    # "2" parses as YAML -> int 2; "3e-4" -> float
    assert cfg.train.epochs == 2
    assert cfg.data.split == "site"
    assert cfg.train.lr == pytest.approx(3e-4)


def test_dict_overrides_as_flow_parameters_pass_them():
    cfg = build_config("smoke", overrides={"train.epochs": 1, "data.image_size": 32})
    assert (cfg.train.epochs, cfg.data.image_size) == (1, 32)


def test_yaml_file_is_applied_between_preset_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 5\n  batch_size: 8\n")
    cfg = build_config("part1", path, ["train.epochs=3"])
    assert cfg.train.batch_size == 8  # from the file
    assert cfg.train.epochs == 3  # the override wins over the file


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=2", "train.epoch"),  # typo: extra="forbid" names the bad key
        ("train.epochs=zero", "train.epochs"),
        ("data.split=alphabetical", "data.split"),
        ("model.arch=resnet9000", "unknown arch"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("noequals", "key=value"),
    ],
)
def test_bad_overrides_raise_config_error_naming_the_field(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        build_config("part1", overrides=[override])


def test_unknown_preset_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("part9")
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("part1", tmp_path / "nope.yaml")


def test_parse_override_keeps_strings():
    assert parse_override("model.weights=/tmp/w.pth") == ("model.weights", "/tmp/w.pth")


def test_every_preset_validates():
    needs = {"part2": {"model.init_from": "runs/part1/latest.json"}}  # config.REQUIRED
    for name in PRESETS:
        assert isinstance(build_config(name, overrides=needs.get(name)), RunConfig)


def test_overrides_never_leak_into_the_presets():
    build_config("smoke", overrides={"data.image_size": 32, "train.epochs": 1})
    # A second build from the same preset starts from the preset, not from the last overrides.
    cfg = build_config("smoke")
    assert (cfg.data.image_size, cfg.train.epochs) == (64, 15)


# --- hostile input: image size limits -------------------------------------------------------


def test_image_size_limits_default_to_50_megapixels_and_50_mb():
    data = DataConfig()
    assert data.max_image_pixels == 50_000_000
    assert data.max_image_bytes == 52_428_800  # 50 * 1024 * 1024
    cfg = build_config(
        "smoke", overrides=["data.max_image_pixels=100000000", "data.max_image_bytes=1"]
    )
    assert (cfg.data.max_image_pixels, cfg.data.max_image_bytes) == (100_000_000, 1)
    for key in ("data.max_image_pixels", "data.max_image_bytes"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_config("smoke", overrides=[f"{key}=0"])


# --- secrets in model.weights ----------------------------------------------------------------

PRESIGNED = (
    "s3://b/w.pth?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIACANARY456%2F20260101"
    "&X-Amz-Signature=CANARY123"
)


@pytest.mark.parametrize(
    "weights, shown",
    [
        (
            PRESIGNED,
            "s3://b/w.pth?X-Amz-Algorithm=REDACTED&X-Amz-Credential=REDACTED"
            "&X-Amz-Signature=REDACTED",
        ),
        ("https://user:CANARY123@models.example/w.pth", "https://REDACTED@models.example/w.pth"),
        (
            "https://CANARY123@h:8443/w.pth?v=2#t=CANARY123",
            "https://REDACTED@h:8443/w.pth?v=REDACTED#t=REDACTED",
        ),
        ("https://h/w.pth?CANARY123", "https://h/w.pth?REDACTED"),
    ],
)
def test_weights_with_credentials_are_redacted_in_every_dump_and_repr(weights, shown):
    cfg = build_config("smoke", overrides={"model.weights": weights})
    assert cfg.model.weights == weights  # the real value, which loads the file
    as_json = cfg.model_dump(mode="json")  # what run.json, model files and resume state hold
    assert as_json["model"]["weights"] == shown
    for text in (json.dumps(as_json), cfg.model_dump_json(), str(cfg.model_dump()), repr(cfg)):
        assert "CANARY" not in text
    assert f"weights='{shown}'" in repr(cfg.model)


@pytest.mark.parametrize(
    "weights", ["IMAGENET1K_V1", "none", "/data/w?.pth", "s3://b/models/w.pth", "file:///w.pth"]
)
def test_weights_without_credentials_are_dumped_as_given(weights):
    cfg = build_config("smoke", overrides={"model.weights": weights})
    assert cfg.model_dump(mode="json")["model"]["weights"] == weights
    assert redact_uri(weights) == weights


def test_redact_text_redacts_every_uri_in_a_message():
    text = "cannot read https://u:CANARY123@h/x?sig=CANARY123: 403 (see s3://b/k?t=CANARY123)."
    assert redact_text(text) == (
        "cannot read https://REDACTED@h/x?sig=REDACTED: 403 (see s3://b/k?t=REDACTED)."
    )
