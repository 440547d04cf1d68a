"""What a user reads about runs: the summary `camtrap demo` prints at the end (where the run is,
how good its best model is, which files to open, how to see it in the Prefect UI), and a stage's
retrain history (one row per run folder under {output_uri}/{stage}/). Both read only run.json."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from camtrap import runfolder, storage

log = logging.getLogger("camtrap")

PREFECT_UI_URL = "http://127.0.0.1:4200"

# The files a first-time user looks at, in reading order, with what each shows.
_FILES_TO_OPEN = [
    ("metrics/epochs.csv", "accuracy and losses of every epoch, train and val"),
    ("plots/curves.png", "accuracy and loss curves, the best epoch marked"),
    ("plots/confusion_matrix.png", "best model on val: true class x predicted class"),
    ("predictions/val.csv", "best model's class probabilities per val image (calibrated)"),
    ("plots/calibration.png", "reliability of the best models' probabilities, before/after T"),
    ("metrics/per_site.csv", "best model on val per camera site: accuracy, log loss"),
]


def run_summary(
    run_dir: Path, prefect_command: str | None = None, api_url: str | None = None
) -> str:
    """A few lines on the finished run in `run_dir`. With `prefect_command` (the `prefect`
    executable to show), also how to see the run in the Prefect UI: the server at `api_url`
    (PREFECT_API_URL) when the run went there, else the temporary server's history."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    lines = [f"Run folder: {run_dir}", _best_line(info), *_calibration_lines(info)]
    lines.append("Files to open there:")
    files = [
        *_FILES_TO_OPEN,
        (_best_model_file(info, run_dir), "the best model"),
        *_best_logloss_model_file(info),
    ]
    width = max(len(name) for name, _ in files)
    lines += [f"  {name:<{width}}  {what}" for name, what in files]
    if prefect_command:
        lines += _prefect_ui_lines(prefect_command, api_url, run_dir.name)
    return "\n".join(lines)


def _best_line(info: dict[str, Any]) -> str:
    val = info.get("val", {})
    epochs = info.get("config", {}).get("train", {}).get("epochs", "?")
    return (
        f"Best epoch {info.get('best_epoch', '?')} of {epochs}: val accuracy "
        f"{_number(val.get('accuracy'))}, val log loss {_number(val.get('log_loss'))}"
    )


def _calibration_lines(info: dict[str, Any]) -> list[str]:
    """The lowest val log loss's epoch and the calibrated log loss, once evaluate wrote them."""
    lines = []
    if info.get("best_logloss_epoch") is not None:
        lines.append(f"Lowest val log loss at epoch {info['best_logloss_epoch']}")
    val = info.get("val", {})
    if val.get("calibrated_log_loss") is not None:
        lines.append(
            f"Calibrated (temperature {_number(val.get('temperature'))}): val log loss "
            f"{_number(val['calibrated_log_loss'])}, ECE {_number(val.get('ece'))} -> "
            f"{_number(val.get('calibrated_ece'))}"
        )
    return lines


def _best_logloss_model_file(info: dict[str, Any]) -> list[tuple[str, str]]:
    names = [name for name in info.get("files", {}) if name.endswith("_best_logloss.pth")]
    return [(names[0], "the model of the lowest val log loss")] if names else []


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _best_model_file(info: dict[str, Any], run_dir: Path) -> str:
    """The `final_*_best.pth` that run.json lists (its name depends on arch and stage)."""
    names = [name for name in info.get("files", {}) if name.endswith("_best.pth")]
    names = names or sorted(p.name for p in run_dir.glob("final_*_best.pth"))
    return names[0] if names else "final_<arch>_model_<stage>_best.pth"


def _prefect_ui_lines(prefect_command: str, api_url: str | None, run_id: str) -> list[str]:
    """The flow run is named after the run id (the folder's name)."""
    if api_url:
        url = api_url.removesuffix("/api")
        return [f"In the Prefect UI: open {url} (PREFECT_API_URL), flow run {run_id}"]
    # The temporary server kept the run's history in PREFECT_HOME's database, which a
    # `prefect server start` with the same PREFECT_HOME serves.
    return [
        f"In the Prefect UI: run `{prefect_command} server start`, then open {PREFECT_UI_URL}",
        f"  (flow run {run_id}, kept in PREFECT_HOME's database: ~/.prefect unless set)",
    ]


# --- a stage's retrain history ---------------------------------------------------------------

HISTORY_COLUMNS = [
    "run_id", "finished", "status", "data_fingerprint", "train_images", "val_images", "epochs",
    "best_epoch", "val_accuracy", "val_log_loss", "calibrated_log_loss", "run_uri",
]  # fmt: skip
_INT_COLUMNS = ["train_images", "val_images", "epochs", "best_epoch"]
FINGERPRINT_CHARS = 12  # as short git hashes: enough to see which retrains share their data


def stage_run_infos(stage_uri: str | Path) -> dict[str, dict[str, Any]]:
    """run.json of every run folder in `stage_uri` ({output_uri}/{stage}, s3:// or local), by
    run URI. Read from the folders themselves, so the history survives a lost Prefect database.
    Skipped: hidden folders (.leases), folders without run.json yet, and a run.json that is not
    JSON (logged; one broken folder must not hide the others)."""
    infos: dict[str, dict[str, Any]] = {}
    for rel in sorted(storage.list_files(stage_uri)):
        folder, _, name = rel.partition("/")
        if name != runfolder.RUN_JSON or folder.startswith("."):
            continue
        run_uri = storage.join(stage_uri, folder)
        text = storage.read_text(storage.join(run_uri, runfolder.RUN_JSON))
        try:
            info = json.loads(text)
        except ValueError as err:
            log.warning("%s/run.json is not JSON (%s); left out of the history", run_uri, err)
            continue
        if isinstance(info, dict):
            infos[run_uri] = info
    return infos


def history_table(infos: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per run (`stage_run_infos`), newest first: its data, epochs and val quality.
    val_accuracy: the best model's (train.best_metric); val_log_loss: the lowest of the epochs;
    calibrated_log_loss: the lowest among the best models after temperature calibration. A
    value the run has not reached yet (still training, failed) is missing (<NA>/NaN)."""
    rows = sorted(
        (history_row(run_uri, info) for run_uri, info in infos.items()),
        key=lambda row: (row["finished"] or row["started"] or "", row["run_id"]),
        reverse=True,
    )  # a run that has not finished sorts by its start
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)  # drops `started`
    return frame.astype({name: "Int64" for name in _INT_COLUMNS})


def history_row(run_uri: str, info: dict[str, Any]) -> dict[str, Any]:
    """One run's row of `history_table` (and `started`, to sort a run that has not finished)."""
    val = info.get("val") or {}
    counts = info.get("counts") or {}
    train = (info.get("config") or {}).get("train") or {}
    fingerprint = info.get("data_fingerprint")
    return {
        "run_id": info.get("run_id") or str(run_uri).rstrip("/").rsplit("/", 1)[-1],
        "finished": info.get("finished"),
        "started": info.get("started"),
        "status": info.get("status"),
        "data_fingerprint": fingerprint[:FINGERPRINT_CHARS] if fingerprint else None,
        "train_images": counts.get("train"),
        "val_images": counts.get("val"),
        "epochs": train.get("epochs"),
        "best_epoch": info.get("best_epoch"),
        "val_accuracy": _val_accuracy(info, val, train),
        "val_log_loss": _first(info.get("best_logloss_value"), val.get("log_loss")),
        "calibrated_log_loss": _calibrated_log_loss(info, val),
        "run_uri": str(run_uri),
    }


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _val_accuracy(info: dict[str, Any], val: dict[str, Any], train: dict[str, Any]) -> Any:
    """The evaluated best model's; before evaluate, the best epoch's when it was chosen by it."""
    by_accuracy = train.get("best_metric", "val_accuracy") == "val_accuracy"
    return _first(val.get("accuracy"), info.get("best_value") if by_accuracy else None)


def _calibrated_log_loss(info: dict[str, Any], val: dict[str, Any]) -> Any:
    after = [
        report["log_loss_after"]
        for report in (info.get("calibration") or {}).values()
        if report.get("log_loss_after") is not None
    ]
    return min(after) if after else val.get("calibrated_log_loss")
