"""The stages of one training run, each reading and writing one local run folder:

    validate (images decoded into the cache as they are checked) -> prepare (split.csv, run.json)
    -> cache_images (the dataset's uint8 pack) -> train (epochs, resume) -> evaluate (best model
    on val: predictions, confusion matrix, plots) -> finalize (run.json with every file's sha256)

`run_all` chains them for the CLI; Prefect tasks call the stages one by one."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torchvision

from camtrap import __version__, checkpoint, imagecache, runfolder
from camtrap.config import RunConfig
from camtrap.data import CachedBatches, DeviceNormalize, make_loader
from camtrap.engine import log_memory, precision_for, predict
from camtrap.errors import StorageError
from camtrap.fit import EpochRecord, FitResult, fit, resolve_device
from camtrap.labels import ImageLimits, LabelledData, load_dataset
from camtrap.metrics import confusion_matrix, per_class_metrics, summary_metrics
from camtrap.models import load_model
from camtrap.plots import (
    class_metric_figure,
    confusion_matrix_figure,
    curves_figure,
    figure_to_png_bytes,
)
from camtrap.runfolder import RunFiles, read_run_json, write_run_json
from camtrap.split import split_frame

log = logging.getLogger("camtrap")


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path
    status: str  # "completed" (trained now) or "up-to-date" (a finished run was found)
    best_epoch: int
    val: dict[str, float]  # the best model's metrics on the val split


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_id_for(config: RunConfig, data: LabelledData) -> str:
    """`{stage}-{fingerprint}`: the same config on the same data always gets the same id."""
    settings = config.model_dump(mode="json", exclude=runfolder.NOT_IN_RUN_ID)
    settings.pop("output", None)
    digest = hashlib.sha256(
        json.dumps({"config": settings, "data": data.fingerprint}, sort_keys=True).encode()
    ).hexdigest()
    return f"{config.output.stage}-{digest[:12]}"


def resolve_run_id(
    config: RunConfig, data: LabelledData, run_id: str | None = None, force: bool = False
) -> str:
    """The given id, else the derived one; `force` adds a timestamp so a finished run with the
    same config and data is trained again into a new folder (nothing is overwritten)."""
    run_id = runfolder.check_run_id(run_id) if run_id else run_id_for(config, data)
    return f"{run_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}" if force else run_id


def validate(config: RunConfig, data_root: Path, cache_root: Path | None = None) -> LabelledData:
    """The dataset, checked (DataError with every problem); each image not in the image cache is
    decoded once here and its pixels kept for `cache_images`, even when other images fail."""
    decoder = imagecache.Decoder(config.data.image_size, _store(config, cache_root))
    try:
        limits = ImageLimits(config.data.max_image_bytes, config.data.max_image_pixels)
        return load_dataset(
            data_root,
            config.data.features_csv,
            config.data.labels_csv,
            check=decoder,
            limits=limits,
        )
    finally:
        decoder.commit()


def _store(config: RunConfig, cache_root: Path | None) -> Path:
    return imagecache.store_dir(config.data.image_size, cache_root)


def cache_images(
    config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None = None
) -> imagecache.BuildReport:
    """The run's images as one uint8 pack, in split.csv order: reused if intact, else built from
    the rows the cache holds, decoding only images it has not seen."""
    entries = cache_entries(run_dir, data_root)
    return imagecache.ensure_pack(entries, config.data.image_size, _store(config, cache_root))


def cache_entries(run_dir: Path, data_root: Path) -> list[imagecache.CacheEntry]:
    """The run's images (split.csv order): id, file under `data_root`, sha256 of its bytes."""
    items = pd.read_csv(Path(run_dir) / runfolder.SPLIT_CSV, dtype=str, keep_default_na=False)
    return [
        imagecache.CacheEntry(row.id, str(Path(data_root) / row.filepath), row.sha256)
        for row in items.itertuples()
    ]


def prepare(config: RunConfig, data: LabelledData, run_dir: Path) -> Path:
    """Split the validated data and start the run folder: split.csv and a `running` run.json."""
    run_dir = Path(run_dir)
    files = RunFiles.for_config(run_dir, config)
    frame = data.frame.copy()
    frame["split"] = split_frame(
        frame, config.data.split, config.data.val_fraction, config.data.split_seed
    )
    columns = ["id", "filepath", "site", "label", "split", "sha256"]
    checkpoint.atomic_write_text(files.split_csv, frame[columns].to_csv(index=False))
    info = read_run_json(run_dir) or {"started": _utc_now()}
    info.update(
        run_id=run_dir.name,
        status="running",
        config=config.model_dump(mode="json"),
        classes=data.classes,
        data_fingerprint=data.fingerprint,
        counts={s: int((frame["split"] == s).sum()) for s in ("train", "val")},
    )
    write_run_json(run_dir, info)
    return files.split_csv


def split_items(run_dir: Path, pack: imagecache.Pack) -> tuple[pd.DataFrame, list[str]]:
    """split.csv with each image's class index and its row in the image cache's `pack`."""
    classes = read_run_json(run_dir).get("classes")
    if not classes:
        raise StorageError(f"{run_dir}/run.json has no classes; run `prepare` first")
    items = pd.read_csv(Path(run_dir) / runfolder.SPLIT_CSV, dtype=str, keep_default_na=False)
    items["row"] = items["id"].map(pack.row_of()).astype(int)
    items["label_idx"] = items["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return items, classes


def train(
    config: RunConfig,
    data_root: Path,
    run_dir: Path,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    cache_root: Path | None = None,
) -> FitResult:
    device = resolve_device(config.train.device)
    log_memory("start", device)
    pack = cache_images(config, run_dir, data_root, cache_root).pack
    items, classes = split_items(run_dir, pack)
    log_memory("after CSV load", device)
    return fit(config, items, classes, Path(run_dir), pack, on_epoch_end)


def _val_predictions(config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None):
    """The best model's probabilities on the val split, recomputed from the saved file."""
    files = RunFiles.for_config(run_dir, config)
    pack = cache_images(config, run_dir, data_root, cache_root).pack
    items, classes = split_items(run_dir, pack)
    val = items[items["split"] == "val"].reset_index(drop=True)
    device = resolve_device(config.train.device)
    model, meta = load_model(files.best_model, device)
    dataset = CachedBatches(pack, val["row"].tolist(), val["label_idx"].tolist())
    loader = make_loader(
        dataset, config.train.eval_batch(), num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    precision = precision_for(device, config.train.amp, config.train.amp_dtype)
    out = predict(model, loader, DeviceNormalize(meta.mean, meta.std, device), precision)
    return val, classes, out


def evaluate(
    config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None = None
) -> dict[str, float]:
    """Best model on val -> predictions/val.csv, metrics/confusion_matrix.csv and every plot."""
    run_dir = Path(run_dir)
    files = RunFiles.for_config(run_dir, config)
    val, classes, out = _val_predictions(config, run_dir, data_root, cache_root)
    predictions = pd.DataFrame(out.probs, columns=classes)
    predictions.insert(0, "label", val["label"])
    predictions.insert(0, "id", val["id"])
    checkpoint.atomic_write_text(files.predictions_csv, predictions.to_csv(index=False))
    preds = out.probs.argmax(axis=1)
    cm = confusion_matrix(out.targets, preds, classes)
    checkpoint.atomic_write_text(files.confusion_csv, cm.to_csv())
    _write_plots(files, cm, read_run_json(run_dir).get("best_epoch"))
    metrics = {"loss": out.loss, **summary_metrics(out.targets, out.probs, k=3)}
    log.info("best model on val: %s", "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    log.info("per class (val):\n%s", per_class_metrics(out.targets, preds, classes).to_string())
    return metrics


def _write_plots(files: RunFiles, cm: pd.DataFrame, best_epoch: int | None) -> None:
    epochs = pd.read_csv(files.epochs_csv)
    per_class = pd.read_csv(files.per_class_csv, keep_default_na=False)
    figures = {
        "class_precision.png": class_metric_figure(per_class, "precision"),
        "class_recalls.png": class_metric_figure(per_class, "recall"),
        "class_f1.png": class_metric_figure(per_class, "f1"),
        "curves.png": curves_figure(epochs, best_epoch=best_epoch),
        "confusion_matrix.png": confusion_matrix_figure(cm),
    }
    for name, figure in figures.items():
        checkpoint.atomic_write_bytes(files.plots / name, figure_to_png_bytes(figure))


def record_training(run_dir: Path, result: FitResult) -> None:
    """Note the best epoch in run.json (plots and summaries read it from there)."""
    info = read_run_json(run_dir)
    info.update(best_epoch=result.best_epoch, best_value=result.best_value)
    write_run_json(run_dir, info)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def finalize(run_dir: Path, status: str = "completed", val: dict | None = None) -> dict[str, Any]:
    """run.json: config, data fingerprint, classes, versions, timings, status, best epoch, the
    best model's val metrics, and every output file with its size and sha256."""
    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    outputs = sorted(
        p for p in run_dir.rglob("*")
        if p.is_file() and p.name != runfolder.RUN_JSON and not runfolder.is_bookkeeping(p, run_dir)
    )  # fmt: skip
    info.update(
        status=status,
        finished=_utc_now(),
        versions={
            "camtrap": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        git_commit=_git_commit(),
        files={
            str(p.relative_to(run_dir)): {
                "bytes": p.stat().st_size,
                "sha256": checkpoint.file_sha256(p),
            }
            for p in outputs
        },
    )
    if val is not None:
        info["val"] = val
    write_run_json(run_dir, info)
    return info


def run_all(
    config: RunConfig,
    data_root: Path,
    output_root: Path,
    run_id: str | None = None,
    force: bool = False,
) -> RunSummary:
    """Validate, split, train (resuming), evaluate and finalize one run under output_root."""
    if run_id is not None:
        runfolder.check_run_id(run_id)  # before the minutes validation takes
    data = validate(config, data_root)
    run_id = resolve_run_id(config, data, run_id, force)
    stage = config.output.stage
    run_dir = Path(runfolder.run_location(output_root, stage, run_id))
    with runfolder.leased(runfolder.lease_location(output_root, stage, run_id)) as lease:
        info = read_run_json(run_dir)
        if "config" in info:
            runfolder.refuse_changes(info["config"], config.model_dump(mode="json"), run_dir)
        if runfolder.up_to_date(info, config.train.epochs):
            log.info("%s is up to date (finished %s); use --force to train again", run_dir,
                     info["finished"])  # fmt: skip
            return RunSummary(
                run_id, run_dir, "up-to-date", info.get("best_epoch", 0), info.get("val", {})
            )
        log.info("run %s -> %s", run_id, run_dir)
        prepare(config, data, run_dir)
        cache_images(config, run_dir, data.root)
        result = train(config, data.root, run_dir, on_epoch_end=lambda _: lease.check())
        record_training(run_dir, result)
        val = evaluate(config, run_dir, data.root)
        finalize(run_dir, val=val)
    return RunSummary(run_id, run_dir, "completed", result.best_epoch, val)
