"""The summary `camtrap demo` prints, from a hand-written run.json."""

import json

from camtrap.report import run_summary

RUN_JSON = {
    "run_id": "smoke-0123456789ab",
    "status": "completed",
    "config": {"model": {"arch": "resnet18"}, "train": {"epochs": 15}},
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


def test_summary_of_a_flow_run_says_how_to_open_the_prefect_ui(tmp_path):
    lines = run_summary(_run_dir(tmp_path), ".venv/bin/prefect").splitlines()
    assert lines[-2:] == [
        "In the Prefect UI: run `.venv/bin/prefect server start`, then open http://127.0.0.1:4200",
        "  (flow run smoke-0123456789ab, kept in PREFECT_HOME's database: ~/.prefect unless set)",
    ]


def test_a_run_on_a_configured_server_points_at_that_server(tmp_path):
    summary = run_summary(_run_dir(tmp_path), "prefect", api_url="http://gpu-box:4200/api")
    url = "http://gpu-box:4200"
    expected = f"In the Prefect UI: open {url} (PREFECT_API_URL), flow run smoke-0123456789ab"
    assert summary.splitlines()[-1] == expected


def test_missing_metrics_show_as_not_available(tmp_path):
    info = {k: v for k, v in RUN_JSON.items() if k not in ("val", "best_epoch", "files")}
    summary = run_summary(_run_dir(tmp_path, info)).splitlines()
    assert summary[1] == "Best epoch ? of 15: val accuracy n/a, val log loss n/a"
    assert summary[-1].startswith("  final_<arch>_model_<stage>_best.pth")
