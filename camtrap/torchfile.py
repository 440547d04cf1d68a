"""torch objects as files: torch.save to memory, then one atomic write through storage (tmp file in
the same folder, fsync, os.replace, fsync of the folder), as timm's CheckpointSaver does: a crash
mid-write never leaves a half file under the real name, and a full disk is a StorageError naming
the path. Loading takes tensors and plain types only (weights_only=True)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from camtrap.errors import StorageError
from camtrap.storage.files import atomic_write_bytes


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
