"""The epoch loop: train, evaluate, keep the best and final models, write resume state each epoch.

Rerunning on the same run folder continues after the last completed epoch and, on CPU, ends with the
same numbers as an uninterrupted run: the shuffle order is derived from (seed, epoch), and the RNG
streams, optimizer and scaler states travel in state/last.pt (camtrap.checkpoints)."""

from __future__ import annotations

import contextlib
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

from camtrap import ranks, runfolder
from camtrap.augment import TrainAugment
from camtrap.balance import BalancedSampler, class_counts, class_weights
from camtrap.checkpoints import (
    STEP_COUNTS,
    Checkpoints,
    cpu_copy,
    load_scaler_state,
    restore_rng_state,
    rng_state,
    val_metrics,
)
from camtrap.config import RunConfig
from camtrap.device import log_memory, make_scaler, precision_for, release_memory, resolve_device
from camtrap.engine import EpochOutputs, infer, train_one_epoch
from camtrap.errors import ConfigError, TrainingDiverged
from camtrap.imagecache import Pack
from camtrap.loader import CachedBatches, DeviceNormalize, EpochShuffle, make_loader
from camtrap.metrics import per_class_metrics, summary_metrics
from camtrap.modelfile import ModelMeta, model_file_dict
from camtrap.models import build_model, warm_start
from camtrap.ranks import Group
from camtrap.runfolder import RunFiles
from camtrap.samples import image_outputs
from camtrap.schedule import make_schedule
from camtrap.torchfile import load_torch

log = logging.getLogger("camtrap")


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
    # train.class_weights, data.sampler, the train split's class counts and the weights used
    balance: dict[str, Any] = field(default_factory=dict)


class _Trainer:
    """The objects of one fit, set up once, so that `run_epoch` reads like the seed's loop."""

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
        cfg = self.config = config
        self.classes = classes
        # Several training processes (camtrap.launch): rank 0 alone evaluates and writes.
        self.group = group
        self.is_main = group is None or group.is_main
        self.seed = ranks.rank_seed(cfg.train.seed, group.rank) if group else cfg.train.seed
        self.files = RunFiles.for_config(run_dir, config)
        self.checkpoints = Checkpoints(self.files, cfg.train.best_metric)
        self.device = resolve_device(cfg.train.device)
        self.precision = precision_for(self.device, cfg.train.amp, cfg.train.amp_dtype)
        self.progress = self.is_main and (
            sys.stderr.isatty() if cfg.train.progress is None else cfg.train.progress
        )
        self.to_input = DeviceNormalize(cfg.data.mean, cfg.data.std, self.device)
        self.train_loader, self.val_loader = self._loaders(items, pack, train_pack)
        self.augment = self._augment()
        log_memory("after datasets", self.device)
        self.model = self._model()
        self.forward_model = self._forward_model()
        # Rank 0 evaluates alone: with the model itself (DDP's forward would wait for the others).
        self.eval_model = self.forward_model if group is None else self.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        # None with a constant rate (part1): the optimizer's lr is then never touched.
        self.schedule = make_schedule(self.optimizer, cfg.train, len(self.train_loader))
        self.scaler = make_scaler(self.precision)
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
            where = rows["row"] if source is pack else rows["sample"].map(source.row_of())
            sets[split] = CachedBatches(source, where.tolist(), rows["label_idx"].tolist())
        # data.crop=all trains on each box; val is measured per image (camtrap.samples)
        self.val_image = items.loc[items["split"] == "val", "image"].to_numpy()
        n = len(sets["train"])
        targets = items.loc[items["split"] == "train", "label_idx"].tolist()
        self.class_weight = self._class_weight(targets)
        if cfg.data.sampler == "balanced":
            rank, world = (0, 1) if self.group is None else (self.group.rank, self.group.world_size)
            self.shuffle = BalancedSampler(targets, cfg.train.seed, rank, world)
        else:
            self.shuffle = (EpochShuffle(n, cfg.train.seed) if self.group is None
                            else ranks.shard_sampler(n, cfg.train.seed, self.group))  # fmt: skip
        options = {"num_workers": cfg.data.num_workers, "pin_memory": self.device.type == "cuda"}
        train = make_loader(sets["train"], cfg.train.batch_size, order=self.shuffle, train=True,
                            **options)  # fmt: skip
        val = make_loader(sets["val"], cfg.train.eval_batch(), **options)
        return train, val

    def _class_weight(self, targets: list[int]) -> torch.Tensor | None:
        """train.class_weights from the train split's counts, on the device (None: none)."""
        counts = class_counts(targets, len(self.classes))
        weights = class_weights(counts, self.config.train.class_weights)
        self.balance = {
            "class_weights": self.config.train.class_weights,
            "sampler": self.config.data.sampler,
            "train_counts": dict(zip(self.classes, counts.tolist(), strict=True)),
            **({} if weights is None else
               {"weights": dict(zip(self.classes, weights.round(6).tolist(), strict=True))}),
        }  # fmt: skip
        if weights is None:
            return None
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _augment(self) -> TrainAugment | None:
        cfg = self.config
        if not cfg.augment.enabled:
            return None
        return TrainAugment(cfg.augment, cfg.data.image_size, cfg.data.mean, cfg.data.std,
                            self.device, self.seed)  # fmt: skip

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

    def warm_start(self) -> None:
        """A fresh run starts from model.init_from's weights (a resumed one from its state)."""
        if self.config.model.init_from is not None:
            warm_start(self.model, self.config.model.init_from, self.config.model.arch,
                       self.classes)  # fmt: skip

    # --- resume state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resume state (the epoch records are added by Checkpoints.save), copied:
        training goes on while it is written."""
        return cpu_copy({
            "epoch": self.completed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "classes": self.classes,
            "config": self.config.model_dump(mode="json"),
        })  # fmt: skip

    def resume_if_possible(self) -> None:
        """Continue after the last epoch in state/last.pt, the commit point: the files an epoch
        writes after it (best models, metrics CSVs) are brought back in line with it first."""
        # A kill -9 during an atomic write leaves only a temp file behind; the real file is intact.
        for partial in self.files.root.rglob(".*.tmp") if self.is_main else ():
            partial.unlink(missing_ok=True)
        if not self.files.state.exists():
            return
        state = load_torch(self.files.state)
        self._refuse_changes(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:  # after the optimizer: it sets the groups' lr
            self.schedule.load_state_dict(state["schedule"])
        load_scaler_state(self.scaler, state["scaler"])
        restore_rng_state(state["rng"])
        self.completed = state["epoch"]
        if not self.is_main:  # writes nothing; its RNG stream is not saved (rank 0's is)
            torch.manual_seed(ranks.rank_seed(self.config.train.seed, self.group.rank,
                                              self.completed))  # fmt: skip
            return
        self.checkpoints.resume(state, self.model_file)
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
            label_smoothing=self.config.train.label_smoothing, class_weight=self.class_weight,
            after_step=self.schedule.step if self.schedule is not None else None,
        )  # fmt: skip
        if self.group is not None:
            train_out = EpochOutputs.combine(ranks.gather(train_out, self.group))
            if not self.is_main:  # rank 0 evaluates and writes the epoch meanwhile
                self.completed = epoch
                ranks.barrier()
                return
        val_out = infer(
            self.eval_model, self.val_loader, self.to_input, self.precision, self.progress,
            desc=f"epoch {epoch}/{epochs} val",
        )  # fmt: skip
        val_out = image_outputs(val_out, self.val_image, self.classes)
        _check_finite(epoch, train_out, val_out, self.config.train.lr)
        train_m, val_m = _epoch_metrics(train_out), _epoch_metrics(val_out)
        counts = {name: getattr(train_out, name) for name in STEP_COUNTS}
        per_class = pd.concat(
            [_per_class_rows(epoch, "train", train_out, self.classes),
             _per_class_rows(epoch, "val", val_out, self.classes)],
            ignore_index=True,
        )  # fmt: skip
        is_best = self.checkpoints.record(epoch, train_m, val_m, per_class, counts)
        self.completed = epoch
        release_memory(self.device)
        memory = log_memory(f"epoch {epoch} end", self.device)
        seconds = time.perf_counter() - started
        log.info(_epoch_line(epoch, epochs, train_m, val_m, seconds, is_best, counts))
        record = EpochRecord(
            epoch, epochs, train_m, val_m, per_class, is_best, self.checkpoints.best.epoch,
            seconds, memory, self.files,
        )  # fmt: skip
        # Written while the next epoch trains; the state first (the commit point).
        then = (lambda: on_epoch_end(record)) if on_epoch_end is not None else None
        self.checkpoints.save(epoch, self.state_dict(), self.model_file, then)
        if self.group is not None:
            ranks.barrier()

    def save_final_model(self) -> None:
        history = self.checkpoints.history
        final_metrics = val_metrics(history[-1] if history else {})
        self.checkpoints.save_final(self.model_file(self.completed, final_metrics))


def _check_finite(epoch: int, train: EpochOutputs, val: EpochOutputs, lr: float) -> None:
    """Before the metrics, which would raise on NaN probabilities."""
    if not (_finite(train.loss) and _finite(val.loss)):
        raise TrainingDiverged(
            f"the loss is not finite at epoch {epoch} (train {train.loss}, val {val.loss}); "
            f"the last good state is the previous epoch's — fix: lower train.lr (now {lr}), "
            "or with train.amp use train.amp_dtype=bfloat16"
        )


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


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


def _epoch_line(epoch, epochs, train_m, val_m, seconds, is_best, counts) -> str:
    skipped = "".join(f" | {n} {name.replace('_', ' ')}" for name, n in counts.items() if n)
    return (
        f"Epoch {epoch}/{epochs} | train loss {train_m['loss']:.4f} acc {train_m['accuracy']:.4f} "
        f"top3 {train_m['top3_accuracy']:.4f} | val loss {val_m['loss']:.4f} "
        f"acc {val_m['accuracy']:.4f} log_loss {val_m['log_loss']:.4f} "
        f"top3 {val_m['top3_accuracy']:.4f} | {seconds:.1f}s{skipped}"
        + (" | best" if is_best else "")
    )


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
    """Train `config` on `items` (camtrap.stages.split_items: a row per sample, with row: its
    row in `pack`, label_idx, split, image, sample) into `run_dir`, resuming if a previous
    attempt left state/last.pt there. `on_epoch_end` runs on a background thread once the
    epoch's files are written. `train_pack`: the train samples at data.train_cache_size
    (augmentation; rows found by the items' `sample`). `group`: this
    process's rank when several train (camtrap.launch; rank 0 alone writes)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # The global RNG (weight init, dropout, stochastic depth) is seeded here, at the edge, and
    # restored afterwards so callers' randomness is untouched.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ranks.rank_seed(config.train.seed, group.rank if group else 0))
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
        trainer = _Trainer(config, items, classes, Path(run_dir), pack, train_pack, group)
        trainer.resume_if_possible()
        resumed_from = trainer.completed
        if resumed_from == 0:
            trainer.warm_start()
        writer = trainer.checkpoints.writer
        try:
            for epoch in range(trainer.completed + 1, config.train.epochs + 1):
                trainer.run_epoch(epoch, on_epoch_end)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                writer.wait()
            raise
        writer.wait()  # the last epoch's files, before anything else reads them
        final_missing = resumed_from < config.train.epochs or not trainer.files.final_model.exists()
        if trainer.is_main and final_missing:
            trainer.save_final_model()
    best, best_logloss = trainer.checkpoints.bests
    return FitResult(
        best_epoch=best.epoch,
        best_value=_or_nan(best.value),
        epochs_run=config.train.epochs - resumed_from,
        resumed_from=resumed_from,
        history=trainer.checkpoints.history,
        best_logloss_epoch=best_logloss.epoch,
        best_logloss_value=_or_nan(best_logloss.value),
        balance=trainer.balance,
    )


def _or_nan(value: float | None) -> float:
    return float(value) if value is not None else float("nan")
