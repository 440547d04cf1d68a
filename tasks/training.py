"""The train task: epochs with resume state kept in output_uri.

Before training, the run folder is mirrored from output_uri, so an attempt on any machine resumes
after the last epoch saved there. After every epoch the changed files (state/last.pt last) go
back to output_uri and the progress and metric artifacts are updated. Not cached; one retry,
which resumes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from camtrap import runfolder
from camtrap.config import RunConfig
from camtrap.errors import StorageError
from camtrap.lease import RunLease
from tasks import artifacts
from tasks.gpu import train_timeout_s
from tasks.logs import library_logs
from tasks.policies import IO_TASK, TRAIN_RETRIES, TRAIN_RETRY_DELAY_S, retry_unless_user_error
from tasks.refs import DataSnapshot, RunRef, TrainSummary
from tasks.runs import holding_lease

if TYPE_CHECKING:
    from camtrap.fit import EpochRecord

log = logging.getLogger("camtrap")


class EpochPublisher:
    """on_epoch_end: upload what changed, then update the progress bar and the tables."""

    def __init__(
        self,
        run: RunRef,
        run_artifacts: artifacts.RunArtifacts,
        lease: RunLease | None = None,
    ) -> None:
        self.run = run
        self.artifacts = run_artifacts  # one card per key, updated every epoch
        self.lease = lease

    def __call__(self, record: EpochRecord) -> None:
        if self.lease is not None:
            self.lease.check()  # another process took the run: stop before writing more
        try:
            runfolder.push(self.run.local_dir, self.run.run_uri)
        except StorageError as err:  # the next epoch's sync, or the final one, catches up
            log.warning("epoch %d not saved to output_uri yet: %s", record.epoch, err)
        note = (
            f"{self.run.run_id}: epoch {record.epoch}/{record.epochs} | val acc "
            f"{record.val.get('accuracy', float('nan')):.4f} | best epoch {record.best_epoch}"
        )
        arts, run = self.artifacts, self.run
        artifacts.best_effort(
            "progress", lambda: artifacts.progress(arts, run, record.epoch, record.epochs, note)
        )
        artifacts.best_effort(
            "epochs table", lambda: artifacts.epochs_table(arts, run, record.files.epochs_csv)
        )
        artifacts.best_effort(
            "per-class table",
            lambda: artifacts.per_class_table(arts, run, record.per_class, record.epoch),
        )


@task(
    name="train",
    cache_policy=NO_CACHE,
    retries=TRAIN_RETRIES,
    retry_delay_seconds=TRAIN_RETRY_DELAY_S,
    retry_condition_fn=retry_unless_user_error,
    timeout_seconds=train_timeout_s(),  # $CAMTRAP_TRAIN_TIMEOUT_S; a hung run fails, then resumes
)
def train(config: RunConfig, snapshot: DataSnapshot, run: RunRef) -> TrainSummary:
    """Train (or resume) the run; its folder in output_uri holds every epoch's state."""
    from camtrap import stages  # loads torch: here, not at the top (tasks/__init__.py)

    run_dir = Path(run.local_dir)
    with library_logs(), holding_lease(run) as held:
        moved = runfolder.reconcile(run.run_uri, run_dir)
        done = runfolder.epochs_done(run_dir)
        if done:
            log.info("resuming %s after epoch %d (%s)", run.run_id, done, moved)
        total = config.train.epochs
        run_artifacts = artifacts.RunArtifacts(config.output.stage)
        artifacts.best_effort(
            "progress", lambda: artifacts.progress(run_artifacts, run, min(done, total), total)
        )
        publisher = EpochPublisher(run, run_artifacts, held)
        job = stages.TrainJob(config, Path(snapshot.root), run_dir)
        result = stages.train(job, on_epoch_end=publisher)
        stages.record_training(run_dir, result)
        runfolder.push(run_dir, run.run_uri)
    return TrainSummary(
        best_epoch=result.best_epoch,
        best_value=result.best_value,
        epochs_run=result.epochs_run,
        resumed_from=result.resumed_from,
    )


@task(name="resolve-init-from", cache_policy=NO_CACHE, timeout_seconds=300, **IO_TASK)
def resolve_init_from(config: RunConfig) -> RunConfig:
    """model.init_from (a run folder, a stage's latest.json) resolved to the model file it names
    now, before the run id is derived from the config: a new part1 run is a new part2 run. Not
    cached: the pointer moves."""
    from camtrap import models  # loads torch: here, not at the top (tasks/__init__.py)

    with library_logs():
        return models.resolve_init_from(config)
