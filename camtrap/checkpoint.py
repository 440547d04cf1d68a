"""Model files and resume state: torch.save to memory, then one atomic write through storage
(tmp file in the same folder, fsync, os.replace, fsync of the folder), as timm's CheckpointSaver
does: a crash mid-write never leaves a half file under the real name, and a full disk is a
StorageError naming the path."""

from __future__ import annotations

import contextvars
import hashlib
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from camtrap.errors import StorageError
from camtrap.storage import atomic_write_bytes


def torch_bytes(obj: Any) -> bytes:
    """What torch.save writes for `obj`, in memory (to hash it or write it atomically)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch(obj: Any, path: str | Path) -> str:
    """torch.save to memory, then one atomic write; returns the file's sha256."""
    data = torch_bytes(obj)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_torch(path: str | Path) -> Any:
    """Load a file written by save_torch: tensors and plain types only (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise StorageError(
            f"{path} is not a readable checkpoint ({err}); delete it to start that run afresh"
        ) from err


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
