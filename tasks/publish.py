"""The publish task: run.json (config, versions, status, every file with its sha256) written last
to output_uri, then the stage's latest.json pointed at the run, then the end-of-run artifacts.
Idempotent: not cached, retried on failure."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from camtrap import latest, runfolder, storage
from tasks import artifacts
from tasks.logs import library_logs
from tasks.policies import IO_TASK
from tasks.refs import RunRef, ValMetrics
from tasks.runs import holding_lease

PUBLISH_TASK = {"cache_policy": NO_CACHE, **IO_TASK}


@task(name="publish", timeout_seconds=1800, **PUBLISH_TASK)
def publish(run: RunRef, val: ValMetrics) -> str:
    """Finish the run: run.json with every output's sha256 to output_uri (after every other
    file, so a finished run.json means a complete folder), {output_uri}/{stage}/latest.json
    pointed at it, then the summary artifacts.
    Returns the URI of run.json."""
    from camtrap import stages  # loads torch: here, not at the top (tasks/__init__.py)

    run_dir = Path(run.local_dir)
    with library_logs():
        with holding_lease(run, release=True):  # the run's last write
            runfolder.reconcile(run.run_uri, run_dir)
            info = stages.finalize(run_dir, val=val.metrics)
            runfolder.push(run_dir, run.run_uri)
            latest.write_latest(run.run_uri, info)  # run.json is there: the run is complete
        artifacts.publish_summary(run, info, run_dir)
    return storage.join(run.run_uri, runfolder.RUN_JSON)


@task(name="report-up-to-date", timeout_seconds=300, **PUBLISH_TASK)
def report_up_to_date(run: RunRef) -> str:
    """A finished run with this config and data exists: say so in the UI, train nothing."""
    uri = storage.join(run.run_uri, runfolder.RUN_JSON)
    info = runfolder.parse_run_json(storage.read_bytes(uri), uri)
    val = "  ".join(f"{k} {v:.4f}" for k, v in info.get("val", {}).items())
    markdown = (
        f"# {run.run_id}: up to date\n\nA finished run with this configuration and data "
        f"exists (finished {info.get('finished', '?')}), so nothing was trained.\n\n"
        f"- outputs: `{run.run_uri}`\n- best epoch {info.get('best_epoch', '?')}: {val}\n"
        "- to train again into a new folder, run with the parameter `force: true`\n"
    )
    # Its own key: the summary's versions stay one per retrain.
    artifacts.RunArtifacts(artifacts.stage_of(run)).write(
        "up-to-date", "markdown", markdown, f"{run.run_id}: up to date"
    )
    return storage.join(run.run_uri, runfolder.RUN_JSON)
