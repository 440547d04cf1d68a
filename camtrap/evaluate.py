"""The evaluate stage: each best model of a run on its val split, after training.

    val split (the image cache at image_size, each model file's mean/std) -> each best model's
    raw probabilities (one pass per distinct epoch) -> a temperature fitted to each and stored
    in its file (camtrap.calibration, camtrap.modelfile) -> the best model's calibrated
    predictions/val.csv, metrics/confusion_matrix.csv, metrics/per_site.csv, the TTA effect
    -> metrics/events.csv (data with events: per event, each rule) -> plots -> run.json:
    calibration, tta, per_site, events

Evaluation and prediction share the preprocessing, which is why `camtrap predict` on the val
photos reproduces predictions/val.csv."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from camtrap import events
from camtrap.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
)
from camtrap.config import RunConfig
from camtrap.device import Precision, precision_for, resolve_device
from camtrap.engine import EpochOutputs, infer
from camtrap.imagecache import Pack
from camtrap.loader import CachedBatches, DeviceNormalize, make_loader
from camtrap.metrics import (
    accuracy,
    confusion_matrix,
    log_loss,
    per_class_metrics,
    per_site_metrics,
    summary_metrics,
)
from camtrap.modelfile import ModelMeta, store_temperature
from camtrap.models import MirrorAverage, load_model
from camtrap.plots import (
    calibration_figure,
    class_metric_figure,
    confusion_matrix_figure,
    curves_figure,
    figure_to_png_bytes,
)
from camtrap.runfolder import RunFiles, read_run_json, write_run_json
from camtrap.samples import image_outputs
from camtrap.storage.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger("camtrap")


@dataclass
class _ValSplit:
    """The val split, ready for model files to run on."""

    items: pd.DataFrame  # split.csv's val rows (images), in order: id, filepath, site, label, ...
    image: np.ndarray  # the image of each sample the loader yields (camtrap.samples)
    classes: list[str]
    loader: DataLoader
    device: torch.device
    precision: Precision


def _val_split(config: RunConfig, items: pd.DataFrame, classes: list[str], pack: Pack) -> _ValSplit:
    val = items[items["split"] == "val"].reset_index(drop=True)  # samples
    images = val.drop_duplicates("image").reset_index(drop=True)
    device = resolve_device(config.train.device)
    dataset = CachedBatches(pack, val["row"].tolist(), val["label_idx"].tolist())
    loader = make_loader(
        dataset, config.train.eval_batch(), num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    precision = precision_for(device, config.train.amp, config.train.amp_dtype)
    return _ValSplit(images, val["image"].to_numpy(), classes, loader, device, precision)


def _run_on_val(model: torch.nn.Module, meta: ModelMeta, val: _ValSplit) -> EpochOutputs:
    """A model's raw (uncalibrated) probabilities on val, per image: evaluation preprocessing,
    the file's mean and std."""
    to_input = DeviceNormalize(meta.mean, meta.std, val.device)
    return image_outputs(infer(model, val.loader, to_input, val.precision), val.image, val.classes)


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


def evaluate_on_val(
    config: RunConfig, run_dir: Path, items: pd.DataFrame, classes: list[str], pack: Pack
) -> dict[str, float]:
    """Each best model on val: a temperature fitted and stored in its file, calibration before
    and after (run.json `calibration`, plots/calibration.png). The best model (train.best_metric)
    also gives predictions/val.csv (calibrated probabilities, as `camtrap predict` returns),
    metrics/confusion_matrix.csv, metrics/per_site.csv, the TTA effect (run.json `tta`) and the
    plots. `items`: split.csv's samples with their rows in `pack` and class index
    (camtrap.stages.split_items); every figure is per image. Returns the best model's val
    metrics, calibrated log loss and ECE included."""
    run_dir = Path(run_dir)
    files = RunFiles.for_config(run_dir, config)
    val = _val_split(config, items, classes, pack)
    evaluated = _evaluate_and_calibrate(_best_models(files), val)
    best = evaluated["best"]
    calibrated = best.calibrated
    _write_predictions(files, val, calibrated)
    preds = best.out.probs.argmax(axis=1)  # the same classes as the calibrated argmax
    cm = confusion_matrix(best.out.targets, preds, val.classes)
    atomic_write_text(files.confusion_csv, cm.to_csv())
    per_site = per_site_metrics(best.out.targets, calibrated, val.items["site"].tolist())
    atomic_write_text(files.per_site_csv, per_site.to_csv(index=False))
    info = read_run_json(run_dir)
    gap_s = config.predict.event_gap_s
    if events.has_events(val.items, gap_s):
        per_event = events.event_metrics(val.items, best.out.targets, calibrated, val.classes,
                                         gap_s)  # fmt: skip
        atomic_write_text(files.events_csv, per_event.to_csv(index=False))
        info["events"] = per_event.to_dict("records")
        log.info("per event (val):\n%s", per_event.to_string(index=False))
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
    atomic_write_text(files.predictions_csv, predictions.to_csv(index=False))


def _write_calibration_plot(files: RunFiles, evaluated: dict[str, _Evaluated]) -> None:
    panels = {}
    for name, e in evaluated.items():
        targets = e.out.targets
        panels[f"{name} (epoch {e.meta.epoch})"] = {
            "before (T = 1)": reliability_table(e.out.probs, targets),
            f"after (T = {e.temperature:.3g})": reliability_table(e.calibrated, targets),
        }
    figure = calibration_figure(panels)
    atomic_write_bytes(files.plot("calibration"), figure_to_png_bytes(figure))


def _write_plots(files: RunFiles, cm: pd.DataFrame, best_epoch: int | None) -> None:
    epochs = pd.read_csv(files.epochs_csv)
    per_class = pd.read_csv(files.per_class_csv, keep_default_na=False)
    figures = {
        "class_precision": class_metric_figure(per_class, "precision"),
        "class_recalls": class_metric_figure(per_class, "recall"),
        "class_f1": class_metric_figure(per_class, "f1"),
        "curves": curves_figure(epochs, best_epoch=best_epoch),
        "confusion_matrix": confusion_matrix_figure(cm),
    }
    for name, figure in figures.items():
        atomic_write_bytes(files.plot(name), figure_to_png_bytes(figure))
