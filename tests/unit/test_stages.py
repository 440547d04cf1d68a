"""Stage part2: the learning-rate schedule, label smoothing, the preset and its run id, the warm
start from a part1-style run (model file, run folder, latest.json), and a tiny part2 run from it
that resumes after a crash with the uninterrupted numbers."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from camtrap import latest, runfolder, stages, torchfile
from camtrap.config import RunConfig, build_config
from camtrap.dataset import load_dataset
from camtrap.device import Precision
from camtrap.engine import infer, train_one_epoch
from camtrap.errors import ConfigError, StorageError
from camtrap.modelfile import ModelMeta, model_file_dict
from camtrap.models import build_model, load_model, resolve_init_from, warm_start
from camtrap.runfolder import RunFiles
from camtrap.schedule import StepSchedule, lr_factor, make_schedule
from camtrap.torchfile import load_torch

ROOT = Path(__file__).resolve().parents[2]
CPU32 = Precision("cpu", False, torch.float32)
FAKE_FINGERPRINT = "0" * 64  # a dataset's fingerprint


# --- learning-rate schedule ---------------------------------------------------------------------


def test_warm_up_ramps_linearly_then_cosine_decays_to_zero():
    # 10 steps, 2 of warm-up: lr/2, lr, then half a cosine over the 8 steps left.
    factors = [lr_factor(step, 10, 2, "cosine") for step in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[6] == pytest.approx(0.5)  # halfway through the decay: cos(pi/2) = 0
    assert factors[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))  # 0.0190
    assert factors[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))
    assert [lr_factor(s, 10, 2, "none") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, 10, 0, "cosine") == 1.0  # no warm-up: the decay starts at lr


def test_step_schedule_sets_the_optimizer_rate_and_resumes_from_its_count():
    def optimizer():
        return torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)

    opt = optimizer()
    schedule = StepSchedule(opt, 1e-3, total_steps=10, warmup_steps=2, schedule="cosine")
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        schedule.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3 * lr_factor(s, 10, 2, "cosine") for s in range(7)])
    resumed_opt = optimizer()
    resumed = StepSchedule(resumed_opt, 1e-3, 10, 2, "cosine")
    resumed.load_state_dict(schedule.state_dict())
    assert schedule.state_dict() == {"steps_done": 6}
    assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_part1_has_no_schedule_and_part2_counts_warm_up_in_steps():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-5)
    assert make_schedule(opt, build_config("part1").train, 100) is None
    part2 = build_config("part2", overrides={"model.init_from": "x.pth"}).train
    schedule = make_schedule(opt, part2, 100)
    assert (schedule.total_steps, schedule.warmup_steps) == (15 * 100, 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 / 100)  # the first warm-up step


# --- label smoothing ----------------------------------------------------------------------------


def test_label_smoothing_changes_the_train_loss_only():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 12, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    model = nn.Linear(12, 4)
    torch.nn.init.normal_(model.weight, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay: losses comparable
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    identity = lambda x: x  # noqa: E731

    smoothed = train_one_epoch(model, loader, optimizer, scaler, identity, CPU32,
                               label_smoothing=0.1)  # fmt: skip
    plain = train_one_epoch(model, loader, optimizer, scaler, identity, CPU32)
    val = infer(model, loader, identity, CPU32)

    log_p = torch.log_softmax(model(images), dim=1).detach().numpy()
    nll = -log_p[np.arange(6), labels.numpy()]
    # (1 - e) * (-log p_true) + e * mean over the classes of (-log p_k), e = 0.1
    expected = float(np.mean(0.9 * nll + 0.1 * -log_p.mean(axis=1)))
    assert smoothed.loss == pytest.approx(expected, rel=1e-5)
    assert plain.loss == pytest.approx(float(nll.mean()), rel=1e-5)
    assert abs(smoothed.loss - plain.loss) > 0.01
    assert val.loss == pytest.approx(float(nll.mean()), rel=1e-5)  # evaluation: plain
    np.testing.assert_allclose(smoothed.probs, val.probs, rtol=1e-5)


# --- the preset and its run id ------------------------------------------------------------------


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


# --- warm start from a part1-style run, and a tiny part2 run ------------------------------------

ARCH = "mobilenet_v3_small"  # the smallest model; part2's own (swin_t) is too slow on a CPU
TINY_PART2 = {
    "data.image_size": 32, "data.num_workers": 0, "train.epochs": 2, "train.batch_size": 8,
    "train.progress": False, "model.arch": ARCH, "model.drop_path": 0.0,
    "data.train_cache_size": 40, "train.device": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, demo_root):
    """A finished part1-style run folder of the demo's classes: its best model file (ARCH above,
    weights from a fixed seed: no training needed to test loading them), run.json and the
    stage's latest.json."""
    out = tmp_path_factory.mktemp("source")
    config = build_config("smoke", overrides={"data.image_size": 32})
    run_dir = out / "smoke" / "smoke-source"
    files = RunFiles.for_config(run_dir, config)
    classes = load_dataset(demo_root).classes
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(ARCH, len(classes), "none", 0.0, 32)
    meta = ModelMeta(ARCH, classes, 32, list(config.data.mean), list(config.data.std), 1)
    torchfile.save_torch(model_file_dict(model, meta), files.best_model)
    info = {"run_id": run_dir.name, "config": config.model_dump(mode="json")}
    runfolder.write_run_json(run_dir, info)
    latest.write_latest(run_dir, stages.finalize(run_dir))
    return SimpleNamespace(out=out, run_dir=run_dir, best=files.best_model, classes=classes)


@pytest.mark.slow  # builds and loads models (no training)
def test_warm_start_gives_the_source_models_outputs(source_run):
    source, _ = load_model(source_run.best)
    model = build_model(ARCH, len(source_run.classes), "none", 0.0, 32)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model.eval()(x), source(x))
    warm_start(model, str(source_run.best), ARCH, source_run.classes)
    assert torch.equal(model.eval()(x), source(x))


@pytest.mark.slow  # builds and loads models (no training)
def test_init_from_resolves_a_run_folder_a_latest_pointer_and_a_file(source_run):
    best = str(source_run.best.resolve())
    for given in (source_run.run_dir, source_run.out / "smoke" / "latest.json", best):
        config = _part2(**{"model.init_from": str(given), "model.arch": ARCH})
        assert resolve_init_from(config).model.init_from == best, given


@pytest.mark.slow  # builds and loads models (no training)
def test_warm_start_refuses_other_classes_or_arch_and_names_a_missing_file(source_run):
    classes, best = source_run.classes, str(source_run.best)
    other = list(reversed(classes))
    model = build_model(ARCH, len(other), "none", 0.0, 32)
    with pytest.raises(ConfigError, match="was trained on classes") as err:
        warm_start(model, best, ARCH, other)
    assert str(classes) in str(err.value) and str(other) in str(err.value)
    with pytest.raises(ConfigError, match=f"holds a {ARCH} model, not resnet34"):
        warm_start(build_model("resnet34", 8, "none"), best, "resnet34", classes)
    missing = _part2(**{"model.init_from": str(source_run.out / "part1" / "latest.json")})
    with pytest.raises(StorageError, match="model.init_from .*fix:"):
        resolve_init_from(missing)


def _train(config, demo_root, run_dir, on_epoch_end=None):
    """prepare + train: the run's model files, state and metrics (no evaluation, no plots)."""
    stages.prepare(config, load_dataset(demo_root), run_dir)
    return stages.train(stages.TrainJob(config, demo_root, run_dir), on_epoch_end=on_epoch_end)


@pytest.mark.slow
def test_part2_from_a_part1_run_then_resumed_after_a_crash_gives_the_same_numbers(
    source_run, demo_root, tmp_path
):
    """One test, so that its two tiny runs are not repeated in several test processes."""
    config = build_config(
        "part2", overrides={**TINY_PART2, "model.init_from": str(source_run.run_dir)}
    )
    config = resolve_init_from(config)  # as run_all and the flow do
    run_id = runfolder.run_id_for(config, load_dataset(demo_root).fingerprint)
    straight = tmp_path / "a" / "part2" / run_id
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores a second compute thread is slower
    try:
        _train(config, demo_root, straight)

        class Crash(Exception):
            pass

        def crash_after_one(record):
            if record.epoch == 1:
                raise Crash

        crashed = tmp_path / "b" / "part2" / run_id
        with pytest.raises(Crash):
            _train(config, demo_root, crashed, on_epoch_end=crash_after_one)
        resumed = stages.train(stages.TrainJob(config, demo_root, crashed))
    finally:
        torch.set_num_threads(saved)

    # It started from the source run's best model, and run.json names that file.
    assert run_id.startswith("part2-")
    files = RunFiles.for_config(straight, config)
    assert files.final_model.name == f"final_{ARCH}_model_part2.pth"
    assert files.best_model.exists() and files.final_model.exists()
    info = json.loads(files.run_json.read_text())
    assert info["config"]["model"]["init_from"] == str(source_run.best.resolve())
    # 6 steps at a peak rate of 1e-5 from the source's weights: still next to them (another
    # initialisation is ~0.1 away)
    source = load_torch(source_run.best)["model"]["features.0.0.weight"]
    trained = load_torch(files.final_model)["model"]["features.0.0.weight"]
    assert not torch.equal(source, trained) and (source - trained).abs().max() < 1e-3
    assert load_torch(files.state)["schedule"] == {"steps_done": 2 * 3}  # 24 images, batch 8

    # The train loss is label-smoothed; log loss (from the probabilities) and the val loss
    # are plain cross entropy (without smoothing the train loss equals its log loss to ~1e-7;
    # with it, near-uniform predictions as here differ by ~6e-4).
    epochs = pd.read_csv(files.epochs_csv)
    train, val = epochs[epochs.split == "train"], epochs[epochs.split == "val"]
    assert (train["loss"] - train["log_loss"]).abs().min() > 1e-4
    np.testing.assert_allclose(val["loss"], val["log_loss"], rtol=1e-5)

    # Resumed after epoch 1: the same crops, learning rates and weights as without the crash.
    assert resumed.resumed_from == 1 and resumed.epochs_run == 1
    pd.testing.assert_frame_equal(
        epochs, pd.read_csv(crashed / "metrics" / "epochs.csv"), check_exact=True
    )
    final_a = load_torch(files.final_model)["model"]
    final_b = load_torch(crashed / files.final_model.name)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
