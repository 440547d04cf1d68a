"""camtrap.config: presets, overrides, validation at the edge, the part2 preset, the run id a
config gives, credentials redacted in every dump."""

import json
import re
from pathlib import Path

import pytest
import yaml

from camtrap import runfolder
from camtrap.config import PRESETS, DataConfig, RunConfig, build_config, parse_override
from camtrap.errors import ConfigError
from camtrap.redact import redact_uri
from camtrap.runfolder import RunFiles


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


def test_nproc_config_values():
    assert build_config("smoke").train.nproc == 1
    assert build_config("smoke", overrides=["train.nproc=auto"]).train.nproc == "auto"
    assert build_config("smoke", overrides=["train.nproc=3"]).train.nproc == 3
    with pytest.raises(ConfigError, match="train.nproc"):
        build_config("smoke", overrides=["train.nproc=0"])


FAKE_FINGERPRINT = "0" * 64  # a dataset's fingerprint


def test_nproc_leaves_the_run_id_and_resume_alone():
    base = build_config("smoke")
    two = build_config("smoke", overrides={"train.nproc": 2})
    auto = build_config("smoke", overrides={"train.nproc": "auto"})
    ids = {runfolder.run_id_for(c, FAKE_FINGERPRINT) for c in (base, two, auto)}
    assert ids == {"smoke-f920a04699b4"}  # pinned below (run ids from before part2)
    saved = two.model_dump(mode="json")
    assert runfolder.config_changes(saved, base.model_dump(mode="json")) == []
    del saved["train"]["nproc"]  # a run from before nproc existed
    assert runfolder.config_changes(saved, two.model_dump(mode="json")) == []


ROOT = Path(__file__).resolve().parents[2]


def _part2(**overrides):
    return build_config("part2", overrides={"model.init_from": "/runs/part1/a.pth", **overrides})


def test_part2_preset_values_and_output_names():
    config = _part2()
    assert (config.model.arch, config.model.weights, config.output.stage) == (
        "swin_t", "none", "part2",
    )  # fmt: skip
    assert (config.data.image_size, config.data.train_cache_size, config.train_size()) == (
        224, 256, 256,
    )  # fmt: skip
    assert (config.train.schedule, config.train.warmup_epochs) == ("cosine", 1.0)
    assert config.train.label_smoothing == 0.1 and config.augment.enabled
    files = RunFiles.for_config(Path("/r"), config)
    assert files.best_model.name == "final_swin_t_model_part2_best.pth"
    assert files.final_model.name == "final_swin_t_model_part2.pth"


def test_part2_config_round_trips_through_json_and_yaml(tmp_path):
    config = _part2(**{"augment.crop_scale": [0.5, 1.0]})
    dumped = config.model_dump(mode="json")
    assert RunConfig.model_validate(dumped) == config
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(dumped))
    assert build_config("part1", tmp_path / "c.yaml") == config
    assert dumped["model"]["init_from"] == "/runs/part1/a.pth"


def test_part2_without_init_from_and_inconsistent_settings_are_config_errors():
    with pytest.raises(ConfigError, match="preset part2 needs model.init_from"):
        build_config("part2")
    with pytest.raises(ConfigError, match="model.weights=none"):
        build_config("part1", overrides={"model.init_from": "/a.pth"})
    with pytest.raises(ConfigError, match="augment.enabled"):
        build_config("part1", overrides={"data.train_cache_size": 256})
    with pytest.raises(ConfigError, match="below data.image_size"):
        _part2(**{"data.train_cache_size": 200})
    with pytest.raises(ConfigError, match="crop_scale"):
        _part2(**{"augment.crop_scale": [0.5, 1.5]})


def test_a_presigned_init_from_is_redacted_in_dumps():
    config = _part2(**{"model.init_from": "https://h/a.pth?X-Amz-Signature=secret"})
    assert "secret" not in json.dumps(config.model_dump(mode="json")) + repr(config)
    assert config.model.init_from.endswith("secret")  # the attribute loads the file


def test_run_ids_of_part1_and_smoke_are_those_from_before_part2():
    # Computed before the part2 settings existed: unchanged, a weekly part1 on unchanged data
    # stays "up to date" instead of training again.
    assert runfolder.run_id_for(build_config("part1"), FAKE_FINGERPRINT) == "part1-ccee72b8e950"
    assert runfolder.run_id_for(build_config("smoke"), FAKE_FINGERPRINT) == "smoke-f920a04699b4"
    tiny = {"data.image_size": 32, "train.epochs": 2, "train.batch_size": 8}
    assert runfolder.run_id_for(build_config("smoke", overrides=tiny), FAKE_FINGERPRINT) == (
        "smoke-49c8579335d9"
    )
    # augmentation settings count only while augmentation is on
    off = build_config("part1", overrides={"augment.crop_scale": [0.5, 1.0]})
    assert runfolder.run_id_for(off, FAKE_FINGERPRINT) == "part1-ccee72b8e950"


def test_init_from_and_augmentation_are_part_of_the_run_id():
    ids = {
        runfolder.run_id_for(config, FAKE_FINGERPRINT)
        for config in (
            _part2(),
            _part2(**{"model.init_from": "/runs/part1/b.pth"}),
            _part2(**{"augment.crop_scale": [0.5, 1.0]}),
            _part2(**{"train.label_smoothing": 0.0}),
            _part2(**{"train.warmup_epochs": 2}),
            _part2(**{"data.train_cache_size": 288}),
        )
    }  # fmt: skip
    assert len(ids) == 6 and all(i.startswith("part2-") for i in ids)


def test_a_run_saved_before_part2_settings_existed_still_resumes():
    now = build_config("part1").model_dump(mode="json")
    saved = json.loads(json.dumps(now))
    for section, keys in runfolder.ADDED_LATER.items():
        for key in keys:
            del saved[section][key]
    del saved["augment"]
    assert runfolder.config_changes(saved, now) == []
    changed = build_config("part1", overrides={"train.label_smoothing": 0.1})
    assert runfolder.config_changes(saved, changed.model_dump(mode="json")) == [
        "train.label_smoothing: None -> 0.1"
    ]


def test_every_train_deployment_builds_its_config():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    train = {d["name"]: d for d in spec["deployments"] if "train_swin" in d["entrypoint"]}
    assert "part2" in train and "schedules" not in train["part2"]
    for deployment in train.values():
        params = deployment["parameters"]
        build_config(params["preset"], overrides=dict(params["overrides"]))
    init = train["part2"]["parameters"]["overrides"]["model.init_from"]
    assert init == f"{train['part2']['parameters']['output_uri']}/part1/latest.json"
    # a crop model has a stage of its own (a frames model's predict never picks it), and the
    # predict deployment of that stage gives the photos' detections
    crops = build_config("part1", overrides=dict(train["part1-crops"]["parameters"]["overrides"]))
    assert crops.data.crop == "best" and crops.output.stage == "part1-crops"
    predict = {d["parameters"]["stage"]: d["parameters"] for d in spec["deployments"]
               if "predict_swin" in d["entrypoint"]}  # fmt: skip
    assert predict["part1-crops"]["detections"] == crops.data.detections
    assert "detections" not in predict["part1"]


# --- extremes ---------------------------------------------------------------------------------
def _float_settings() -> list[str]:
    """Every setting of RunConfig that holds floats (alone or in a tuple), as `section.key`."""
    return [
        f"{section}.{name}"
        for section, model in RunConfig.model_fields.items()
        for name, field in model.annotation.model_fields.items()
        if re.search(r"\bfloat\b", str(field.annotation))  # not Literal["float16", ...]
    ]


def test_the_float_settings_are_found():
    assert {"train.warmup_epochs", "train.lr", "data.mean", "augment.crop_ratio",
            "predict.event_gap_s"} <= set(_float_settings())  # fmt: skip


@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", _float_settings())
def test_every_float_setting_must_be_finite(key, bad):
    """train.warmup_epochs=.inf was accepted, and training then stopped in an OverflowError."""
    section, name = key.split(".")
    default = getattr(getattr(RunConfig(), section), name)
    value = f"[{', '.join([bad] * len(default))}]" if isinstance(default, tuple) else bad
    with pytest.raises(ConfigError, match=rf"{key}.*: Input should be a finite number"):
        build_config("part1", overrides=[f"{key}={value}"])


def test_predict_options_must_be_finite():
    from camtrap.config import predict_options

    with pytest.raises(ConfigError, match="event_gap_s: Input should be a finite number"):
        predict_options(event_gap_s=float("inf"))


CSV_SETTINGS = ["data.features_csv", "data.labels_csv", "data.annotations", "data.detections"]


@pytest.mark.parametrize(
    "value", ["/etc/passwd", "../secrets.csv", "labels/../../x.csv", "s3://b/x.csv", "C:\\x.csv",
              "\\\\host\\share\\x.csv", ""],
)  # fmt: skip
@pytest.mark.parametrize("key", CSV_SETTINGS)
def test_a_dataset_file_outside_the_data_root_is_refused(key, value):
    """data.labels_csv=/etc/passwd was read, and a line of it echoed into the error."""
    with pytest.raises(ConfigError) as caught:
        build_config("part1", overrides={key: value})
    assert f"{key}: Value error, {value!r} is not a file inside the data root" in str(caught.value)
    assert "fix: name it relative to the data root" in str(caught.value)


@pytest.mark.parametrize("key", CSV_SETTINGS)
def test_a_dataset_file_in_a_subfolder_of_the_data_root_is_fine(key):
    crop = {"data.crop": "best"} if key == "data.detections" else {}
    config = build_config("part1", overrides={key: "meta/./files/x.csv", **crop})
    section, name = key.split(".")
    assert getattr(config.data, name) == "meta/./files/x.csv"


@pytest.mark.parametrize("field", ["features_csv", "annotations", "detections"])
def test_predict_files_outside_the_data_root_are_refused(field):
    from camtrap.config import predict_options

    with pytest.raises(ConfigError, match=rf"{field}: Value error, '/etc/passwd' is not a file"):
        predict_options(**{field: "/etc/passwd"})


def test_num_workers_is_capped_at_the_cpus_with_a_warning(monkeypatch, caplog):
    """24 workers on 2 cores started 32 processes; the cap applies where loaders are made (the
    config keeps what was asked: a run resumed on a larger machine uses more)."""
    from camtrap import loader as loader_module
    from camtrap.loader import make_loader

    monkeypatch.setattr(loader_module, "usable_cpus", lambda: 2)
    loader_module._warn_capped.cache_clear()  # it warns once per process
    assert build_config("part1", overrides=["data.num_workers=24"]).data.num_workers == 24
    with caplog.at_level("WARNING", logger="camtrap"):
        loader = make_loader(list(range(8)), 4, num_workers=24)  # not started: never iterated
    assert loader.num_workers == 2
    assert ("data.num_workers=24 is more than the 2 CPUs this process may use: 2 loader "
            "workers instead — fix: set data.num_workers=2 or less") in caplog.text  # fmt: skip
    assert loader_module.capped_workers(2) == 2 and loader_module.capped_workers(0) == 0
