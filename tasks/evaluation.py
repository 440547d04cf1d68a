"""The evaluate task: each best model on the val split, its temperature fitted and stored in its
file; the best model's calibrated predictions/val.csv, metrics/confusion_matrix.csv,
metrics/per_site.csv, the TTA effect and calibration in run.json, every plot; written to
output_uri. Idempotent (the same files each time), so it is not cached and retries freely."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from camtrap import runfolder
from camtrap.config import RunConfig
from tasks.logs import library_logs
from tasks.policies import IO_TASK
from tasks.refs import DataSnapshot, RunRef, ValMetrics
from tasks.runs import holding_lease


@task(name="evaluate", cache_policy=NO_CACHE, timeout_seconds=2 * 3600, **IO_TASK)
def evaluate(config: RunConfig, snapshot: DataSnapshot, run: RunRef) -> ValMetrics:
    from camtrap import stages  # loads torch: here, not at the top (tasks/__init__.py)

    run_dir = Path(run.local_dir)
    with library_logs(), holding_lease(run):
        runfolder.reconcile(run.run_uri, run_dir)
        metrics = stages.evaluate(config, run_dir, Path(snapshot.root))
        runfolder.push(run_dir, run.run_uri)
    return ValMetrics(metrics={k: float(v) for k, v in metrics.items()})
