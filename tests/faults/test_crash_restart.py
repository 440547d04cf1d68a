"""A deployment run killed with SIGKILL (as the kernel's OOM killer does) comes back: the
process worker reports it Crashed and the on_crashed hook of flows/hooks.py schedules the
restart. (The hook's decisions and the automation: tests/integration/test_restart.py.)"""

from uuid import uuid4

import pytest


@pytest.mark.slow
@pytest.mark.e2e
def test_a_worker_restarts_a_deployment_run_killed_with_sigkill(prefect_server, read_run):
    """The path the hook is for: the flow process gets SIGKILL, the process worker reports the
    run Crashed and runs the hook in a fresh process, which schedules the restart."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.workers.process import ProcessWorker

    pool, deployment, marker = (f"{kind}-{uuid4().hex[:8]}" for kind in ("crash", "d", "m"))
    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:  # the API, not the CLI: 3 CPU-seconds each
        client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                               base_job_template=template))  # fmt: skip
    entry = "tests/faults/crashing_flow.py:crash"
    prefect_server.cli("deploy", entry, "-n", deployment, "-p", pool, "--tag", "camtrap")
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(f"camtrap-crash-test/{deployment}")
        client.create_flow_run_from_deployment(target.id, parameters={"marker": marker})
    worker = prefect_server.cli("worker", "start", "--pool", pool, "--run-once", timeout=180)

    only_this = DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=only_this)
    log = worker.stdout + worker.stderr
    by_state = {run.state.name: run for run in runs}
    assert sorted(by_state) == ["Crashed", "Scheduled"], log[-3000:]
    crashed, restart = by_state["Crashed"], by_state["Scheduled"]
    assert "SIGKILL" in crashed.state.message
    assert restart.parameters == {"marker": marker}
    assert set(restart.tags) == {"camtrap", "camtrap-restart-1"}
    assert any("restart 1 of 2 scheduled" in line for line in read_run(crashed.id).logs)
