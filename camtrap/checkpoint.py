"""Model files and resume state, written atomically (tmp file in the same folder, fsync,
os.replace), as timm's CheckpointSaver does: a crash mid-write never leaves a half file under the
real name."""

from __future__ import annotations

import contextvars
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from camtrap.errors import StorageError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (run.json's file list, the image cache)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save to memory, then one atomic write."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
