"""What training keeps of its epochs, written in an order that makes a kill at any moment harmless
(timm's CheckpointSaver is the model).

Per epoch, on a background thread while the next epoch trains (one epoch in flight at most):

    state/last.pt     the commit point: weights, optimizer, schedule, scaler, RNG streams, the
                      metrics history, and each best model's epoch, value and sha256
    state/last.json   its epoch, readable without downloading the state
    best model files  one per tracked metric (`Best`): by train.best_metric and by val log loss
                      (the same bytes when one epoch is both)
    metrics/*.csv     epochs.csv and per_class.csv, rebuilt from the history each time

On resume (`Checkpoints.resume`) the files written after the state are made to agree with it: a
best model file that is not the one the state names is rebuilt from the state's own weights when
the state's epoch is that best (the only case a kill can leave), otherwise refused."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from camtrap import runfolder
from camtrap.errors import StorageError
from camtrap.metrics import EPOCH_METRICS
from camtrap.modelfile import is_recorded_file
from camtrap.runfolder import RunFiles
from camtrap.storage.files import atomic_write_bytes, atomic_write_text, file_sha256
from camtrap.torchfile import save_torch, torch_bytes

log = logging.getLogger("camtrap")

LOWER_IS_BETTER = {"val_loss", "val_log_loss"}
STEP_COUNTS = ("skipped_steps", "nonfinite_steps")  # train steps not applied (epochs.csv)

# A model file's dict for an epoch: (epoch, its val metrics, the weights or None for the live
# ones) -> what camtrap.modelfile.model_file_dict returns.
ModelFile = Callable[[int, dict[str, float], dict[str, Any] | None], dict[str, Any]]


@dataclass
class Best:
    """The best epoch by one metric so far, and the model file that holds its weights. Ties keep
    the first epoch. In the state its fields are `{name}_epoch`, `{name}_value`, `{name}_sha256`."""

    name: str  # "best" (train.best_metric) or "best_logloss"
    metric: str  # "val_accuracy", "val_log_loss", ...
    path: Path
    epoch: int = 0
    value: float | None = None
    sha256: str | None = None  # of the model file as training wrote it

    def beaten_by(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if self.metric in LOWER_IS_BETTER else value > self.value

    def state(self) -> dict[str, Any]:
        return {
            f"{self.name}_epoch": self.epoch,
            f"{self.name}_value": self.value,
            f"{self.name}_sha256": self.sha256,
        }

    def restore(self, state: dict[str, Any]) -> bool:
        """Take this best's fields from a saved state; False if the state predates it."""
        if f"{self.name}_epoch" not in state:
            return False
        self.epoch, self.value = state[f"{self.name}_epoch"], state[f"{self.name}_value"]
        self.sha256 = state.get(f"{self.name}_sha256")
        return True


def val_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A history row's metrics as a model file stores them: val_accuracy, val_loss, ..."""
    return {f"val_{k}": float(row[k]) for k in EPOCH_METRICS if k in row}


class Checkpoints:
    """The epochs' records (history, per-class rows), the best models and the resume state of
    one run folder. Only the process that writes the run (rank 0) makes one."""

    def __init__(self, files: RunFiles, best_metric: str) -> None:
        self.files = files
        self.best = Best("best", best_metric, files.best_model)
        # The second best model, by val log loss whatever train.best_metric is (the competition
        # and any triage of new photos are scored by log loss).
        self.best_logloss = Best("best_logloss", "val_log_loss", files.best_logloss_model)
        self.history: list[dict[str, Any]] = []
        self.per_class: list[dict[str, Any]] = []
        self.writer = BackgroundWriter()

    @property
    def bests(self) -> tuple[Best, Best]:
        return self.best, self.best_logloss

    def state(self) -> dict[str, Any]:
        """What the resume state holds of the records (copied: training goes on)."""
        bests = {k: v for best in self.bests for k, v in best.state().items()}
        return {"history": list(self.history), "per_class": list(self.per_class), **bests}

    def record(self, epoch: int, train: dict, val: dict, per_class: pd.DataFrame,
               counts: dict[str, int]) -> bool:  # fmt: skip
        """Add one epoch's metrics; returns whether it is the best by train.best_metric."""
        no_steps = dict.fromkeys(STEP_COUNTS, 0)  # evaluation takes no optimizer steps
        for split, metrics, steps in (("train", train, counts), ("val", val, no_steps)):
            self.history.append({"epoch": epoch, "split": split, **_as_floats(metrics), **steps})
        self.per_class.extend(per_class.to_dict("records"))
        for best in self.bests:
            value = val[best.metric.removeprefix("val_")]
            if best.beaten_by(value):
                best.epoch, best.value = epoch, float(value)
        return self.best.epoch == epoch

    def val_metrics_of(self, epoch: int) -> dict[str, float]:
        return val_metrics(
            next(r for r in self.history if r["epoch"] == epoch and r["split"] == "val")
        )

    # --- one epoch's files ----------------------------------------------------------------------
    def save(
        self,
        epoch: int,
        state: dict[str, Any],
        model_file: ModelFile,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Write epoch `epoch`'s files in the background, in commit order, then run `then`
        (uploads, artifacts). `state` is the resume state without the records (a snapshot: its
        weights serve the best model files too)."""
        state = {**state, **self.state()}
        best_bytes, best_paths = None, []
        bests = [best for best in self.bests if best.epoch == epoch]
        if bests:  # both bests of one epoch: the same file
            best = model_file(epoch, self.val_metrics_of(epoch), state["model"])
            best_bytes = torch_bytes(best)
            sha256 = hashlib.sha256(best_bytes).hexdigest()
        for best in bests:
            best.sha256 = state[f"{best.name}_sha256"] = sha256
            best_paths.append(best.path)
        history, per_class = pd.DataFrame(self.history), pd.DataFrame(self.per_class)

        def write() -> None:
            state_bytes = torch_bytes(state)
            atomic_write_bytes(self.files.state, state_bytes)
            runfolder.write_state_info(self.files.root, epoch, len(state_bytes))
            for path in best_paths:
                atomic_write_bytes(path, best_bytes)
            self.write_metrics(history, per_class)
            if then is not None:
                then()

        self.writer.submit(write)

    def write_metrics(self, history: pd.DataFrame, per_class: pd.DataFrame) -> None:
        if history.empty:
            return
        atomic_write_text(self.files.epochs_csv, history.to_csv(index=False))
        atomic_write_text(self.files.per_class_csv, per_class.to_csv(index=False))

    def save_final(self, model_file: dict[str, Any]) -> None:
        save_torch(model_file, self.files.final_model)

    # --- resume -----------------------------------------------------------------------------------
    def resume(self, state: dict[str, Any], model_file: ModelFile) -> None:
        """Take the records of a saved state and make the files written after it agree with it.
        `model_file` builds the file of an epoch from the live weights (the state's, loaded)."""
        self.history, self.per_class = state["history"], state["per_class"]
        completed = state["epoch"]
        self.best.restore(state)
        self.best.sha256 = self._settle(self.best, completed, model_file)
        if self.best_logloss.restore(state):
            self.best_logloss.sha256 = self._settle(self.best_logloss, completed, model_file)
        else:
            self._seed_best_logloss(completed, model_file)
        self.write_metrics(pd.DataFrame(self.history), pd.DataFrame(self.per_class))

    def _settle(self, best: Best, completed: int, model_file: ModelFile) -> str | None:
        """`best.path` made the model file of `best.epoch` whose sha256 the state recorded. The
        state is written before the best model: a kill between them leaves the previous best
        file, while the state's own weights are the new best's (best.epoch == the state's
        epoch), so the file is rebuilt from them. Returns the sha256 to record."""
        if best.sha256 is None or is_recorded_file(best.path, best.sha256):
            return best.sha256
        if best.epoch != completed:
            raise StorageError(
                f"{best.path} is not the best model state/last.pt names (epoch {best.epoch}) "
                "and that epoch's weights are gone — fix: delete the run folder (or use a new "
                "--run-id) to train it again"
            )
        log.info("rebuilding %s from state/last.pt (epoch %d)", best.path.name, best.epoch)
        return save_torch(model_file(best.epoch, self.val_metrics_of(best.epoch), None), best.path)

    def _seed_best_logloss(self, completed: int, model_file: ModelFile) -> None:
        """A state written before the log-loss best model existed: that best is the history's
        lowest val log loss (the first of equal ones). Its weights survive if it is the state's
        own epoch or the best model's; otherwise its file appears once a later epoch beats it."""
        val = [row for row in self.history if row["split"] == "val"]
        if not val:
            return
        row = min(val, key=lambda r: r["log_loss"])
        best = self.best_logloss
        best.epoch, best.value = int(row["epoch"]), float(row["log_loss"])
        if best.path.exists():  # seeded by an earlier resume of this state
            best.sha256 = file_sha256(best.path)
        elif best.epoch == completed:
            file = model_file(best.epoch, self.val_metrics_of(best.epoch), None)
            best.sha256 = save_torch(file, best.path)
        elif best.epoch == self.best.epoch and self.best.path.exists():
            data = self.best.path.read_bytes()
            atomic_write_bytes(best.path, data)
            best.sha256 = hashlib.sha256(data).hexdigest()
        else:
            log.warning(
                "%s: epoch %d has the lowest val log loss but its weights are gone; no %s "
                "until a later epoch beats it", self.files.root, best.epoch, best.path.name,
            )  # fmt: skip


def _as_floats(metrics: dict[str, float]) -> dict[str, float]:
    # Full float precision in the CSVs, so metrics recomputed from predictions match exactly.
    return {k: float(v) for k, v in metrics.items()}


# --- the resume state's parts --------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The global torch RNG streams that training consumes (dropout, stochastic depth)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state saved, on whatever this machine has: CUDA streams of GPUs it
    lacks are dropped, GPUs it has beyond the saved ones keep their own (a state saved on CPU
    or with more GPUs visible resumes anywhere)."""
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    if saved and torch.cuda.is_available():
        for device, stream in enumerate(saved[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(stream, device)


def load_scaler_state(scaler: torch.amp.GradScaler, saved: dict[str, Any]) -> None:
    """A GradScaler's saved state, across devices: a state saved without loss scaling (CPU,
    bf16: an empty dict) leaves this scaler at its initial scale; a disabled scaler ignores
    what an fp16 run saved."""
    if saved and scaler.is_enabled():
        scaler.load_state_dict(saved)


def cpu_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the CPU: a snapshot training can't change under a
    background write (state_dict() returns the live parameters)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class BackgroundWriter:
    """Runs jobs on a thread, one at a time: `submit` first waits for the job in flight, so the
    next epoch trains while the last one's files are written and uploaded, and never more than
    one epoch is unsaved. A job's error is raised by the next `submit` or `wait`. Jobs run in
    a copy of the submitter's context (contextvars), so per-run logging still applies."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=self._run, args=(context, job), name="camtrap-writer", daemon=True
        )
        self._thread.start()

    def _run(self, context: contextvars.Context, job: Callable[[], None]) -> None:
        try:
            context.run(job)
        except BaseException as err:  # noqa: BLE001 - handed to the training thread
            self._error = err

    def wait(self) -> None:
        """Block until the job in flight is done; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
