"""The evaluate task: the best model on the val split -> predictions/val.csv,
metrics/confusion_matrix.csv and every plot, written to output_uri. Idempotent (the same files
each time), so it is not cached and retries freely."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from camtrap import pipeline, storage
from camtrap.config import RunConfig
from tasks.common import (
    IO_TASK,
    DataSnapshot,
    RunRef,
    ValMetrics,
    library_logs,
)


@task(name="evaluate", cache_policy=NO_CACHE, **IO_TASK)
def evaluate(config: RunConfig, snapshot: DataSnapshot, run: RunRef) -> ValMetrics:
    run_dir = Path(run.local_dir)
    with library_logs():
        storage.sync_uri_to_dir(run.run_uri, run_dir, delete=True)
        metrics = pipeline.evaluate(config, run_dir, Path(snapshot.root))
        storage.sync_dir_to_uri(run_dir, run.run_uri)
    return ValMetrics(metrics={k: float(v) for k, v in metrics.items()})
