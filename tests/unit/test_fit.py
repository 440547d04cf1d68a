"""Tiny real training runs through the pipeline stages: outputs, resume, metric consistency."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from camtrap import evaluate, runfolder, stages, torchfile
from camtrap.calibration import apply_temperature
from camtrap.dataset import load_dataset
from camtrap.errors import ConfigError, StorageError
from camtrap.modelfile import CALIBRATED_FROM
from camtrap.models import load_model
from camtrap.runfolder import RunFiles
from camtrap.storage import files as storage_files
from camtrap.torchfile import load_torch

pytestmark = pytest.mark.slow  # every test here trains

METRIC_COLUMNS = [
    "epoch", "split", "accuracy", "loss", "log_loss", "top3_accuracy", "skipped_steps",
    "nonfinite_steps",
]  # fmt: skip


def _run(config, data_root, out):
    return stages.run_all(config, data_root, out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_root, tiny_config):
    config = tiny_config()
    out = tmp_path_factory.mktemp("out")
    return config, _run(config, demo_root, out)


def test_run_writes_the_whole_output_layout(finished_run):
    config, summary = finished_run
    files = RunFiles.for_config(summary.run_dir, config)
    assert summary.run_dir.parent.name == "smoke"
    assert summary.run_id == summary.run_dir.name and summary.run_id.startswith("smoke-")
    expected = [
        files.run_json,
        files.best_model,
        files.best_logloss_model,
        files.final_model,
        files.state,
        files.epochs_csv,
        files.per_class_csv,
        files.confusion_csv,
        files.predictions_csv,
        files.per_site_csv,
        files.split_csv,
        *(files.plots / n for n in ["class_precision.png", "class_recalls.png", "class_f1.png",
                                   "curves.png", "confusion_matrix.png", "calibration.png"]),
    ]  # fmt: skip
    missing = [str(p) for p in expected if not p.exists()]
    assert not missing
    assert files.best_model.name == "final_mobilenet_v3_small_model_smoke_best.pth"
    assert files.final_model.name == "final_mobilenet_v3_small_model_smoke.pth"


def test_run_json_lists_every_file_with_its_sha256(finished_run):
    import hashlib

    _, summary = finished_run
    info = json.loads((summary.run_dir / "run.json").read_text())
    assert info["status"] == "completed"
    assert info["classes"][0] == "antelope_duiker" and len(info["classes"]) == 8
    for name, entry in info["files"].items():
        data = (summary.run_dir / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    assert "state/last.pt" in info["files"] and "predictions/val.csv" in info["files"]


def test_epochs_csv_has_train_and_val_rows_per_epoch(finished_run):
    _, summary = finished_run
    epochs = pd.read_csv(summary.run_dir / "metrics" / "epochs.csv")
    assert list(epochs.columns) == METRIC_COLUMNS
    # 3 epochs x (train, val)
    assert epochs[["epoch", "split"]].values.tolist() == [
        [1, "train"], [1, "val"], [2, "train"], [2, "val"], [3, "train"], [3, "val"],
    ]  # fmt: skip
    per_class = pd.read_csv(summary.run_dir / "metrics" / "per_class.csv")
    # 3 epochs x 2 splits x 8 classes
    assert len(per_class) == 48
    assert set(per_class.columns) >= {"epoch", "split", "class", "precision", "recall", "f1"}


def test_val_metrics_recomputed_from_predictions_match_epochs_csv(finished_run):
    _, summary = finished_run
    run = summary.run_dir
    info = json.loads((run / "run.json").read_text())
    preds = pd.read_csv(run / "predictions" / "val.csv", dtype={"id": str})
    classes = info["classes"]
    assert list(preds.columns) == ["id", "label", *classes]
    calibrated = preds[classes].to_numpy()
    # val.csv holds calibrated probabilities; T = 1 / temperature undoes the calibration
    probs = apply_temperature(calibrated, 1 / info["calibration"]["best"]["temperature"])
    y = preds["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    # Independent recomputation: argmax accuracy, mean -log p(true), true label among the 3 largest.
    accuracy = float(np.mean(probs.argmax(1) == y))
    log_loss = float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, 1))))
    top3 = float(np.mean([t in np.argsort(-p)[:3] for p, t in zip(probs, y, strict=True)]))
    epochs = pd.read_csv(run / "metrics" / "epochs.csv")
    best = epochs[(epochs.epoch == info["best_epoch"]) & (epochs.split == "val")].iloc[0]
    assert accuracy == pytest.approx(best.accuracy, abs=1e-9)
    assert log_loss == pytest.approx(best.log_loss, rel=1e-5)
    assert top3 == pytest.approx(best.top3_accuracy, abs=1e-9)
    assert (calibrated.argmax(1) == probs.argmax(1)).all()  # T changes no class
    calibrated_loss = np.mean(-np.log(np.clip(calibrated[np.arange(len(y)), y], 1e-15, 1)))
    assert calibrated_loss == pytest.approx(info["val"]["calibrated_log_loss"], rel=1e-5)
    split = pd.read_csv(run / "split.csv", dtype={"id": str})
    assert sorted(preds["id"]) == sorted(split.loc[split.split == "val", "id"])


def test_best_model_is_the_best_val_accuracy_epoch(finished_run):
    _, summary = finished_run
    epochs = pd.read_csv(summary.run_dir / "metrics" / "epochs.csv")
    val = epochs[epochs.split == "val"].reset_index(drop=True)
    # first epoch reaching the maximum: later ties do not replace the best
    expected = int(val.loc[val.accuracy.idxmax(), "epoch"])
    _, meta = load_model(next(summary.run_dir.glob("*_best.pth")))
    assert meta.epoch == expected == summary.best_epoch
    assert meta.metrics["val_accuracy"] == pytest.approx(val.accuracy.max())


def test_rerun_of_a_finished_run_is_up_to_date(finished_run, demo_root):
    config, summary = finished_run
    again = _run(config, demo_root, summary.run_dir.parent.parent)
    assert again.status == "up-to-date" and again.run_dir == summary.run_dir


BALANCED = {"data.sampler": "balanced", "train.class_weights": "effective"}


@pytest.mark.parametrize("balance", [{}, BALANCED], ids=["shuffle", "balanced"])
def test_resume_after_a_crash_gives_the_uninterrupted_numbers(
    tmp_path, demo_root, tiny_config, balance
):
    config = tiny_config(**balance)
    straight = _run(config, demo_root, tmp_path / "a")

    class Crash(Exception):
        pass

    def crash_after_two(record):
        if record.epoch == 2:
            raise Crash

    data = load_dataset(demo_root)
    run_dir = tmp_path / "b" / "smoke" / runfolder.run_id_for(config, data.fingerprint)
    stages.prepare(config, data, run_dir)
    with pytest.raises(Crash):
        stages.train(stages.TrainJob(config, demo_root, run_dir), on_epoch_end=crash_after_two)
    assert load_torch(run_dir / "state" / "last.pt")["epoch"] == 2
    resumed = stages.train(stages.TrainJob(config, demo_root, run_dir))
    assert resumed.resumed_from == 2 and resumed.epochs_run == 1
    a = pd.read_csv(straight.run_dir / "metrics" / "epochs.csv")
    b = pd.read_csv(run_dir / "metrics" / "epochs.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    final_a = load_torch(next(straight.run_dir.glob("*_smoke.pth")))["model"]
    final_b = load_torch(next(run_dir.glob("*_smoke.pth")))["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    info = runfolder.read_run_json(straight.run_dir)
    recorded = info["balance"]
    assert (recorded["sampler"], recorded["class_weights"]) == (
        config.data.sampler, config.train.class_weights)  # fmt: skip
    assert sum(recorded["train_counts"].values()) == info["counts"]["train"]
    assert ("weights" in recorded) == bool(balance)


def test_ena24_mini_trains_and_predicts_on_megadetector_crops(
    tmp_path, ena24_root, tiny_config, capsys
):
    """The real MegaDetector v5 output of ena24_mini: the run trains on each image's best box,
    split.csv records the boxes, and predict on the same photos needs the detections and then
    gives the probabilities of the crops (computed here without the cache)."""
    from camtrap import imagecache
    from camtrap.cli import main
    from camtrap.dataset.detections import CROP_COLUMNS

    md = "annotations/megadetector.json"
    config = tiny_config(**{"train.epochs": 1, "data.split": "stratified",
                            "data.detections": md, "data.crop": "best"})  # fmt: skip
    summary = _run(config, ena24_root, tmp_path / "runs")
    split = pd.read_csv(summary.run_dir / "split.csv", dtype={"id": str})
    first = split.set_index("filepath").loc["train_features/ENA24_02480.jpg"]
    assert [first[c] for c in CROP_COLUMNS] == [0.35, 0.35, 0.3, 0.3]
    frames = config.model_copy(update={"data": config.data.model_copy(
        update={"detections": None, "crop": "none"})})  # fmt: skip
    data = load_dataset(ena24_root)
    assert summary.run_dir.name != runfolder.run_id_for(frames, data.fingerprint)  # another run

    photos = tmp_path / "photos"
    shutil.copytree(ena24_root, photos)
    features = pd.read_csv(photos / "train_features.csv", dtype=str)
    features.to_csv(photos / "test_features.csv", index=False)
    out = tmp_path / "preds.csv"
    args = ["predict", "--model", str(summary.run_dir), "--data", str(photos), "--out", str(out),
            "--no-calibration"]  # fmt: skip
    assert main(args) == 2
    assert "--detections FILE.json" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--detections", md]) == 0
    predicted = pd.read_csv(out, dtype={"id": str})
    model, meta = load_model(next(summary.run_dir.glob("*_best.pth")))
    boxes = split.set_index("filepath")
    pixels = np.stack([
        imagecache.decode_resized(photos / f, 32, crop=(*boxes.loc[f, list(CROP_COLUMNS)], 0.15))
        for f in features["filepath"]
    ])  # fmt: skip
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model(x).double(), dim=1).numpy()
    np.testing.assert_allclose(predicted[meta.classes].to_numpy(), expected, atol=1e-5)
    md_out = tmp_path / "md.json"  # the review file shows the box the model saw
    assert main([*args[:-3], "--out", str(md_out), "--format", "megadetector",
                 "--detections", md]) == 0  # fmt: skip
    (image,) = [i for i in json.loads(md_out.read_text())["images"]
                if i["file"] == "train_features/ENA24_02480.jpg"]  # fmt: skip
    assert image["detections"][0]["bbox"] == [0.35, 0.35, 0.3, 0.3]


def test_ena24_mini_real_photos_train_end_to_end(tmp_path, ena24_root, tiny_config):
    config = tiny_config(**{"train.epochs": 2, "data.split": "stratified"})
    summary = _run(config, ena24_root, tmp_path)
    info = json.loads((summary.run_dir / "run.json").read_text())
    assert info["classes"] == [
        "american_black_bear", "american_crow", "chicken", "eastern_fox_squirrel",
        "grey_fox", "striped_skunk", "virginia_opossum",
    ]  # fmt: skip
    # ceil(21 * 0.25) = 6 val images, at most one per class (3 images each, 0.75 expected)
    assert info["counts"] == {"train": 15, "val": 6}
    split = pd.read_csv(summary.run_dir / "split.csv")
    assert split[split.split == "val"].label.value_counts().max() == 1
    cm = pd.read_csv(summary.run_dir / "metrics" / "confusion_matrix.csv", index_col=0)
    assert cm.to_numpy().sum() == 6 and list(cm.index) == info["classes"]


def test_compiled_training_saves_plain_model_files(tmp_path, demo_root, tiny_config,
                                                  monkeypatch):  # fmt: skip
    # torch.compile wraps the model; the files must still hold the plain module's weights.
    # The wrapper (and its `_orig_mod.` keys) is the same whatever the backend: "aot_eager"
    # traces forward and backward like the default, without inductor's C++ builds (3 CPU-minutes
    # here for a CPU-only check that is not about speed). resnet18: its graph traces in a third
    # less time than mobilenet_v3_small's many small blocks.
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend="aot_eager"))
    config = tiny_config(**{"train.epochs": 1, "train.compile": True, "model.arch": "resnet18"})
    summary = _run(config, demo_root, tmp_path)
    state = load_torch(summary.run_dir / "state" / "last.pt")
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    model, meta = load_model(summary.run_dir / "final_resnet18_model_smoke_best.pth")
    assert meta.epoch == 1 and isinstance(model, torch.nn.Module)


def test_best_model_rebuilt_when_a_kill_came_between_state_and_best(tmp_path, demo_root,
                                                                   tiny_config):  # fmt: skip
    # The state (the commit point) is written before the best model: a kill between them
    # leaves the previous best file beside a state whose own weights are the new best.
    config = tiny_config(**{"train.epochs": 1})
    summary = _run(config, demo_root, tmp_path)
    files = RunFiles.for_config(summary.run_dir, config)
    state = load_torch(files.state)
    # the file as training wrote it, before evaluate stored its temperature
    trained_sha256 = load_torch(files.best_model)[CALIBRATED_FROM]
    assert state["best_epoch"] == 1 and state["best_sha256"] == trained_sha256
    files.best_model.write_bytes(b"the previous best")
    stages.train(
        stages.TrainJob(config, demo_root, summary.run_dir)
    )  # nothing to train: settles the folder
    assert storage_files.file_sha256(files.best_model) == state["best_sha256"]
    weights = load_torch(files.best_model)["model"]
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)


def test_best_model_of_an_abandoned_attempt_is_refused(tmp_path, demo_root, tiny_config):
    config = tiny_config(**{"train.epochs": 2, "train.lr": 1e-9})  # epoch 1 stays best
    summary = _run(config, demo_root, tmp_path)
    files = RunFiles.for_config(summary.run_dir, config)
    if load_torch(files.state)["best_epoch"] != 1:
        pytest.skip("epoch 2 happened to be better")
    files.best_model.write_bytes(b"from another attempt")
    with pytest.raises(StorageError, match="not the best model"):
        stages.train(stages.TrainJob(config, demo_root, summary.run_dir))


def test_resume_with_a_changed_config_is_refused(tmp_path, demo_root, tiny_config):
    config = tiny_config(**{"train.epochs": 1})
    summary = _run(config, demo_root, tmp_path)
    changed = tiny_config(**{"train.epochs": 1, "train.lr": 0.1})
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.0005 -> 0\.1"):
        stages.run_all(changed, demo_root, tmp_path, run_id=summary.run_id)
    fewer = tiny_config(**{"train.epochs": 1, "data.num_workers": 0, "train.progress": True})
    assert stages.run_all(fewer, demo_root, tmp_path, run_id=summary.run_id).status == (
        "up-to-date"
    )


def test_more_epochs_extend_a_finished_run(tmp_path, demo_root, tiny_config):
    config = tiny_config(**{"train.epochs": 1})
    summary = _run(config, demo_root, tmp_path)
    longer = tiny_config(**{"train.epochs": 2})
    again = stages.run_all(longer, demo_root, tmp_path, run_id=summary.run_id)
    assert again.status == "completed" and again.run_dir == summary.run_dir
    epochs = pd.read_csv(summary.run_dir / "metrics" / "epochs.csv")
    assert epochs["epoch"].tolist() == [1, 1, 2, 2]
    info = json.loads((summary.run_dir / "run.json").read_text())
    assert info["config"]["train"]["epochs"] == 2 and info["status"] == "completed"
    assert load_torch(next(summary.run_dir.glob("*_smoke.pth")))["epoch"] == 2


# --- both best models, calibration, TTA, per site (issue 9) ---------------------------------------


def _val_epochs(run_dir):
    epochs = pd.read_csv(run_dir / "metrics" / "epochs.csv")
    return epochs[epochs.split == "val"].reset_index(drop=True)


def test_both_best_models_come_from_their_epochs_and_carry_a_temperature(finished_run):
    config, summary = finished_run
    files = RunFiles.for_config(summary.run_dir, config)
    info = json.loads(files.run_json.read_text())
    val = _val_epochs(summary.run_dir)
    # idxmax / idxmin: the first epoch reaching the extreme, as the trainer keeps it
    by_accuracy = int(val.loc[val.accuracy.idxmax(), "epoch"])
    by_log_loss = int(val.loc[val.log_loss.idxmin(), "epoch"])
    for name, path, epoch in (("best", files.best_model, by_accuracy),
                              ("best_logloss", files.best_logloss_model, by_log_loss)):  # fmt: skip
        _, meta = load_model(path)
        report = info["calibration"][name]
        assert meta.epoch == epoch == report["epoch"] and report["file"] == path.name
        assert meta.temperature == report["temperature"] and 0.05 <= meta.temperature <= 20
        assert report["log_loss_after"] <= report["log_loss_before"] + 1e-9
        assert 0 <= report["ece_after"] <= 1 and 0 <= report["ece_before"] <= 1
    assert info["best_epoch"] == by_accuracy and info["best_logloss_epoch"] == by_log_loss
    assert info["val"]["temperature"] == info["calibration"]["best"]["temperature"]
    new_files = {files.best_logloss_model.name, "plots/calibration.png", "metrics/per_site.csv"}
    assert new_files <= set(info["files"])


def test_val_csv_is_the_best_model_file_with_its_temperature(finished_run, demo_root):
    config, summary = finished_run
    files = RunFiles.for_config(summary.run_dir, config)
    pack = stages.cache_images(config, summary.run_dir, demo_root).pack
    items, classes = stages.split_items(summary.run_dir, pack)
    val = evaluate._val_split(config, items, classes, pack)
    model, meta = load_model(files.best_model)
    raw = evaluate._run_on_val(model, meta, val).probs
    assert meta.temperature != 1.0  # a fitted temperature: softmax(logits / T) differs from raw
    preds = pd.read_csv(files.predictions_csv, dtype={"id": str})
    recorded = preds[meta.classes].to_numpy()
    np.testing.assert_allclose(recorded, apply_temperature(raw, meta.temperature), atol=1e-6)
    assert np.abs(recorded - raw).max() > 1e-4
    assert preds["id"].tolist() == val.items["id"].tolist()


def test_per_site_csv_and_tta_agree_with_the_calibrated_val_metrics(finished_run):
    _, summary = finished_run
    info = json.loads((summary.run_dir / "run.json").read_text())
    sites = pd.read_csv(summary.run_dir / "metrics" / "per_site.csv", dtype={"site": str})
    assert list(sites.columns) == ["site", "images", "accuracy", "log_loss"]
    split = pd.read_csv(summary.run_dir / "split.csv", dtype=str)
    val_sites = split.loc[split.split == "val", "site"]
    assert sites.set_index("site")["images"].to_dict() == val_sites.value_counts().to_dict()
    # the image-weighted mean over sites is the whole split's calibrated log loss
    weighted = (sites.images * sites.log_loss).sum() / sites.images.sum()
    assert weighted == pytest.approx(info["val"]["calibrated_log_loss"], rel=1e-6)
    assert info["per_site"] == sites.to_dict("records")
    assert set(info["tta"]) == {"none", "hflip"}
    assert info["tta"]["none"]["log_loss"] == pytest.approx(info["val"]["calibrated_log_loss"])
    assert info["tta"]["none"]["accuracy"] == pytest.approx(info["val"]["accuracy"])
    assert 0 <= info["tta"]["hflip"]["accuracy"] <= 1 and info["tta"]["hflip"]["log_loss"] > 0


def test_calibrated_best_models_are_kept_when_the_run_resumes(finished_run, demo_root, tmp_path):
    # evaluate rewrote both best files with a temperature: their sha256 is no longer the one
    # state/last.pt records, yet they are that epoch's files (the rule of fit._is_recorded_file)
    config, summary = finished_run
    run_dir = tmp_path / summary.run_id
    shutil.copytree(summary.run_dir, run_dir)
    files = RunFiles.for_config(run_dir, config)
    state = load_torch(files.state)
    before = {p: storage_files.file_sha256(p) for p in (files.best_model, files.best_logloss_model)}
    assert before[files.best_model] != state["best_sha256"]
    assert before[files.best_logloss_model] != state["best_logloss_sha256"]
    stages.train(
        stages.TrainJob(config, demo_root, run_dir)
    )  # nothing to train: settles the folder
    assert {p: storage_files.file_sha256(p) for p in before} == before


def test_a_state_from_before_the_log_loss_best_still_resumes(finished_run, demo_root, tmp_path):
    config, summary = finished_run
    run_dir = tmp_path / summary.run_id
    shutil.copytree(summary.run_dir, run_dir)
    files = RunFiles.for_config(run_dir, config)
    state = load_torch(files.state)
    old = {k: v for k, v in state.items() if not k.startswith("best_logloss")}
    torchfile.save_torch(old, files.state)
    files.best_logloss_model.unlink()
    result = stages.train(stages.TrainJob(config, demo_root, run_dir))
    val = _val_epochs(run_dir)
    expected = int(val.loc[val.log_loss.idxmin(), "epoch"])
    assert result.best_logloss_epoch == expected
    assert result.best_logloss_value == pytest.approx(val.log_loss.min())
    # its weights survive as the state's own (last epoch) or as the best model's
    if expected in (state["epoch"], state["best_epoch"]):
        assert load_model(files.best_logloss_model)[1].epoch == expected
    else:
        assert not files.best_logloss_model.exists()


def test_run_json_commit_comes_from_the_environment_where_there_is_no_git(monkeypatch):
    # A Docker image has no .git: the Dockerfile records the commit in CAMTRAP_GIT_COMMIT.
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(stages.subprocess, "run", no_git)
    monkeypatch.setenv("CAMTRAP_GIT_COMMIT", "0123abc")
    assert stages._git_commit() == "0123abc"
    monkeypatch.setenv("CAMTRAP_GIT_COMMIT", "unknown")  # the Dockerfile's default
    assert stages._git_commit() is None
    monkeypatch.delenv("CAMTRAP_GIT_COMMIT")
    assert stages._git_commit() is None
