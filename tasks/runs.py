"""Where a run's local copies live on this machine, and the run's lease as the tasks hold it:
the owner is the flow run, so the flow's tasks (and their retries) take it in turn."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.runtime import flow_run

from camtrap import lease, runfolder
from camtrap.storage.uris import cache_path_for, default_cache_root, is_remote, local_copy
from tasks.refs import RunRef


def data_cache_dir(data_uri: str) -> Path:
    """The local copy of the data at `data_uri` (a local folder is its own copy)."""
    return local_copy(data_uri, "data")


def local_run_dir(output_uri: str, stage: str, run_id: str) -> Path:
    """Where a run is built: the output folder itself when local, else a local mirror."""
    if not is_remote(output_uri):
        return Path(runfolder.run_location(output_uri, stage, run_id))
    runs = cache_path_for(output_uri, default_cache_root() / "runs")
    return Path(runfolder.run_location(runs, stage, run_id))


def run_ref(output_uri: str, stage: str, run_id: str) -> RunRef:
    """The places of run `run_id` (checked: a plain folder name)."""
    return RunRef(
        run_id=run_id,
        run_uri=runfolder.run_location(output_uri, stage, run_id),
        local_dir=str(local_run_dir(output_uri, stage, run_id)),
        lease_uri=lease.lease_location(output_uri, stage, run_id),
    )


def _lease_owner() -> str:
    return f"flow-run-{flow_run.id}" if flow_run.id else f"process-{os.getpid()}"


@contextmanager
def holding_lease(run: RunRef, release: bool = False) -> Iterator[lease.RunLease]:
    """The run's lease for a task that writes its folder. The owner is the flow run, so the
    flow's tasks (and their retries) take it in turn; another flow run waits up to the lease's
    length (a lease left by a dead machine expires by then), then stops with RunBusy. Kept
    between tasks (renewed only inside them, so it expires on its own if the flow dies);
    released by the last task (`release`) and by a task that fails."""
    held = lease.RunLease(run.lease_uri, _lease_owner())
    held.acquire(wait_seconds=held.seconds + 60)
    try:
        yield held
    except BaseException:
        held.release()
        raise
    if release:
        held.release()
    else:
        held.stop_renewing()


def release_lease(run: RunRef) -> None:
    """Free the run for the next attempt now (the flow ends, failed or not), if still ours."""
    lease.RunLease(run.lease_uri, _lease_owner()).release()
