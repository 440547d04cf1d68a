"""What the tasks share: the small models they exchange, where local copies live, the retry and
cache rules, and the bridge that sends the library's `camtrap` logs to the Prefect run."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel, ConfigDict

from camtrap import runfolder, storage
from camtrap.errors import CamtrapError, StorageError

CACHE_DIR_ENV = storage.CACHE_DIR_ENV

# I/O tasks: 3 retries after 2, 4, 8 s, each stretched by up to 50% at random so that many runs
# hitting the same failing S3 do not retry in lockstep.
IO_RETRIES = 3
IO_RETRY_DELAYS = exponential_backoff(backoff_factor=2)
IO_RETRY_JITTER = 0.5
TRAIN_RETRIES = 1  # a retry resumes after the last epoch saved in output_uri
TRAIN_RETRY_DELAY_S = 10


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSnapshot(_Model):
    """A dataset as fetched: its URI, the local folder holding the copy, and digests of what
    was fetched (S3 ETags), so downstream cache keys change exactly when the data does."""

    data_uri: str
    root: str  # local folder: the CSVs, and the images once fetch_images ran
    csv_digest: str
    images_digest: str = ""


class RunRef(_Model):
    """One run's identity and places: the output folder and its local working copy."""

    run_id: str
    run_uri: str  # {output_uri}/{stage}/{run_id}
    local_dir: str  # == run_uri for a local output_uri
    lease_uri: str  # {output_uri}/{stage}/.leases/{run_id}.json: one writer per run


class ImageCacheRef(_Model):
    """A run's decoded images on this machine: the pack's manifest and how it was made."""

    manifest: str  # {CAMTRAP_CACHE_DIR}/images/.../{key}.json
    images: int
    decoded: int  # images decoded by this task (validation decodes new images first)
    copied: int  # rows copied from other packs
    reused: bool  # the pack was already there and intact


class TrainSummary(_Model):
    best_epoch: int
    best_value: float
    epochs_run: int
    resumed_from: int


class ValMetrics(_Model):
    """The best model's metrics on the val split."""

    metrics: dict[str, float]


def cache_root() -> Path:
    """Local copies of data and runs: $CAMTRAP_CACHE_DIR, else ~/.cache/camtrap."""
    return storage.default_cache_root()


def data_cache_dir(data_uri: str) -> Path:
    """The local copy of the data at `data_uri` (a local folder is its own copy)."""
    if not storage.is_remote(data_uri):
        return Path(data_uri)
    return storage.cache_path_for(data_uri, cache_root() / "data")


def local_run_dir(output_uri: str, stage: str, run_id: str) -> Path:
    """Where a run is built: the output folder itself when local, else a local mirror."""
    if not storage.is_remote(output_uri):
        return Path(runfolder.run_location(output_uri, stage, run_id))
    runs = storage.cache_path_for(output_uri, cache_root() / "runs")
    return Path(runfolder.run_location(runs, stage, run_id))


def _lease_owner() -> str:
    return f"flow-run-{flow_run.id}" if flow_run.id else f"process-{os.getpid()}"


@contextmanager
def holding_lease(run: RunRef, release: bool = False) -> Iterator[runfolder.RunLease]:
    """The run's lease for a task that writes its folder. The owner is the flow run, so the
    flow's tasks (and their retries) take it in turn; another flow run waits up to the lease's
    length (a lease left by a dead machine expires by then), then stops with RunBusy. Kept
    between tasks (renewed only inside them, so it expires on its own if the flow dies);
    released by the last task (`release`) and by a task that fails."""
    lease = runfolder.RunLease(run.lease_uri, _lease_owner())
    lease.acquire(wait_seconds=lease.seconds + 60)
    try:
        yield lease
    except BaseException:
        lease.release()
        raise
    if release:
        lease.release()
    else:
        lease.stop_renewing()


def release_lease(run: RunRef) -> None:
    """Free the run for the next attempt now (the flow ends, failed or not), if still ours."""
    runfolder.RunLease(run.lease_uri, _lease_owner()).release()


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    text = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")


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
LIBRARY_PACKAGES = (Path(storage.__file__).resolve().parent, Path(__file__).resolve().parent)


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


class _ToRunLogger(logging.Handler):
    """Re-logs `camtrap` records through the run logger: the Prefect UI and the console."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.run_logger = get_run_logger()  # captured here: worker threads have no run context

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_logger.log(record.levelno, self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def library_logs() -> Iterator[None]:
    """Inside a task: the library's logs (epoch lines, memory reports, storage retries) go to
    this task run's logs."""
    logger = logging.getLogger("camtrap")
    handler = _ToRunLogger()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
