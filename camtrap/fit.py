"""The epoch loop: train, evaluate, keep the best and final models, write resume state each epoch.

Rerunning on the same run folder continues after the last completed epoch and, on CPU, ends with the
same numbers as an uninterrupted run: the shuffle order is derived from (seed, epoch), and the RNG
streams, optimizer and scaler states travel in state/last.pt."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from camtrap import checkpoint, distributed, runfolder, storage
from camtrap.augment import TrainAugment
from camtrap.calibration import CALIBRATED_FROM
from camtrap.config import RunConfig
from camtrap.data import CachedBatches, DeviceNormalize, EpochShuffle, make_loader
from camtrap.distributed import Group
from camtrap.engine import (
    EpochOutputs,
    log_memory,
    make_scaler,
    precision_for,
    predict,
    release_memory,
    train_one_epoch,
)
from camtrap.errors import ConfigError, StorageError, TrainingDiverged
from camtrap.imagecache import Pack
from camtrap.metrics import per_class_metrics, summary_metrics
from camtrap.models import ModelMeta, build_model, model_file_dict, warm_start
from camtrap.runfolder import RunFiles
from camtrap.schedule import make_schedule

log = logging.getLogger("camtrap")

LOWER_IS_BETTER = {"val_loss", "val_log_loss"}
METRICS = ("accuracy", "loss", "log_loss", "top3_accuracy")  # epochs.csv, in this order
STEP_COUNTS = ("skipped_steps", "nonfinite_steps")  # train steps not applied (epochs.csv)


@dataclass
class EpochRecord:
    """What one finished epoch reports to `on_epoch_end` (progress, Prefect artifacts, sync),
    once its files are written."""

    epoch: int  # 1-based
    epochs: int
    train: dict[str, float]
    val: dict[str, float]
    per_class: pd.DataFrame  # this epoch's rows: split, class, precision, recall, f1, support
    is_best: bool
    best_epoch: int
    seconds: float
    memory: dict[str, float]
    files: RunFiles


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    epochs_run: int  # epochs trained by this call (0 when the run had already finished)
    resumed_from: int  # last completed epoch found in state/last.pt (0: fresh start)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_logloss_epoch: int = 0  # the epoch with the lowest val log loss
    best_logloss_value: float = float("nan")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def _epoch_metrics(out: EpochOutputs) -> dict[str, float]:
    summary = summary_metrics(out.targets, out.probs, k=3)
    # The column order of metrics/epochs.csv: accuracy, loss, log_loss, top3_accuracy.
    return {
        "accuracy": summary["accuracy"],
        "loss": out.loss,
        "log_loss": summary["log_loss"],
        "top3_accuracy": summary["top3_accuracy"],
    }


def _per_class_rows(epoch: int, split: str, out: EpochOutputs, classes: list[str]) -> pd.DataFrame:
    frame = per_class_metrics(out.targets, out.probs.argmax(axis=1), classes)
    frame.insert(0, "split", split)
    frame.insert(0, "epoch", epoch)
    return frame


class _Trainer:
    """Holds the objects of one fit so the loop below reads like the seed's."""

    def __init__(
        self,
        config: RunConfig,
        items: pd.DataFrame,
        classes: list[str],
        run_dir: Path,
        pack: Pack,
        train_pack: Pack | None = None,
        group: Group | None = None,
    ):
        self.config = config
        self.classes = classes
        # Several training processes (camtrap.distributed): rank 0 alone evaluates and writes.
        self.group = group
        self.is_main = group is None or group.is_main
        self.seed = config.train.seed if group is None else distributed.rank_seed(
            config.train.seed, group.rank
        )  # fmt: skip
        self.files = RunFiles.for_config(run_dir, config)
        self.device = resolve_device(config.train.device)
        self.precision = precision_for(self.device, config.train.amp, config.train.amp_dtype)
        self.progress = self.is_main and (
            sys.stderr.isatty() if config.train.progress is None else config.train.progress
        )
        self.to_input = DeviceNormalize(config.data.mean, config.data.std, self.device)
        self.train_loader, self.val_loader = self._loaders(items, pack, train_pack)
        self.augment = self._augment()
        log_memory("after datasets", self.device)
        self.model = self._model()
        self.forward_model = self._forward_model()
        # Rank 0 evaluates alone: with the model itself (DDP's forward would wait for the others).
        self.eval_model = self.forward_model if group is None else self.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
        )
        # None with a constant rate (part1): the optimizer's lr is then never touched.
        self.schedule = make_schedule(self.optimizer, config.train, len(self.train_loader))
        self.scaler = make_scaler(self.precision)
        self.writer = checkpoint.BackgroundWriter()
        self.history: list[dict[str, Any]] = []
        self.per_class: list[dict[str, Any]] = []
        self.best_epoch = 0
        self.best_value: float | None = None
        self.best_sha256: str | None = None  # of the best model file, kept in the state
        # The second best model, by val log loss whatever train.best_metric is (the competition
        # and any triage of new photos are scored by log loss).
        self.best_logloss_epoch = 0
        self.best_logloss_value: float | None = None
        self.best_logloss_sha256: str | None = None
        self.completed = 0

    def _loaders(self, items: pd.DataFrame, pack: Pack, train_pack: Pack | None = None):
        """The train loader (a new order each epoch; from `train_pack`, the larger images that
        augmentation crops, when given) and the val loader (stored order, larger batches: no
        gradients to keep). Built once; their workers live across epochs."""
        cfg = self.config
        sets = {}
        for split in ("train", "val"):
            rows = items[items["split"] == split]
            if rows.empty:
                raise ConfigError(f"the {split} split is empty; check data.val_fraction")
            source = train_pack if split == "train" and train_pack is not None else pack
            where = rows["row"] if source is pack else rows["id"].map(source.row_of())
            sets[split] = CachedBatches(source, where.tolist(), rows["label_idx"].tolist())
        n = len(sets["train"])
        self.shuffle = (EpochShuffle(n, cfg.train.seed) if self.group is None
                        else distributed.shard_sampler(n, cfg.train.seed, self.group))  # fmt: skip
        options = {"num_workers": cfg.data.num_workers, "pin_memory": self.device.type == "cuda"}
        train = make_loader(sets["train"], cfg.train.batch_size, order=self.shuffle, **options)
        val = make_loader(sets["val"], cfg.train.eval_batch(), **options)
        return train, val

    def _augment(self) -> TrainAugment | None:
        cfg = self.config
        if not cfg.augment.enabled:
            return None
        return TrainAugment(cfg.augment, cfg.data.image_size, cfg.data.mean, cfg.data.std,
                            self.device, self.seed)  # fmt: skip

    def warm_start(self) -> None:
        """A fresh run starts from model.init_from's weights (a resumed one from its state)."""
        if self.config.model.init_from is not None:
            warm_start(self.model, self.config.model.init_from, self.config.model.arch,
                       self.classes)  # fmt: skip

    def _model(self) -> nn.Module:
        cfg = self.config.model
        model = build_model(
            cfg.arch, len(self.classes), cfg.weights, cfg.drop_path, self.config.data.image_size
        )
        log_memory("before model to GPU", self.device)
        if self.device.type == "cuda":
            model = model.to(self.device, memory_format=torch.channels_last)
        log_memory("after model to GPU", self.device)
        return model

    def _forward_model(self) -> nn.Module:
        """The model training steps run: DDP-wrapped on several processes (gradients averaged
        across ranks; its construction copies rank 0's weights to all), compiled if asked."""
        model = self.model
        if self.group is not None:
            on_gpu = self.device.type == "cuda"  # this rank's GPU: torch.cuda.set_device's
            ids = [torch.cuda.current_device()] if on_gpu else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.config.train.compile else model

    # --- resume state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resume state, copied: training goes on while it is written."""
        return checkpoint.cpu_copy({
            "epoch": self.completed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "history": list(self.history),
            "per_class": list(self.per_class),
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "best_sha256": self.best_sha256,
            "best_logloss_epoch": self.best_logloss_epoch,
            "best_logloss_value": self.best_logloss_value,
            "best_logloss_sha256": self.best_logloss_sha256,
            "classes": self.classes,
            "config": self.config.model_dump(mode="json"),
        })  # fmt: skip

    def resume_if_possible(self) -> None:
        """Continue after the last epoch in state/last.pt, the commit point: the files an epoch
        writes after it (best model, metrics CSVs) are brought back in line with it first."""
        # A kill -9 during an atomic write leaves only a temp file behind; the real file is intact.
        for partial in self.files.root.rglob(".*.tmp") if self.is_main else ():
            partial.unlink(missing_ok=True)
        if not self.files.state.exists():
            return
        state = checkpoint.load_torch(self.files.state)
        self._refuse_changes(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:  # after the optimizer: it sets the groups' lr
            self.schedule.load_state_dict(state["schedule"])
        checkpoint.load_scaler_state(self.scaler, state["scaler"])
        checkpoint.restore_rng_state(state["rng"])
        self.history, self.per_class = state["history"], state["per_class"]
        self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]
        self.best_sha256 = state.get("best_sha256")
        self.completed = state["epoch"]
        if not self.is_main:  # writes nothing; its RNG stream is not saved (rank 0's is)
            torch.manual_seed(distributed.rank_seed(self.config.train.seed, self.group.rank,
                                                    self.completed))  # fmt: skip
            return
        self._settle_best_model(state)
        self._restore_best_logloss(state)
        self._write_metrics(pd.DataFrame(self.history), pd.DataFrame(self.per_class))
        log.info("resuming %s after epoch %d", self.files.root, self.completed)

    def _refuse_changes(self, state: dict[str, Any]) -> None:
        if state["classes"] != self.classes:
            raise ConfigError(
                f"{self.files.state} was trained on classes {state['classes']}, not "
                f"{self.classes}; use a new output folder or --run-id"
            )
        runfolder.refuse_changes(state["config"], self.config.model_dump(mode="json"),
                                 self.files.root)  # fmt: skip
        if state["epoch"] > self.config.train.epochs:
            raise ConfigError(
                f"{self.files.root} has {state['epoch']} epochs done, more than train.epochs="
                f"{self.config.train.epochs} — fix: set train.epochs to {state['epoch']} or more"
            )

    def _settle_best_model(self, state: dict[str, Any]) -> None:
        """Make the best model file the one the state names. The state is written before the
        best model: a kill between them leaves the previous best file, while the state's own
        weights are the new best's (best_epoch == epoch), so the file is rebuilt from them."""
        self.best_sha256 = self._settle(self.files.best_model, self.best_epoch, self.best_sha256)

    def _settle(self, path: Path, epoch: int, sha256: str | None) -> str | None:
        """`path` made the model file of `epoch` whose sha256 the state recorded (rebuilt from
        the state's weights when that epoch is the last one); returns the sha256 to record."""
        if sha256 is None or _is_recorded_file(path, sha256):
            return sha256
        if epoch != self.completed:
            raise StorageError(
                f"{path} is not the best model state/last.pt names (epoch {epoch}) "
                "and that epoch's weights are gone — fix: delete the run folder (or use a new "
                "--run-id) to train it again"
            )
        log.info("rebuilding %s from state/last.pt (epoch %d)", path.name, epoch)
        return checkpoint.save_torch(self.model_file(epoch, self._val_metrics(epoch)), path)

    def _restore_best_logloss(self, state: dict[str, Any]) -> None:
        if "best_logloss_epoch" not in state:
            self._seed_best_logloss()
            return
        self.best_logloss_epoch = state["best_logloss_epoch"]
        self.best_logloss_value = state["best_logloss_value"]
        path, sha256 = self.files.best_logloss_model, state["best_logloss_sha256"]
        self.best_logloss_sha256 = self._settle(path, self.best_logloss_epoch, sha256)

    def _seed_best_logloss(self) -> None:
        """A state written before the log-loss best model existed: that best is the history's
        lowest val log loss (the first of equal ones). Its weights survive if it is the state's
        own epoch or the best model's; otherwise its file appears once a later epoch beats it."""
        val = [row for row in self.history if row["split"] == "val"]
        if not val:
            return
        row = min(val, key=lambda r: r["log_loss"])
        epoch, path = int(row["epoch"]), self.files.best_logloss_model
        self.best_logloss_epoch, self.best_logloss_value = epoch, float(row["log_loss"])
        if path.exists():  # seeded by an earlier resume of this state
            self.best_logloss_sha256 = storage.file_sha256(path)
        elif epoch == self.completed:
            best = self.model_file(epoch, self._val_metrics(epoch))
            self.best_logloss_sha256 = checkpoint.save_torch(best, path)
        elif epoch == self.best_epoch and self.files.best_model.exists():
            data = self.files.best_model.read_bytes()
            storage.atomic_write_bytes(path, data)
            self.best_logloss_sha256 = hashlib.sha256(data).hexdigest()
        else:
            log.warning(
                "%s: epoch %d has the lowest val log loss but its weights are gone; no %s "
                "until a later epoch beats it", self.files.root, epoch, path.name,
            )  # fmt: skip

    def _val_metrics(self, epoch: int) -> dict[str, float]:
        return val_metrics(
            next(r for r in self.history if r["epoch"] == epoch and r["split"] == "val")
        )

    # --- outputs -----------------------------------------------------------------------------
    def model_file(
        self, epoch: int, metrics: dict[str, float], weights: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A model file's dict; `weights` (a snapshot of the state_dict) instead of the live
        ones when it is written while training goes on."""
        cfg = self.config
        meta = ModelMeta(
            arch=cfg.model.arch,
            classes=self.classes,
            image_size=cfg.data.image_size,
            mean=list(cfg.data.mean),
            std=list(cfg.data.std),
            epoch=epoch,
            metrics=metrics,
            config=cfg.model_dump(mode="json"),
        )
        file = model_file_dict(self.model, meta)
        return file if weights is None else {**file, "model": weights}

    # --- one epoch -----------------------------------------------------------------------------
    def run_epoch(self, epoch: int, on_epoch_end: Callable[[EpochRecord], None] | None) -> None:
        started = time.perf_counter()
        epochs = self.config.train.epochs
        log_memory(f"epoch {epoch} start", self.device)
        self.shuffle.set_epoch(epoch)
        train_out = train_one_epoch(
            self.forward_model, self.train_loader, self.optimizer, self.scaler, self.to_input,
            self.precision, self.progress, desc=f"epoch {epoch}/{epochs} train", epoch=epoch,
            augment=self.augment.for_epoch(epoch) if self.augment is not None else None,
            label_smoothing=self.config.train.label_smoothing,
            after_step=self.schedule.step if self.schedule is not None else None,
        )  # fmt: skip
        if self.group is not None:
            train_out = distributed.gather_outputs(train_out, self.group)
            if not self.is_main:  # rank 0 evaluates and writes the epoch meanwhile
                self.completed = epoch
                distributed.barrier()
                return
        val_out = predict(
            self.eval_model, self.val_loader, self.to_input, self.precision, self.progress,
            desc=f"epoch {epoch}/{epochs} val",
        )  # fmt: skip
        if not (_finite(train_out.loss) and _finite(val_out.loss)):  # before the metrics raise
            raise TrainingDiverged(
                f"the loss is not finite at epoch {epoch} (train {train_out.loss}, val "
                f"{val_out.loss}); the last good state is the previous epoch's — fix: lower "
                f"train.lr (now {self.config.train.lr}), or with train.amp use "
                "train.amp_dtype=bfloat16"
            )
        train_m, val_m = _epoch_metrics(train_out), _epoch_metrics(val_out)
        counts = {name: getattr(train_out, name) for name in STEP_COUNTS}
        per_class = pd.concat(
            [_per_class_rows(epoch, "train", train_out, self.classes),
             _per_class_rows(epoch, "val", val_out, self.classes)],
            ignore_index=True,
        )  # fmt: skip
        is_best = self._record(epoch, train_m, val_m, per_class, counts)
        self.completed = epoch
        release_memory(self.device)
        memory = log_memory(f"epoch {epoch} end", self.device)
        seconds = time.perf_counter() - started
        log.info(_epoch_line(epoch, epochs, train_m, val_m, seconds, is_best, counts))
        record = EpochRecord(
            epoch, epochs, train_m, val_m, per_class, is_best, self.best_epoch, seconds, memory,
            self.files,
        )  # fmt: skip
        self.save_in_background(record, on_epoch_end)
        if self.group is not None:
            distributed.barrier()

    def save_in_background(
        self, record: EpochRecord, on_epoch_end: Callable[[EpochRecord], None] | None
    ) -> None:
        """Snapshot the epoch's state now; write it and run `on_epoch_end` (uploads, artifacts)
        while the next epoch trains. The state is written first: it is the commit point, and
        it names the best model files it goes with (epoch and sha256)."""
        best_bytes, best_paths = None, []
        state = self.state_dict()  # one copy of the weights serves the best model files too
        is_best_logloss = record.epoch == self.best_logloss_epoch
        if record.is_best or is_best_logloss:  # both bests of one epoch: the same file
            best = self.model_file(record.epoch, _prefixed(record.val), state["model"])
            best_bytes = checkpoint.torch_bytes(best)
            sha256 = hashlib.sha256(best_bytes).hexdigest()
        if record.is_best:
            self.best_sha256 = state["best_sha256"] = sha256
            best_paths.append(self.files.best_model)
        if is_best_logloss:
            self.best_logloss_sha256 = state["best_logloss_sha256"] = sha256
            best_paths.append(self.files.best_logloss_model)
        history, per_class = pd.DataFrame(self.history), pd.DataFrame(self.per_class)

        def write() -> None:
            state_bytes = checkpoint.torch_bytes(state)
            storage.atomic_write_bytes(self.files.state, state_bytes)
            runfolder.write_state_info(self.files.root, record.epoch, len(state_bytes))
            for path in best_paths:
                storage.atomic_write_bytes(path, best_bytes)
            self._write_metrics(history, per_class)
            if on_epoch_end is not None:
                on_epoch_end(record)

        self.writer.submit(write)

    def _write_metrics(self, history: pd.DataFrame, per_class: pd.DataFrame) -> None:
        if history.empty:
            return
        storage.atomic_write_text(self.files.epochs_csv, history.to_csv(index=False))
        storage.atomic_write_text(self.files.per_class_csv, per_class.to_csv(index=False))

    def _record(self, epoch, train_m, val_m, per_class: pd.DataFrame, counts) -> bool:
        no_steps = dict.fromkeys(STEP_COUNTS, 0)  # evaluation takes no optimizer steps
        for split, metrics, steps in (("train", train_m, counts), ("val", val_m, no_steps)):
            self.history.append({"epoch": epoch, "split": split, **_as_floats(metrics), **steps})
        self.per_class.extend(per_class.to_dict("records"))
        if _is_better("val_log_loss", val_m["log_loss"], self.best_logloss_value):
            self.best_logloss_epoch, self.best_logloss_value = epoch, float(val_m["log_loss"])
        metric = self.config.train.best_metric
        value = val_m[metric.removeprefix("val_")]
        if not _is_better(metric, value, self.best_value):
            return False
        self.best_epoch, self.best_value = epoch, float(value)
        return True


def _is_recorded_file(path: Path, sha256: str) -> bool:
    """Whether `path` is the model file whose sha256 the state recorded: that very file, or
    that file after calibration, which rewrote it with a temperature and kept the recorded
    sha256 in CALIBRATED_FROM (same weights, same epoch; camtrap.pipeline.evaluate)."""
    if not path.exists():
        return False
    if storage.file_sha256(path) == sha256:
        return True
    try:
        blob = checkpoint.load_torch(path)
    except StorageError:  # not a model file at all
        return False
    return isinstance(blob, dict) and blob.get(CALIBRATED_FROM) == sha256


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _prefixed(val: dict[str, float]) -> dict[str, float]:
    return {f"val_{k}": float(v) for k, v in val.items()}


def _as_floats(metrics: dict[str, float]) -> dict[str, float]:
    # Full float precision in the CSVs, so metrics recomputed from predictions match exactly.
    return {k: float(v) for k, v in metrics.items()}


def _epoch_line(epoch, epochs, train_m, val_m, seconds, is_best, counts) -> str:
    skipped = "".join(f" | {n} {name.replace('_', ' ')}" for name, n in counts.items() if n)
    return (
        f"Epoch {epoch}/{epochs} | train loss {train_m['loss']:.4f} acc {train_m['accuracy']:.4f} "
        f"top3 {train_m['top3_accuracy']:.4f} | val loss {val_m['loss']:.4f} "
        f"acc {val_m['accuracy']:.4f} log_loss {val_m['log_loss']:.4f} "
        f"top3 {val_m['top3_accuracy']:.4f} | {seconds:.1f}s{skipped}"
        + (" | best" if is_best else "")
    )


def val_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A history row's metrics as a model file stores them: val_accuracy, val_loss, ..."""
    return {f"val_{k}": float(row[k]) for k in METRICS if k in row}


def fit(
    config: RunConfig,
    items: pd.DataFrame,
    classes: list[str],
    run_dir: Path,
    pack: Pack,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    train_pack: Pack | None = None,
    group: Group | None = None,
) -> FitResult:
    """Train `config` on `items` (columns row: the image's row in `pack`, label_idx, split) into
    `run_dir`, resuming if a previous attempt left state/last.pt there. `on_epoch_end` runs on
    a background thread once the epoch's files are written. `train_pack`: the train images at
    data.train_cache_size (augmentation; rows found by the items' `id`). `group`: this
    process's rank when several train (camtrap.distributed; rank 0 alone writes)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # The global RNG (weight init, dropout, stochastic depth) is seeded here, at the edge, and
    # restored afterwards so callers' randomness is untouched.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(distributed.rank_seed(config.train.seed, group.rank if group else 0))
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
        trainer = _Trainer(config, items, classes, Path(run_dir), pack, train_pack, group)
        trainer.resume_if_possible()
        resumed_from = trainer.completed
        if resumed_from == 0:
            trainer.warm_start()
        try:
            for epoch in range(trainer.completed + 1, config.train.epochs + 1):
                trainer.run_epoch(epoch, on_epoch_end)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                trainer.writer.wait()
            raise
        trainer.writer.wait()  # the last epoch's files, before anything else reads them
        final_missing = resumed_from < config.train.epochs or not trainer.files.final_model.exists()
        if trainer.is_main and final_missing:
            final_metrics = val_metrics(trainer.history[-1] if trainer.history else {})
            checkpoint.save_torch(
                trainer.model_file(trainer.completed, final_metrics), trainer.files.final_model
            )
    return FitResult(
        best_epoch=trainer.best_epoch,
        best_value=float(trainer.best_value) if trainer.best_value is not None else float("nan"),
        epochs_run=config.train.epochs - resumed_from,
        resumed_from=resumed_from,
        history=trainer.history,
        best_logloss_epoch=trainer.best_logloss_epoch,
        best_logloss_value=_or_nan(trainer.best_logloss_value),
    )


def _or_nan(value: float | None) -> float:
    return float(value) if value is not None else float("nan")
