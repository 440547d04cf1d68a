"""The summary `camtrap demo` prints at the end: where the run is, how good its best model is,
which files to open, and how to see the run in the Prefect UI. Reads only the run's run.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
