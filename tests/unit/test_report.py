"""The summary `camtrap demo` prints, from a hand-written run.json."""

import json

import pandas as pd
from fixtures.run_json import RETRAIN_A, RETRAIN_B, TRAINING_C

from camtrap.report import (
    balance_lines,
    best_models_lines,
    calibration_lines,
    crop_lines,
    event_lines,
    per_site_lines,
    run_summary,
    tta_lines,
)

RUN_JSON = {
    "run_id": "smoke-0123456789ab",
    "status": "completed",
    "config": {
        "model": {"arch": "resnet18"},
        "train": {"epochs": 15},
        "output": {"stage": "smoke"},
    },
    "best_epoch": 12,
    "best_value": 0.8125,
    # 26 of 32 val images right; log loss and top-3 as evaluate writes them, rounded here by hand
    "val": {"loss": 0.51234, "accuracy": 0.8125, "log_loss": 0.531249, "top3_accuracy": 0.96875},
    "files": {
        "final_resnet18_model_smoke.pth": {"bytes": 1, "sha256": "0"},
        "final_resnet18_model_smoke_best.pth": {"bytes": 1, "sha256": "0"},
        "metrics/epochs.csv": {"bytes": 1, "sha256": "0"},
    },
}


def _run_dir(tmp_path, info=RUN_JSON):
    run_dir = tmp_path / "runs" / "smoke" / "smoke-0123456789ab"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def test_summary_of_a_library_run(tmp_path):
    run_dir = _run_dir(tmp_path)
    assert run_summary(run_dir).splitlines() == [
        f"Run folder: {run_dir}",
        "Best epoch 12 of 15: val accuracy 0.8125, val log loss 0.5312",
        "Files to open there:",
        "  metrics/epochs.csv                   accuracy and losses of every epoch, train and val",
        "  plots/curves.png                     accuracy and loss curves, the best epoch marked",
        "  plots/confusion_matrix.png           best model on val: true class x predicted class",
        "  predictions/val.csv                  best model's class probabilities per val image "
        "(calibrated)",
        "  plots/calibration.png                reliability of the best models' probabilities, "
        "before/after T",
        "  metrics/per_site.csv                 best model on val per camera site: accuracy, "
        "log loss",
        "  final_resnet18_model_smoke_best.pth  the best model",
    ]


def test_summary_names_the_log_loss_best_and_the_calibration(tmp_path):
    name = "final_resnet18_model_smoke_best_logloss.pth"
    info = {
        **RUN_JSON,
        "best_logloss_epoch": 9,
        "val": {**RUN_JSON["val"], "calibrated_log_loss": 0.48766, "temperature": 1.23456,
                "ece": 0.0912, "calibrated_ece": 0.02345},
        "files": {**RUN_JSON["files"], name: {"bytes": 1, "sha256": "0"}},
    }  # fmt: skip
    lines = run_summary(_run_dir(tmp_path, info)).splitlines()
    assert lines[2:4] == [
        "Lowest val log loss at epoch 9",
        "Calibrated (temperature 1.2346): val log loss 0.4877, ECE 0.0912 -> 0.0234",
    ]
    assert lines[-1] == f"  {name}  the model of the lowest val log loss"


def test_missing_metrics_show_as_not_available(tmp_path):
    info = {k: v for k, v in RUN_JSON.items() if k not in ("val", "best_epoch", "files")}
    info["config"] = {"train": {"epochs": 15}}  # nor which model: its file cannot be named
    summary = run_summary(_run_dir(tmp_path, info)).splitlines()
    assert summary[1] == "Best epoch ? of 15: val accuracy n/a, val log loss n/a"
    assert summary[-1].startswith("  final_<arch>_model_<stage>_best.pth")


# --- a stage's retrain history (camtrap.report.history_table) ----------------------------------


def test_history_has_one_row_per_retrain_newest_first():
    import pandas as pd

    from camtrap.report import HISTORY_COLUMNS, history_table

    infos = {
        "s3://runs/r/part1/part1-aaaa": RETRAIN_A,
        "s3://runs/r/part1/part1-bbbb": RETRAIN_B,
        "s3://runs/r/part1/part1-cccc": TRAINING_C,
    }
    frame = history_table(infos)
    assert list(frame.columns) == HISTORY_COLUMNS
    # C started 01-06 after B finished 01-05: a run in progress is the newest
    assert list(frame["run_id"]) == ["part1-cccc", "part1-bbbb", "part1-aaaa"]
    assert list(frame["data_fingerprint"]) == ["eeee5555ffff", "eeee5555ffff", "aaaa1111bbbb"]
    assert list(frame["status"]) == ["training", "completed", "completed"]
    assert list(frame["train_images"]) == [30, 30, 24]
    assert list(frame["epochs"]) == [20, 20, 15]
    assert list(frame["val_accuracy"]) == [0.5, 0.9, 0.8125]  # C: best_value, by val_accuracy
    # A: the lowest epoch (0.49, not the best model's 0.52); B: no such field -> the best model's
    assert frame["val_log_loss"].tolist()[1:] == [0.31, 0.49]
    # A: the lower of its two calibrated models (0.45); B: run.json val's
    assert frame["calibrated_log_loss"].tolist()[1:] == [0.3, 0.45]
    assert pd.isna(frame.loc[0, "val_log_loss"]) and pd.isna(frame.loc[0, "best_epoch"])
    assert frame["best_epoch"].tolist()[1:] == [20, 12]
    assert list(frame["run_uri"]) == [f"s3://runs/r/part1/part1-{x * 4}" for x in "cba"]


def test_history_of_a_run_chosen_by_log_loss_has_no_accuracy_before_evaluation():
    from camtrap.report import history_table

    info = {**TRAINING_C, "config": {"train": {"epochs": 20, "best_metric": "val_log_loss"}}}
    frame = history_table({"/runs/part1/part1-cccc": info})
    assert frame["val_accuracy"].isna().tolist() == [True]  # best_value is a log loss here


def test_stage_run_infos_reads_every_run_folder_and_skips_the_rest(tmp_path, caplog):
    from camtrap.report import stage_run_infos

    stage = tmp_path / "runs" / "part1"
    for run_id, info in (("part1-aaaa", RETRAIN_A), ("part1-bbbb", RETRAIN_B)):
        (stage / run_id / "metrics").mkdir(parents=True)
        (stage / run_id / "run.json").write_text(json.dumps(info))
        (stage / run_id / "metrics" / "run.json").write_text("{}")  # not a run folder's own
    (stage / "part1-new").mkdir()  # validation has not written run.json yet
    (stage / "part1-new" / "split.csv").write_text("id\n")
    (stage / "part1-broken").mkdir()
    (stage / "part1-broken" / "run.json").write_text("{not json")
    (stage / ".leases").mkdir()
    (stage / ".leases" / "run.json").write_text("{}")
    (stage / "latest.json").write_text(json.dumps({"run_id": "part1-bbbb"}))

    infos = stage_run_infos(str(stage))
    assert infos == {str(stage / "part1-aaaa"): RETRAIN_A, str(stage / "part1-bbbb"): RETRAIN_B}
    assert "part1-broken/run.json is not JSON" in caplog.text
    assert stage_run_infos(str(tmp_path / "nothing-yet")) == {}


def test_summary_description_lists_the_retrain_quality():
    from camtrap.report import summary_description

    uri = "/r/part1/part1-aaaa"
    assert summary_description(uri, RETRAIN_A) == (
        "part1-aaaa: val accuracy 0.8125, val log loss 0.4900, calibrated log loss 0.4500"
    )
    assert summary_description(uri, {"status": "failed"}) == "part1-aaaa: failed"


# --- where each best model comes from (the summary artifact) ------------------------------------


INFO = {
    "config": {"model": {"arch": "resnet18"}, "output": {"stage": "smoke"}},
    "best_epoch": 3,
    "best_logloss_epoch": 2,
    "calibration": {
        "best": {
            "file": "final_resnet18_model_smoke_best.pth",
            "epoch": 3,
            "temperature": 1.5,
            "log_loss_before": 0.9,
            "log_loss_after": 0.7,
            "ece_before": 0.2,
            "ece_after": 0.05,
        },
    },  # fmt: skip
    "tta": {
        "none": {"accuracy": 0.75, "log_loss": 0.7},
        "hflip": {"accuracy": 0.8, "log_loss": 0.6},
    },
    "per_site": [
        {"site": "S1", "images": 4, "accuracy": 1.0, "log_loss": 0.1},
        {"site": "S2", "images": 2, "accuracy": 0.5, "log_loss": 1.2},
        {"site": "S3", "images": 3, "accuracy": 0.6667, "log_loss": 0.5},
    ],
}


EPOCHS = pd.DataFrame({
    "epoch": [2, 2, 3, 3],
    "split": ["train", "val", "train", "val"],
    "accuracy": [0.5, 0.625, 0.9, 0.75],
    "log_loss": [1.0, 0.55, 0.3, 0.9],
})  # fmt: skip


def test_summary_says_which_epoch_each_best_model_comes_from():
    lines = best_models_lines(INFO, EPOCHS, "val_accuracy")
    assert lines[4:6] == [
        "| `final_resnet18_model_smoke_best.pth` | val_accuracy | 3 | 0.7500 | 0.9000 |",
        "| `final_resnet18_model_smoke_best_logloss.pth` | val_log_loss | 2 | 0.6250 | 0.5500 |",
    ]


def test_summary_tables_of_calibration_tta_and_sites_worst_first():
    assert calibration_lines(INFO)[4] == "| best | 3 | 1.5000 | 0.9000 | 0.7000 | 0.2000 | 0.0500 |"
    assert tta_lines(INFO)[4:6] == ["| none | 0.7500 | 0.7000 |", "| hflip | 0.8000 | 0.6000 |"]
    assert per_site_lines(INFO)[4:7] == [
        "| S2 | 2 | 0.5000 | 1.2000 |",
        "| S3 | 3 | 0.6667 | 0.5000 |",
        "| S1 | 4 | 1.0000 | 0.1000 |",
    ]
    assert calibration_lines({}) == tta_lines({}) == per_site_lines({}) == []


def test_val_by_event_table_follows_run_json():
    info = {"events": [
        {"rule": "mean", "events": 4, "images": 11, "accuracy": 0.75, "log_loss": 0.5},
        {"rule": "max-animal", "events": 4, "images": 11, "accuracy": 1.0, "log_loss": 0.25},
    ]}  # fmt: skip
    assert event_lines(info)[4:6] == [
        "| mean | 4 | 11 | 0.7500 | 0.5000 |",
        "| max-animal | 4 | 11 | 1.0000 | 0.2500 |",
    ]
    assert event_lines({}) == []


def test_class_balance_table_follows_run_json():
    info = {"balance": {"sampler": "balanced", "class_weights": "inverse",
                        "train_counts": {"cat": 3, "dog": 1},
                        "weights": {"cat": 0.666667, "dog": 2.0}}}  # fmt: skip
    lines = balance_lines(info)
    assert lines[0] == "## Class balance (data.sampler balanced, train.class_weights inverse)"
    assert lines[4:6] == ["| cat | 3 | 0.6667 |", "| dog | 1 | 2.0000 |"]
    unweighted = {"balance": {"sampler": "shuffle", "class_weights": "none",
                              "train_counts": {"cat": 3}}}  # fmt: skip
    assert balance_lines(unweighted)[4] == "| cat | 3 | 1 |"
    assert balance_lines({}) == []


def test_crops_table_counts_samples_and_whole_frames_per_split():
    info = {
        "config": {"data": {"crop": "all", "detection_threshold": 0.1, "detections": "md.json"}},
        "counts": {"train": 15, "val": 6},
        "crops": {"train": {"samples": 17, "whole_frames": 1},
                  "val": {"samples": 6, "whole_frames": 0}},
        "balance": {"sampler": "shuffle", "class_weights": "none", "train_counts": {"cat": 17}},
    }  # fmt: skip
    lines = crop_lines(info)
    assert lines[0] == "## Crops (data.crop all, detection_threshold 0.1, md.json)"
    assert lines[4:6] == ["| train | 15 | 17 | 1 |", "| val | 6 | 6 | 0 |"]
    assert balance_lines(info)[2] == "| class | train samples | loss weight |"  # boxes, counted
    assert crop_lines({"counts": {"train": 3}}) == []
