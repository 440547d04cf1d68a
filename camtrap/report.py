"""What a user reads about runs, rendered from run.json and the run folder's files: the summary
`camtrap train` and `camtrap demo` print at the end (where the run is, how good its best model
is, which files to open), the markdown the Prefect tasks publish (a run's summary and plots, a
prediction's summary), and a stage's retrain history (one row per run folder under
{output_uri}/{stage}/). Rendering only: nothing here trains or writes."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from camtrap import storage
from camtrap.metrics import EPOCH_METRICS
from camtrap.redact import redact_uri
from camtrap.runfolder import EPOCHS_CSV, PLOT_NAMES, PLOTS, RUN_JSON, RunFiles
from camtrap.storage import uris

log = logging.getLogger("camtrap")

# The files a first-time user looks at, in reading order, with what each shows.
_FILES_TO_OPEN = [
    ("metrics/epochs.csv", "accuracy and losses of every epoch, train and val"),
    ("plots/curves.png", "accuracy and loss curves, the best epoch marked"),
    ("plots/confusion_matrix.png", "best model on val: true class x predicted class"),
    ("predictions/val.csv", "best model's class probabilities per val image (calibrated)"),
    ("plots/calibration.png", "reliability of the best models' probabilities, before/after T"),
    ("metrics/per_site.csv", "best model on val per camera site: accuracy, log loss"),
]


def run_summary(run_dir: Path) -> str:
    """A few lines on the finished run in `run_dir`."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / RUN_JSON).read_text())
    lines = [f"Run folder: {run_dir}", _best_line(info), *_calibration_lines(info)]
    lines.append("Files to open there:")
    files = [*_FILES_TO_OPEN, *_model_files(info)]
    width = max(len(name) for name, _ in files)
    lines += [f"  {name:<{width}}  {what}" for name, what in files]
    return "\n".join(lines)


def _model_files(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The best model's file (named after the run's arch and stage), and the log-loss best's
    when the run has one."""
    files = RunFiles.of_run(Path(), info)
    if files is None:
        return [("final_<arch>_model_<stage>_best.pth", "the best model")]
    shown = [(files.best_model.name, "the best model")]
    if files.best_logloss_model.name in info.get("files", {}):
        shown.append((files.best_logloss_model.name, "the model of the lowest val log loss"))
    return shown


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


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


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
        if name != RUN_JSON or folder.startswith("."):
            continue
        run_uri = storage.join(stage_uri, folder)
        text = storage.read_text(storage.join(run_uri, RUN_JSON))
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


# --- markdown for the Prefect UI ------------------------------------------------------------

MAX_EMBEDDED_PLOT_BYTES = 1_000_000  # bigger plots are linked, not embedded


def _at_epoch(epochs: pd.DataFrame, epoch: int, split: str) -> dict[str, float]:
    rows = epochs[(epochs["epoch"] == epoch) & (epochs["split"] == split)]
    if rows.empty:
        return {}
    return {m: float(rows.iloc[0][m]) for m in EPOCH_METRICS if m in rows.columns}


def summary_markdown(run_uri: str, info: dict[str, Any], run_dir: Path) -> str:
    """Best epoch, the best model's val metrics, the generalisation gap, links to every file."""
    epochs = pd.read_csv(Path(run_dir) / EPOCHS_CSV)
    best = int(info.get("best_epoch") or 0)
    config = info.get("config", {})
    metric = config.get("train", {}).get("best_metric", "val_accuracy")
    train_m, val_m = _at_epoch(epochs, best, "train"), _at_epoch(epochs, best, "val")
    lines = [
        f"# {uris.name(run_uri)}: {info.get('status', '?')}",
        "",
        f"- outputs: `{run_uri}`",
        f"- data fingerprint: `{str(info.get('data_fingerprint', '?'))[:12]}`",
        f"- model: `{config.get('model', {}).get('arch', '?')}`, "
        f"{len(info.get('classes', []))} classes, images "
        f"{info.get('counts', {}).get('train', '?')} train / "
        f"{info.get('counts', {}).get('val', '?')} val",
        f"- best epoch: **{best}** of {int(epochs['epoch'].max())} "
        f"({metric} {float(info.get('best_value', float('nan'))):.4f})",
        "",
        "## Best model on val",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.4f} |" for k, v in info.get("val", {}).items()],
        "",
        *best_models_lines(info, epochs, metric),
        *calibration_lines(info),
        *tta_lines(info),
        *per_site_lines(info),
        *event_lines(info),
        *balance_lines(info),
        *crop_lines(info),
        f"## Generalisation gap at epoch {best}",
        "",
        "| metric | train | val | train - val |",
        "| --- | --- | --- | --- |",
        *[
            f"| {m} | {train_m[m]:.4f} | {val_m[m]:.4f} | {train_m[m] - val_m[m]:+.4f} |"
            for m in EPOCH_METRICS
            if m in train_m and m in val_m
        ],
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "| --- | --- | --- |",
        *[
            f"| `{uris.join(run_uri, rel)}` | {meta['bytes']} | `{meta['sha256'][:12]}` |"
            for rel, meta in sorted(info.get("files", {}).items())
        ],
        f"| `{uris.join(run_uri, RUN_JSON)}` | | |",
    ]
    return "\n".join(lines) + "\n"


def best_models_lines(info: dict[str, Any], epochs: pd.DataFrame, metric: str) -> list[str]:
    """Which epoch each best model comes from, with its val accuracy and log loss (uncalibrated,
    as metrics/epochs.csv has them)."""
    files = RunFiles.of_run(Path(), info)
    names = {
        "best": files.best_model.name if files else "?",
        "best_logloss": files.best_logloss_model.name if files else "?",
    }
    rows = []
    chosen = (
        ("best", "best_epoch", metric),
        ("best_logloss", "best_logloss_epoch", "val_log_loss"),
    )
    for name, key, chosen_by in chosen:
        if info.get(key) is None:
            continue
        epoch = int(info[key])
        val = _at_epoch(epochs, epoch, "val")
        rows.append(
            f"| `{names[name]}` | {chosen_by} | {epoch} | {val.get('accuracy', float('nan')):.4f} "
            f"| {val.get('log_loss', float('nan')):.4f} |"
        )
    header = ["## Best models", "", "| file | chosen by | epoch | val accuracy | val log loss |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    return [*header, *rows, ""] if rows else []


def calibration_lines(info: dict[str, Any]) -> list[str]:
    """Each best model's temperature and val log loss / ECE before and after it."""
    reports = info.get("calibration", {})
    if not reports:
        return []
    return [
        "## Calibration on val (temperature stored in each model file)",
        "",
        "| model | epoch | temperature | log loss before | log loss after | ECE before "
        "| ECE after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {name} | {r.get('epoch')} | {r['temperature']:.4f} | {r['log_loss_before']:.4f} "
            f"| {r['log_loss_after']:.4f} | {r['ece_before']:.4f} | {r['ece_after']:.4f} |"
            for name, r in reports.items()
        ],
        "",
    ]


def tta_lines(info: dict[str, Any]) -> list[str]:
    """The best model on val without and with hflip TTA (calibrated, as predict returns)."""
    tta = info.get("tta", {})
    if not tta:
        return []
    return [
        "## Test-time augmentation (best model on val, calibrated)",
        "",
        "| TTA | accuracy | log loss |",
        "| --- | --- | --- |",
        *[f"| {name} | {m['accuracy']:.4f} | {m['log_loss']:.4f} |" for name, m in tta.items()],
        "",
    ]


def per_site_lines(info: dict[str, Any]) -> list[str]:
    """Val accuracy and log loss per camera site, the worst log loss first: photos to label come
    from new sites, and a few bad sites can hide behind a good mean."""
    sites = sorted(info.get("per_site", []), key=lambda r: r["log_loss"], reverse=True)
    if not sites:
        return []
    return [
        "## Val by site (best model, calibrated; worst log loss first)",
        "",
        "| site | images | accuracy | log loss |",
        "| --- | --- | --- | --- |",
        *[
            f"| {r['site']} | {r['images']} | {r['accuracy']:.4f} | {r['log_loss']:.4f} |"
            for r in sites
        ],
        "",
    ]


def balance_lines(info: dict[str, Any]) -> list[str]:
    """How the training loss and order treated the classes (run.json `balance`): the train
    split's count of each class and, with train.class_weights, its loss weight."""
    balance = info.get("balance", {})
    counts, weights = balance.get("train_counts", {}), balance.get("weights", {})
    if not counts:
        return []
    return [
        f"## Class balance (data.sampler {balance.get('sampler')}, train.class_weights "
        f"{balance.get('class_weights')})",
        "",
        f"| class | train {'samples' if _crop(info) == 'all' else 'images'} | loss weight |",
        "| --- | --- | --- |",
        *[
            f"| {c} | {n} | {weights[c]:.4f} |" if c in weights else f"| {c} | {n} | 1 |"
            for c, n in counts.items()
        ],  # fmt: skip
        "",
    ]


def _crop(info: dict[str, Any]) -> str:
    return str(info.get("config", {}).get("data", {}).get("crop", "none"))


def crop_lines(info: dict[str, Any]) -> list[str]:
    """What the model saw (run.json `crops`, data.crop): the samples of each split and the
    images without an animal box above the threshold, which keep their whole frame."""
    crops = info.get("crops")
    if not crops:
        return []
    data = info.get("config", {}).get("data", {})
    images = info.get("counts", {})
    return [
        f"## Crops (data.crop {_crop(info)}, detection_threshold "
        f"{data.get('detection_threshold')}, {data.get('detections')})",
        "",
        "| split | images | samples | whole frames |",
        "| --- | --- | --- | --- |",
        *[
            f"| {s} | {images.get(s, '?')} | {c['samples']} | {c['whole_frames']} |"
            for s, c in crops.items()
        ],
        "",
    ]


def event_lines(info: dict[str, Any]) -> list[str]:
    """Val per event (data with events: one burst of frames, one prediction), beside the
    per-image numbers above: each rule's accuracy and log loss (metrics/events.csv)."""
    rows = info.get("events", [])
    if not rows:
        return []
    return [
        "## Val by event (best model, calibrated)",
        "",
        "| rule | events | images | accuracy | log loss |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {r['rule']} | {r['events']} | {r['images']} | {r['accuracy']:.4f} | "
            f"{r['log_loss']:.4f} |"
            for r in rows
        ],
        "",
    ]


def plots_markdown(run_uri: str, plots_dir: Path) -> str:
    """The plots, embedded (PNG data URIs) so the UI shows them wherever the outputs live."""
    lines = [f"# {uris.name(run_uri)}: plots", ""]
    for plot in PLOT_NAMES:
        path = Path(plots_dir) / f"{plot}.png"
        uri = uris.join(run_uri, PLOTS, f"{plot}.png")
        if not path.exists():
            continue
        lines += [f"## {plot}", "", f"`{uri}`", ""]
        if path.stat().st_size <= MAX_EMBEDDED_PLOT_BYTES:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            lines += [f"![{plot}](data:image/png;base64,{data})", ""]
    return "\n".join(lines)


def summary_description(run_uri: str, info: dict[str, Any]) -> str:
    """What the Artifacts page lists for each version of the summary: the retrain's quality."""
    row = history_row(run_uri, info)
    values = [
        f"{name.replace('_', ' ')} {row[name]:.4f}"
        for name in ("val_accuracy", "val_log_loss", "calibrated_log_loss")
        if row[name] is not None
    ]
    return f"{uris.name(run_uri)}: " + (", ".join(values) or info.get("status", "?"))


# --- predictions -------------------------------------------------------------------------------

LEAST_CONFIDENT = 10  # ids listed in the predictions summary


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """How many images each class is the top-1 prediction for (every class, 0 included)."""
    classes = [c for c in frame.columns if c != "id"]
    top = frame[classes].to_numpy().argmax(axis=1)
    counts = np.bincount(top, minlength=len(classes))
    return pd.DataFrame({"class": classes, "images": counts})


def least_confident(frame: pd.DataFrame, n: int = LEAST_CONFIDENT) -> pd.DataFrame:
    """The `n` images whose top-1 probability is lowest: id, top class and its probability."""
    classes = [c for c in frame.columns if c != "id"]
    probs = frame[classes].to_numpy()
    table = pd.DataFrame(
        {
            "id": frame["id"].to_numpy(),
            "top_class": np.asarray(classes)[probs.argmax(axis=1)],
            "probability": probs.max(axis=1),
        }
    )
    return table.sort_values("probability", kind="stable").head(n).reset_index(drop=True)


def predictions_markdown(
    frame: pd.DataFrame,
    *,
    output_uri: str,
    reused: bool,
    model_uri: str,
    run_id: str,
    epoch: int | None,
    temperature: float,
    tta: str,
    calibration: bool,
) -> str:
    """Where the predictions are, from which model, how many photos each class is the top-1
    prediction for, and the least confident photos."""
    counts = class_counts(frame)
    lowest = least_confident(frame)
    applied = (
        f"temperature {temperature:.4g} applied"
        if calibration
        else ("uncalibrated (--no-calibration)")
    )
    state = "reused: an earlier flow run wrote it" if reused else "written now"
    lines = [
        f"# Predictions: {len(frame)} photos",
        "",
        f"- output: `{output_uri}` ({state})",
        f"- model: `{redact_uri(model_uri)}` (run {run_id}, epoch {epoch}, {applied}, tta {tta})",
        "",
        "## Top-1 predictions per class",
        "",
        "| class | photos |",
        "|---|---:|",
        *[f"| {_cell(row['class'])} | {row['images']} |" for _, row in counts.iterrows()],
        "",
        f"## The {len(lowest)} least confident photos",
        "",
        "| id | top class | probability |",
        "|---|---|---:|",
        *[
            f"| {_cell(row.id)} | {_cell(row.top_class)} | {row.probability:.4f} |"
            for row in lowest.itertuples()
        ],
        "",
    ]
    return "\n".join(lines)


def _cell(text: object) -> str:
    """A value as a markdown table cell: a `|` in an id would end the cell."""
    return str(text).replace("|", "\\|")
