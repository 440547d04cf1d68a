"""The stages of one training run, each reading and writing one local run folder:

    validate (images decoded into the cache as they are checked) -> prepare (split.csv, run.json)
    -> cache_images (the dataset's uint8 pack) -> train (epochs, resume) -> evaluate (best model
    on val: temperature, predictions, confusion matrix, per-site metrics, TTA effect, plots)
    -> finalize (run.json with every file's sha256)

`run_all` chains them for the CLI; Prefect tasks call the stages one by one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision
from torch.utils.data import DataLoader

from camtrap import __version__, checkpoint, distributed, imagecache, runfolder, storage
from camtrap.calibration import (
    CALIBRATED_FROM,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
    with_temperature,
)
from camtrap.config import RunConfig
from camtrap.data import CachedBatches, DeviceNormalize, make_loader
from camtrap.engine import EpochOutputs, Precision, log_memory, precision_for, predict
from camtrap.errors import StorageError
from camtrap.fit import EpochRecord, FitResult, fit, resolve_device
from camtrap.labels import ImageLimits, LabelledData, load_dataset
from camtrap.metrics import (
    accuracy,
    confusion_matrix,
    log_loss,
    per_class_metrics,
    per_site_metrics,
    summary_metrics,
)
from camtrap.models import MirrorAverage, ModelMeta, load_model, resolve_init_from
from camtrap.plots import (
    calibration_figure,
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
    dump = config.model_dump(mode="json", exclude=runfolder.NOT_IN_RUN_ID)
    settings = runfolder.settings_in_effect(dump)  # settings added later keep old ids
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
    cache_train_images(config, run_dir, data_root, cache_root)
    return imagecache.ensure_pack(entries, config.data.image_size, _store(config, cache_root))


def cache_train_images(
    config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None = None
) -> imagecache.BuildReport | None:
    """With augmentation from a larger size (data.train_cache_size): the train split's images
    at that size, a pack of their own, whose random crops are resized to image_size on the
    device. None when training reads the image_size pack."""
    size = config.train_size()
    if size == config.data.image_size:
        return None
    entries = cache_entries(run_dir, data_root, split="train")
    return imagecache.ensure_pack(entries, size, imagecache.store_dir(size, cache_root))


def cache_entries(
    run_dir: Path, data_root: Path, split: str | None = None
) -> list[imagecache.CacheEntry]:
    """The run's images (split.csv order; only `split`'s if given): id, file under
    `data_root`, sha256 of its bytes."""
    items = pd.read_csv(Path(run_dir) / runfolder.SPLIT_CSV, dtype=str, keep_default_na=False)
    if split is not None:
        items = items[items["split"] == split]
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
    storage.atomic_write_text(files.split_csv, frame[columns].to_csv(index=False))
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
    """Train (or resume) the run in this process, or with train.nproc > 1 on that many
    (camtrap.distributed: `on_epoch_end` still runs here)."""
    if distributed.world_size(config.train.nproc, config.train.device) > 1:
        cache_images(config, run_dir, data_root, cache_root)  # once, before the ranks read it
        return distributed.launch(config, data_root, run_dir, on_epoch_end, cache_root)
    return train_here(config, data_root, run_dir, on_epoch_end, cache_root)


def train_here(
    config: RunConfig,
    data_root: Path,
    run_dir: Path,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    cache_root: Path | None = None,
    group: distributed.Group | None = None,
) -> FitResult:
    """`train` in this process; `group`: its rank among several (camtrap.distributed)."""
    device = resolve_device(config.train.device)
    log_memory("start", device)
    pack = cache_images(config, run_dir, data_root, cache_root).pack
    larger = cache_train_images(config, run_dir, data_root, cache_root)
    items, classes = split_items(run_dir, pack)
    log_memory("after CSV load", device)
    train_pack = larger.pack if larger is not None else None
    return fit(config, items, classes, Path(run_dir), pack, on_epoch_end, train_pack, group)


@dataclass
class _ValSplit:
    """The val split, ready for model files to run on."""

    items: pd.DataFrame  # split.csv's val rows, in order: id, filepath, site, label, ...
    classes: list[str]
    loader: DataLoader
    device: torch.device
    precision: Precision


def _val_split(
    config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None
) -> _ValSplit:
    pack = cache_images(config, run_dir, data_root, cache_root).pack
    items, classes = split_items(run_dir, pack)
    val = items[items["split"] == "val"].reset_index(drop=True)
    device = resolve_device(config.train.device)
    dataset = CachedBatches(pack, val["row"].tolist(), val["label_idx"].tolist())
    loader = make_loader(
        dataset, config.train.eval_batch(), num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    precision = precision_for(device, config.train.amp, config.train.amp_dtype)
    return _ValSplit(val, classes, loader, device, precision)


def _run_on_val(model: torch.nn.Module, meta: ModelMeta, val: _ValSplit) -> EpochOutputs:
    """A model's raw (uncalibrated) probabilities on val: evaluation preprocessing, the file's
    mean and std."""
    to_input = DeviceNormalize(meta.mean, meta.std, val.device)
    return predict(model, val.loader, to_input, val.precision)


@dataclass
class _Evaluated:
    """One best model file on val: its raw outputs and the temperature fitted to them."""

    path: Path
    meta: ModelMeta
    out: EpochOutputs
    temperature: float

    @property
    def calibrated(self) -> np.ndarray:
        return apply_temperature(self.out.probs, self.temperature)

    def calibration_report(self) -> dict[str, Any]:
        targets, raw, calibrated = self.out.targets, self.out.probs, self.calibrated
        return {
            "file": self.path.name,
            "epoch": self.meta.epoch,
            "temperature": self.temperature,
            "log_loss_before": log_loss(targets, raw),
            "log_loss_after": log_loss(targets, calibrated),
            "ece_before": expected_calibration_error(targets=targets, probs=raw),
            "ece_after": expected_calibration_error(targets=targets, probs=calibrated),
        }


def _best_models(files: RunFiles) -> dict[str, Path]:
    """The best model files a run has: by train.best_metric ("best") and by val log loss
    ("best_logloss"; missing only after resuming a state from before it existed)."""
    if not files.best_logloss_model.exists():
        log.warning("%s is missing; it is not evaluated", files.best_logloss_model.name)
        return {"best": files.best_model}
    return {"best": files.best_model, "best_logloss": files.best_logloss_model}


def _evaluate_and_calibrate(paths: dict[str, Path], val: _ValSplit) -> dict[str, _Evaluated]:
    """Each best model on val, with one temperature fitted to it and stored in its file (two
    files of the same epoch share the weights, so one pass serves both)."""
    passes: dict[int | None, EpochOutputs] = {}
    evaluated = {}
    for name, path in paths.items():
        model, meta = load_model(path, val.device)
        if meta.epoch not in passes:
            passes[meta.epoch] = _run_on_val(model, meta, val)
        out = passes[meta.epoch]
        temperature = fit_temperature(out.probs, out.targets)
        store_temperature(path, temperature)
        evaluated[name] = _Evaluated(path, meta, out, temperature)
        log.info("%s (epoch %s): temperature %.4f", path.name, meta.epoch, temperature)
    return evaluated


def store_temperature(path: Path, temperature: float) -> None:
    """Rewrite the model file at `path` (atomically) with `temperature`. The file keeps the
    sha256 it had as training wrote it (calibration.CALIBRATED_FROM), which state/last.pt
    records: a resume recognises the calibrated file as that best model (fit._is_recorded_file)
    instead of rebuilding or refusing it."""
    blob = checkpoint.load_torch(path)
    if blob.get("temperature") == temperature and blob.get(CALIBRATED_FROM):
        return  # calibrated already (evaluate retried): the same bytes
    calibrated = with_temperature(blob, temperature, storage.file_sha256(path))
    checkpoint.save_torch(calibrated, path)


def _tta_effect(best: _Evaluated, val: _ValSplit) -> dict[str, dict[str, float]]:
    """The best model on val without and with hflip TTA (the mean of the image and its mirror),
    calibrated with its temperature as `camtrap predict` returns them by default."""
    model, meta = load_model(best.path, val.device)
    mirrored = _run_on_val(MirrorAverage(model), meta, val)
    report = {}
    for name, out in (("none", best.out), ("hflip", mirrored)):
        calibrated = apply_temperature(out.probs, best.temperature)
        report[name] = {
            "accuracy": accuracy(out.targets, calibrated),
            "log_loss": log_loss(out.targets, calibrated),
            "log_loss_uncalibrated": log_loss(out.targets, out.probs),
        }
    return report


def evaluate(
    config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None = None
) -> dict[str, float]:
    """Each best model on val: a temperature fitted and stored in its file, calibration before
    and after (run.json `calibration`, plots/calibration.png). The best model (train.best_metric)
    also gives predictions/val.csv (calibrated probabilities, as `camtrap predict` returns),
    metrics/confusion_matrix.csv, metrics/per_site.csv, the TTA effect (run.json `tta`) and the
    plots. Returns the best model's val metrics, calibrated log loss and ECE included."""
    run_dir = Path(run_dir)
    files = RunFiles.for_config(run_dir, config)
    val = _val_split(config, run_dir, data_root, cache_root)
    evaluated = _evaluate_and_calibrate(_best_models(files), val)
    best = evaluated["best"]
    calibrated = best.calibrated
    _write_predictions(files, val, calibrated)
    preds = best.out.probs.argmax(axis=1)  # the same classes as the calibrated argmax
    cm = confusion_matrix(best.out.targets, preds, val.classes)
    storage.atomic_write_text(files.confusion_csv, cm.to_csv())
    per_site = per_site_metrics(best.out.targets, calibrated, val.items["site"].tolist())
    storage.atomic_write_text(files.per_site_csv, per_site.to_csv(index=False))
    info = read_run_json(run_dir)
    _write_plots(files, cm, info.get("best_epoch"))
    _write_calibration_plot(files, evaluated)
    info.update(
        calibration={name: e.calibration_report() for name, e in evaluated.items()},
        tta=_tta_effect(best, val),
        per_site=per_site.to_dict("records"),
    )
    write_run_json(run_dir, info)
    report = info["calibration"]["best"]
    metrics = {
        "loss": best.out.loss,
        **summary_metrics(best.out.targets, best.out.probs, k=3),
        "calibrated_log_loss": report["log_loss_after"],
        "ece": report["ece_before"],
        "calibrated_ece": report["ece_after"],
        "temperature": best.temperature,
    }
    log.info("best model on val: %s", "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    per_class = per_class_metrics(best.out.targets, preds, val.classes)
    log.info("per class (val):\n%s", per_class.to_string())
    log.info("per site (val):\n%s", per_site.to_string(index=False))
    return metrics


def _write_predictions(files: RunFiles, val: _ValSplit, probs: np.ndarray) -> None:
    predictions = pd.DataFrame(probs, columns=val.classes)
    predictions.insert(0, "label", val.items["label"])
    predictions.insert(0, "id", val.items["id"])
    storage.atomic_write_text(files.predictions_csv, predictions.to_csv(index=False))


def _write_calibration_plot(files: RunFiles, evaluated: dict[str, _Evaluated]) -> None:
    panels = {}
    for name, e in evaluated.items():
        targets = e.out.targets
        panels[f"{name} (epoch {e.meta.epoch})"] = {
            "before (T = 1)": reliability_table(e.out.probs, targets),
            f"after (T = {e.temperature:.3g})": reliability_table(e.calibrated, targets),
        }
    figure = calibration_figure(panels)
    storage.atomic_write_bytes(files.plots / "calibration.png", figure_to_png_bytes(figure))


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
        storage.atomic_write_bytes(files.plots / name, figure_to_png_bytes(figure))


def record_training(run_dir: Path, result: FitResult) -> None:
    """Note the best epochs in run.json (plots and summaries read them from there)."""
    info = read_run_json(run_dir)
    info.update(
        best_epoch=result.best_epoch,
        best_value=result.best_value,
        best_logloss_epoch=result.best_logloss_epoch,
        best_logloss_value=result.best_logloss_value,
    )
    write_run_json(run_dir, info)


GIT_COMMIT_ENV = "CAMTRAP_GIT_COMMIT"  # set by the Dockerfile: an image has no .git


def _git_commit() -> str | None:
    """The code's commit for run.json: its checkout's HEAD, else $CAMTRAP_GIT_COMMIT."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        recorded = os.environ.get(GIT_COMMIT_ENV, "").strip()
        return recorded if recorded not in ("", "unknown") else None


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
                "sha256": storage.file_sha256(p),
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
    config = resolve_init_from(config)  # the model file itself names the run (and fails fast)
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
        info = finalize(run_dir, val=val)
        runfolder.write_latest(run_dir, info)  # only now: the run finished in full
    return RunSummary(run_id, run_dir, "completed", result.best_epoch, val)
