"""What the tasks share: the small models they exchange, where local copies live, the retry and
cache rules, and the bridge that sends the library's `camtrap` logs to the Prefect run."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel, ConfigDict

from camtrap import storage
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
        return Path(output_uri, stage, run_id)
    return storage.cache_path_for(output_uri, cache_root() / "runs") / stage / run_id


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


@dataclass
class RemoteState(CachePolicy):
    """INPUTS + TASK_SOURCE, plus the state of the data where it lives (ETags of the files at the
    URI and the local cache's id), so a rerun on unchanged data is a cache hit and any change a
    miss. When that state cannot be read there is no key at all: the task runs, uncached."""

    state_fn: Callable[[dict[str, Any]], str] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        base = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if base is None or self.state_fn is None:
            return None
        try:
            state = self.state_fn(inputs)
        except CamtrapError as err:
            logging.getLogger("camtrap").warning("no cache key (%s); running uncached", err)
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
