"""The summary `camtrap demo` prints, from a hand-written run.json."""

import json

from camtrap.report import run_summary

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


def test_summary_of_a_flow_run_says_how_to_open_the_prefect_ui():
    from flows.cli import prefect_ui_lines

    lines = prefect_ui_lines(".venv/bin/prefect", None, "smoke-0123456789ab")
    assert lines[-2:] == [
        "In the Prefect UI: run `.venv/bin/prefect server start`, then open http://127.0.0.1:4200",
        "  (flow run smoke-0123456789ab, kept in PREFECT_HOME's database: ~/.prefect unless set)",
    ]


def test_a_run_on_a_configured_server_points_at_that_server():
    from flows.cli import prefect_ui_lines

    lines = prefect_ui_lines("prefect", "http://gpu-box:4200/api", "smoke-0123456789ab")
    url = "http://gpu-box:4200"
    expected = f"In the Prefect UI: open {url} (PREFECT_API_URL), flow run smoke-0123456789ab"
    assert lines[-1] == expected


def test_missing_metrics_show_as_not_available(tmp_path):
    info = {k: v for k, v in RUN_JSON.items() if k not in ("val", "best_epoch", "files")}
    info["config"] = {"train": {"epochs": 15}}  # nor which model: its file cannot be named
    summary = run_summary(_run_dir(tmp_path, info)).splitlines()
    assert summary[1] == "Best epoch ? of 15: val accuracy n/a, val log loss n/a"
    assert summary[-1].startswith("  final_<arch>_model_<stage>_best.pth")


# --- a stage's retrain history (camtrap.report.history_table, tasks.artifacts helpers) ---------

FINGERPRINT_A = "aaaa1111bbbb2222cccc3333dddd4444"
FINGERPRINT_B = "eeee5555ffff6666"
RETRAIN_A = {  # the first retrain: both best models calibrated
    "run_id": "part1-aaaa", "status": "completed", "started": "2026-01-01T10:00:00Z",
    "finished": "2026-01-02T00:00:00Z", "data_fingerprint": FINGERPRINT_A,
    "counts": {"train": 24, "val": 8}, "config": {"train": {"epochs": 15}},
    "best_epoch": 12, "best_value": 0.8125, "best_logloss_epoch": 9, "best_logloss_value": 0.49,
    "val": {"accuracy": 0.8125, "log_loss": 0.52, "calibrated_log_loss": 0.47},
    "calibration": {"best": {"log_loss_after": 0.47}, "best_logloss": {"log_loss_after": 0.45}},
}  # fmt: skip
RETRAIN_B = {  # new data: no best_logloss_value, no calibration report (an older run.json)
    "run_id": "part1-bbbb", "status": "completed", "started": "2026-01-04T10:00:00Z",
    "finished": "2026-01-05T00:00:00Z", "data_fingerprint": FINGERPRINT_B,
    "counts": {"train": 30, "val": 10}, "config": {"train": {"epochs": 20}}, "best_epoch": 20,
    "val": {"accuracy": 0.9, "log_loss": 0.31, "calibrated_log_loss": 0.3},
}  # fmt: skip
TRAINING_C = {  # still training: no val yet; the best epoch so far chose by accuracy
    "run_id": "part1-cccc", "status": "training", "started": "2026-01-06T10:00:00Z",
    "data_fingerprint": FINGERPRINT_B, "counts": {"train": 30, "val": 10},
    "config": {"train": {"epochs": 20, "best_metric": "val_accuracy"}}, "best_value": 0.5,
}  # fmt: skip


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


def test_history_rows_are_json_ready_for_the_table_artifact(tmp_path):
    from tasks.artifacts import _table_data, history_rows, stage_key, stage_of, stage_uri
    from tasks.refs import RunRef

    run = RunRef(run_id="part1-aaaa", run_uri="s3://b/runs/part1/part1-aaaa", local_dir="/x",
                 lease_uri="s3://b/runs/part1/.leases/part1-aaaa.json")  # fmt: skip
    assert stage_uri(run) == "s3://b/runs/part1" and stage_of(run) == "part1"
    assert stage_key("part1", "summary") == "train-swin-part1-summary"
    assert stage_key("Part_2", "epochs") == "train-swin-part-2-epochs"
    rows = [{"epoch": 1, "acc": 0.123456, "loss": float("nan")}]
    assert json.loads(_table_data(rows)) == [{"epoch": 1, "acc": 0.1235, "loss": None}]

    (tmp_path / "part1-cccc").mkdir()
    (tmp_path / "part1-cccc" / "run.json").write_text(json.dumps(TRAINING_C))
    (row,) = json.loads(_table_data(history_rows(str(tmp_path))))
    assert row == {
        "run_id": "part1-cccc", "finished": None, "status": "training",
        "data_fingerprint": "eeee5555ffff", "train_images": 30, "val_images": 10, "epochs": 20,
        "best_epoch": None, "val_accuracy": 0.5, "val_log_loss": None,
        "calibrated_log_loss": None, "run_uri": str(tmp_path / "part1-cccc"),
    }  # fmt: skip


def test_summary_description_lists_the_retrain_quality():
    from camtrap.report import summary_description
    from tasks.refs import RunRef

    uri = "/r/part1/part1-aaaa"
    run = RunRef(run_id="part1-aaaa", run_uri=uri, local_dir=uri, lease_uri=f"{uri}.json")
    assert summary_description(run.run_uri, RETRAIN_A) == (
        "part1-aaaa: val accuracy 0.8125, val log loss 0.4900, calibrated log loss 0.4500"
    )
    assert summary_description(run.run_uri, {"status": "failed"}) == "part1-aaaa: failed"
