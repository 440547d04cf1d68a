"""How the tasks retry and cache: I/O tasks retry with backoff and jitter, no retry fixes a user's
error, and a cached result is keyed on its inputs, the code that computed it and the state of the
data where it lives."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

import camtrap
from camtrap import storage
from camtrap.errors import CamtrapError, StorageError

# I/O tasks: 3 retries after 2, 4, 8 s, each stretched by up to 50% at random so that many runs
# hitting the same failing S3 do not retry in lockstep.
IO_RETRIES = 3
IO_RETRY_DELAYS = exponential_backoff(backoff_factor=2)
IO_RETRY_JITTER = 0.5
TRAIN_RETRIES = 1  # a retry resumes after the last epoch saved in output_uri
TRAIN_RETRY_DELAY_S = 10


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry failures that may pass (network, S3 errors, a crash); not bad data, bad config or a
    URI that names nothing, which fail the same way every time."""
    try:
        state.result()
    except storage.StorageNotFound:
        return False
    except StorageError:
        return True
    except CamtrapError:
        return False
    except Exception:
        return True
    return True


# What every I/O task (fetch, split, evaluate, publish) shares: `@task(..., **IO_TASK)`.
IO_TASK: dict[str, Any] = {
    "retries": IO_RETRIES,
    "retry_delay_seconds": IO_RETRY_DELAYS,
    "retry_jitter_factor": IO_RETRY_JITTER,
    "retry_condition_fn": retry_unless_user_error,
}


# The packages whose code computes what a cached task returns. Prefect's TASK_SOURCE hashes only
# the task function's own body, so a fix in camtrap (or in a helper beside the task) would still
# hit results the old code computed.
LIBRARY_PACKAGES = (Path(camtrap.__file__).resolve().parent, Path(__file__).resolve().parent)


def source_digest(roots: tuple[Path, ...]) -> str:
    """sha256 over the path (relative to its root's parent) and bytes of every .py file under
    `roots`, in a fixed order."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            name = path.relative_to(root.parent).as_posix()
            content = hashlib.sha256(storage.read_bytes(path)).hexdigest()
            digest.update(f"{name}\0{content}\n".encode())
    return digest.hexdigest()


@functools.cache
def library_digest() -> str:
    """`source_digest` of camtrap and tasks, once per process (the code does not change under a
    running process; a new deployment or checkout starts new processes)."""
    return source_digest(LIBRARY_PACKAGES)


@dataclass
class LibrarySource(CachePolicy):
    """A key ingredient: the source of the camtrap and tasks packages (`library_digest`)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return library_digest()


# Every cached task's policy starts from this: its inputs, its own source and the library's.
CODE_AND_INPUTS = INPUTS + TASK_SOURCE + LibrarySource()


@dataclass
class RemoteState(CachePolicy):
    """CODE_AND_INPUTS, plus the state of the data where it lives (ETags of the files at the URI
    and the local cache's id), so a rerun on unchanged data is a cache hit and any change a
    miss. When that state cannot be read, or `state_fn` returns None (the local copy cannot
    back a cached result), there is no key at all: the task runs, uncached."""

    state_fn: Callable[[dict[str, Any]], str | None] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        base = CODE_AND_INPUTS.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if base is None or self.state_fn is None:
            return None
        try:
            state = self.state_fn(inputs)
        except CamtrapError as err:
            logging.getLogger("camtrap").warning("no cache key (%s); running uncached", err)
            return None
        if state is None:
            return None
        return hash_objects(base, state, raise_on_failure=True)
