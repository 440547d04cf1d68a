"""The stages of one training run, each reading and writing one local run folder:

    validate (images decoded into the cache as they are checked) -> prepare (split.csv, run.json)
    -> cache_images (the dataset's uint8 pack) -> train (epochs, resume; several processes with
    train.nproc > 1) -> evaluate (camtrap.evaluate: best models on val) -> finalize (run.json
    with every file's sha256)

`run_all` chains them for the CLI; the Prefect tasks call the stages one by one."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torchvision

from camtrap import __version__, imagecache, latest, lease, ranks, runfolder, samples
from camtrap.config import RunConfig
from camtrap.dataset import ImageLimits, LabelledData, load_data
from camtrap.dataset.contract import image_path
from camtrap.dataset.detections import BOXES_COLUMN, CROP_COLUMNS
from camtrap.device import log_memory, resolve_device
from camtrap.errors import StorageError
from camtrap.evaluate import evaluate_on_val
from camtrap.fit import EpochRecord, FitResult, fit
from camtrap.launch import launch
from camtrap.models import resolve_init_from
from camtrap.ranks import Group
from camtrap.runfolder import RunFiles, read_run_json, utc_now, write_run_json
from camtrap.split import split_frame
from camtrap.storage.files import atomic_write_text, file_sha256

log = logging.getLogger("camtrap")

OnEpochEnd = Callable[[EpochRecord], None]


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path
    status: str  # "completed" (trained now) or "up-to-date" (a finished run was found)
    best_epoch: int
    val: dict[str, float]  # the best model's metrics on the val split


@dataclass(frozen=True)
class TrainJob:
    """One training of a run: what `train` needs, and what crosses into each training process
    when there are several (camtrap.launch pickles it)."""

    config: RunConfig
    data_root: Path  # the dataset's local root
    run_dir: Path  # the local run folder
    cache_root: Path | None = None  # the image cache's store root (None: $CAMTRAP_CACHE_DIR)


def validate(config: RunConfig, data_root: Path, cache_root: Path | None = None) -> LabelledData:
    """The dataset, checked (DataError with every problem); each image not in the image cache is
    decoded once here and its pixels kept for `cache_images`, even when other images fail."""
    decoder = imagecache.Decoder(config.data.image_size, _store(config, cache_root))
    try:
        limits = ImageLimits(config.data.max_image_bytes, config.data.max_image_pixels)
        return load_data(data_root, config.data, check=decoder, limits=limits)
    finally:
        decoder.commit()


def _store(config: RunConfig, cache_root: Path | None) -> Path:
    return imagecache.store_dir(config.data.image_size, cache_root)


def cache_images(
    config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None = None
) -> imagecache.BuildReport:
    """The run's images as one uint8 pack, in split.csv order: reused if intact, else built from
    the rows the cache holds, decoding only images it has not seen."""
    entries = cache_entries(run_dir, data_root, margin=config.data.crop_margin)
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
    entries = cache_entries(run_dir, data_root, split="train", margin=config.data.crop_margin)
    return imagecache.ensure_pack(entries, size, imagecache.store_dir(size, cache_root))


def cache_entries(
    run_dir: Path, data_root: Path, split: str | None = None, margin: float = 0.0
) -> list[imagecache.CacheEntry]:
    """The run's samples (split.csv order; only `split`'s if given; camtrap.samples: an image,
    or each of its boxes): id, file under `data_root`, sha256, and the crop with `margin`."""
    items = _read_split(run_dir)
    if split is not None:
        items = items[items["split"] == split]
    found = samples.sample_table(items)
    paths = [image_path(Path(data_root), f) for f in found["filepath"]]
    return samples.cache_entries(found, paths, margin)


def _read_split(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / runfolder.SPLIT_CSV, dtype=str, keep_default_na=False)


def prepare(config: RunConfig, data: LabelledData, run_dir: Path) -> Path:
    """Split the validated data and start the run folder: split.csv and a `running` run.json."""
    run_dir = Path(run_dir)
    files = RunFiles.for_config(run_dir, config)
    frame = data.frame.copy()
    frame["split"] = split_frame(
        frame, config.data.split, config.data.val_fraction, config.data.split_seed
    )
    columns = ["id", "filepath", "site", "label", "split", "sha256"]
    # the formats with events (COCO seq_id, Camtrap DP eventID) or timestamps: val per event
    columns += [c for c in ("event", "timestamp") if c in frame and (frame[c] != "").any()]
    # data.crop: each image's box or boxes (camtrap.dataset.detections), what cache_entries crops
    columns += [c for c in (*CROP_COLUMNS, BOXES_COLUMN) if c in frame]
    atomic_write_text(files.split_csv, frame[columns].to_csv(index=False))
    info = read_run_json(run_dir) or {"started": utc_now()}
    info.update(
        run_id=run_dir.name,
        status="running",
        config=config.model_dump(mode="json"),
        classes=data.classes,
        data_fingerprint=data.fingerprint,
        counts={s: int((frame["split"] == s).sum()) for s in ("train", "val")},
    )
    if config.data.crop != "none":
        info["crops"] = crop_counts(frame[columns])
    write_run_json(run_dir, info)
    return files.split_csv


def crop_counts(items: pd.DataFrame) -> dict[str, Any]:
    """run.json `crops`: per split, the samples (boxes, and frames of images without one) and
    the images that keep their whole frame."""
    found = samples.sample_table(items)
    whole = found["box"].isna()
    return {
        s: {"samples": int((found["split"] == s).sum()),
            "whole_frames": int((whole & (found["split"] == s)).sum())}
        for s in ("train", "val")
    }  # fmt: skip


def split_items(run_dir: Path, pack: imagecache.Pack) -> tuple[pd.DataFrame, list[str]]:
    """split.csv as samples (camtrap.samples.sample_table: a row per image, or per box under
    data.crop=all), with the class index and the row in the image cache's `pack` of each."""
    classes = read_run_json(run_dir).get("classes")
    if not classes:
        raise StorageError(f"{run_dir}/run.json has no classes; run `prepare` first")
    items = samples.sample_table(_read_split(run_dir))
    items["row"] = items["sample"].map(pack.row_of()).astype(int)
    items["label_idx"] = items["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return items, classes


def train(job: TrainJob, on_epoch_end: OnEpochEnd | None = None) -> FitResult:
    """Train (or resume) the run in this process, or with train.nproc > 1 on that many
    (camtrap.launch: `on_epoch_end` still runs here)."""
    train_config = job.config.train
    nproc = ranks.world_size(train_config.nproc, train_config.device)
    if nproc == 1:
        return train_here(job, on_epoch_end)
    cache_images(job.config, job.run_dir, job.data_root, job.cache_root)  # before ranks read it
    log.info("training on %d processes: effective batch %d (train.batch_size %d per process)",
             nproc, nproc * train_config.batch_size, train_config.batch_size)  # fmt: skip
    return launch(train_here, job, nproc, train_config.device, on_epoch_end)


def train_here(
    job: TrainJob, on_epoch_end: OnEpochEnd | None = None, group: Group | None = None
) -> FitResult:
    """`train` in this process; `group`: its rank among several (the worker camtrap.launch
    runs in each training process)."""
    config, run_dir = job.config, Path(job.run_dir)
    device = resolve_device(config.train.device)
    log_memory("start", device)
    pack = cache_images(config, run_dir, job.data_root, job.cache_root).pack
    larger = cache_train_images(config, run_dir, job.data_root, job.cache_root)
    items, classes = split_items(run_dir, pack)
    log_memory("after CSV load", device)
    train_pack = larger.pack if larger is not None else None
    return fit(config, items, classes, run_dir, pack, on_epoch_end, train_pack, group)


def record_training(run_dir: Path, result: FitResult) -> None:
    """Note the best epochs and the class balance in run.json (plots and summaries read them
    from there)."""
    info = read_run_json(run_dir)
    info.update(
        best_epoch=result.best_epoch,
        best_value=result.best_value,
        best_logloss_epoch=result.best_logloss_epoch,
        best_logloss_value=result.best_logloss_value,
    )
    if result.balance:
        info["balance"] = result.balance
    write_run_json(run_dir, info)


def evaluate(
    config: RunConfig, run_dir: Path, data_root: Path, cache_root: Path | None = None
) -> dict[str, float]:
    """The evaluate stage (camtrap.evaluate) on the run's val split; returns the best model's
    val metrics (calibrated log loss and ECE included)."""
    pack = cache_images(config, run_dir, data_root, cache_root).pack
    items, classes = split_items(run_dir, pack)
    return evaluate_on_val(config, Path(run_dir), items, classes, pack)


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
        finished=utc_now(),
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
                "sha256": file_sha256(p),
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
    run_id = runfolder.resolve_run_id(config, data.fingerprint, run_id, force)
    stage = config.output.stage
    run_dir = Path(runfolder.run_location(output_root, stage, run_id))
    with lease.leased(lease.lease_location(output_root, stage, run_id)) as held:
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
        job = TrainJob(config, data.root, run_dir)
        result = train(job, on_epoch_end=lambda _: held.check())
        record_training(run_dir, result)
        val = evaluate(config, run_dir, data.root)
        info = finalize(run_dir, val=val)
        latest.write_latest(run_dir, info)  # only now: the run finished in full
    return RunSummary(run_id, run_dir, "completed", result.best_epoch, val)
