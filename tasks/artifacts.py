"""What a run shows in the Prefect UI: a progress artifact, per-epoch and per-class tables, a
markdown summary and the plots. Built from the files in the run folder; URIs only name
`s3://bucket/key` or local paths (never an endpoint or a credential)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from camtrap import runfolder, storage
from tasks.common import RunRef, artifact_key

log = logging.getLogger("camtrap")

PLOT_NAMES = (
    "curves", "calibration", "confusion_matrix", "class_precision", "class_recalls", "class_f1",
)  # fmt: skip
MAX_EMBEDDED_PLOT_BYTES = 1_000_000  # bigger plots are linked, not embedded
METRIC_COLUMNS = ("accuracy", "loss", "log_loss", "top3_accuracy")


def best_effort(what: str, fn: Callable[[], Any]) -> Any:
    """Monitoring must not stop training: a failed artifact call is logged and skipped."""
    try:
        return fn()
    except Exception as err:
        log.warning("could not update the %s artifact (%s); training goes on", what, err)
        return None


def _rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def start_progress(run: RunRef, done: int, total: int) -> UUID:
    return create_progress_artifact(
        progress=100.0 * done / total,
        key=artifact_key(run.run_id, "progress"),
        description=f"{run.run_id}: epoch {done}/{total} done",
    )


def update_progress(artifact_id: UUID, done: int, total: int, note: str) -> None:
    update_progress_artifact(artifact_id, 100.0 * done / total, description=note)


def epochs_table(run: RunRef, epochs_csv: Path) -> UUID:
    """metrics/epochs.csv as one row per epoch: train and val side by side."""
    frame = pd.read_csv(epochs_csv)
    wide = frame.pivot(index="epoch", columns="split")
    rows = []
    for epoch, values in wide.iterrows():
        row: dict[str, Any] = {"epoch": int(epoch)}
        for split in ("train", "val"):
            for metric in METRIC_COLUMNS:
                if (metric, split) in values.index:
                    row[f"{split}_{metric}"] = float(values[(metric, split)])
        rows.append(row)
    return create_table_artifact(
        table=_rounded(rows),
        key=artifact_key(run.run_id, "epochs"),
        description=f"{run.run_id}: metrics per epoch (metrics/epochs.csv)",
    )


def per_class_table(run: RunRef, per_class: pd.DataFrame, epoch: int) -> UUID:
    """Precision, recall, F1 and support per class on the val split at `epoch`."""
    rows = per_class[(per_class["epoch"] == epoch) & (per_class["split"] == "val")]
    table = [
        {
            "class": str(r["class"]),
            "precision": float(r["precision"]),
            "recall": float(r["recall"]),
            "f1": float(r["f1"]),
            "support": int(r["support"]),
        }
        for _, r in rows.iterrows()
    ]
    return create_table_artifact(
        table=_rounded(table),
        key=artifact_key(run.run_id, "per-class"),
        description=f"{run.run_id}: per-class metrics on val, epoch {epoch}",
    )


def _at_epoch(epochs: pd.DataFrame, epoch: int, split: str) -> dict[str, float]:
    rows = epochs[(epochs["epoch"] == epoch) & (epochs["split"] == split)]
    if rows.empty:
        return {}
    return {m: float(rows.iloc[0][m]) for m in METRIC_COLUMNS if m in rows.columns}


def summary_markdown(run: RunRef, info: dict[str, Any], run_dir: Path) -> str:
    """Best epoch, the best model's val metrics, the generalisation gap, links to every file."""
    epochs = pd.read_csv(run_dir / runfolder.EPOCHS_CSV)
    best = int(info.get("best_epoch") or 0)
    config = info.get("config", {})
    metric = config.get("train", {}).get("best_metric", "val_accuracy")
    train_m, val_m = _at_epoch(epochs, best, "train"), _at_epoch(epochs, best, "val")
    lines = [
        f"# {run.run_id}: {info.get('status', '?')}",
        "",
        f"- outputs: `{run.run_uri}`",
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
        f"## Generalisation gap at epoch {best}",
        "",
        "| metric | train | val | train - val |",
        "| --- | --- | --- | --- |",
        *[
            f"| {m} | {train_m[m]:.4f} | {val_m[m]:.4f} | {train_m[m] - val_m[m]:+.4f} |"
            for m in METRIC_COLUMNS
            if m in train_m and m in val_m
        ],
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "| --- | --- | --- |",
        *[
            f"| `{storage.join(run.run_uri, name)}` | {meta['bytes']} | `{meta['sha256'][:12]}` |"
            for name, meta in sorted(info.get("files", {}).items())
        ],
        f"| `{storage.join(run.run_uri, 'run.json')}` | | |",
    ]
    return "\n".join(lines) + "\n"


def _best_files(info: dict[str, Any]) -> dict[str, str]:
    """The best model files' names (run.json's calibration report, else from the config)."""
    config = info.get("config", {})
    files = runfolder.RunFiles(
        Path("."),
        config.get("model", {}).get("arch", "?"),
        config.get("output", {}).get("stage", "?"),
    )
    names = {"best": files.best_model.name, "best_logloss": files.best_logloss_model.name}
    for name, report in info.get("calibration", {}).items():
        names[name] = report.get("file", names.get(name))
    return names


def best_models_lines(info: dict[str, Any], epochs: pd.DataFrame, metric: str) -> list[str]:
    """Which epoch each best model comes from, with its val accuracy and log loss (uncalibrated,
    as metrics/epochs.csv has them)."""
    names = _best_files(info)
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


def plots_markdown(run: RunRef, plots_dir: Path) -> str:
    """The plots, embedded (PNG data URIs) so the UI shows them wherever the outputs live."""
    lines = [f"# {run.run_id}: plots", ""]
    for name in PLOT_NAMES:
        path = plots_dir / f"{name}.png"
        uri = storage.join(run.run_uri, runfolder.PLOTS, f"{name}.png")
        if not path.exists():
            continue
        lines += [f"## {name}", "", f"`{uri}`", ""]
        if path.stat().st_size <= MAX_EMBEDDED_PLOT_BYTES:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            lines += [f"![{name}](data:image/png;base64,{data})", ""]
    return "\n".join(lines)


def publish_summary(run: RunRef, info: dict[str, Any], run_dir: Path) -> list[UUID]:
    """Every end-of-run artifact: final tables, the summary and the plots."""
    best = int(info.get("best_epoch") or 0)
    per_class = pd.read_csv(run_dir / runfolder.PER_CLASS_CSV, keep_default_na=False)
    return [
        epochs_table(run, run_dir / runfolder.EPOCHS_CSV),
        per_class_table(run, per_class, best),
        create_markdown_artifact(
            markdown=summary_markdown(run, info, run_dir),
            key=artifact_key(run.run_id, "summary"),
            description=f"{run.run_id}: summary",
        ),
        create_markdown_artifact(
            markdown=plots_markdown(run, run_dir / runfolder.PLOTS),
            key=artifact_key(run.run_id, "plots"),
            description=f"{run.run_id}: plots",
        ),
    ]
