"""Crashed runs come back: the on_crashed hook of `train-swin` (flows/hooks.py) and the
heartbeat automation (deployments/automations.yaml). The decision logic is checked on FlowRun
objects built here; one slow test runs the hook against a Prefect server."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun

from camtrap.errors import ConfigError
from flows.hooks import (
    RESTART_DELAY_S,
    max_restarts,
    plan_restart,
    restart_after_crash,
    restart_parameters,
    restarts_so_far,
)
from flows.train_swin import train_swin

ROOT = Path(__file__).resolve().parents[2]
AUTOMATIONS = ROOT / "deployments" / "automations.yaml"
PARAMS = {
    "data_uri": "s3://data/train",
    "output_uri": "s3://runs/runs",
    "preset": "part1",
    "overrides": {"train.epochs": 2},
    "run_id": None,
    "force": False,
}


def _flow_run(
    tags: list[str],
    deployment_id: UUID | None = None,
    name: str = "part1-0123456789ab",
    parameters: dict | None = None,
) -> FlowRun:
    return FlowRun(
        id=uuid4(),
        flow_id=uuid4(),
        name=name,
        deployment_id=deployment_id,
        parameters=dict(PARAMS if parameters is None else parameters),
        tags=tags,
        job_variables={"env": {"CUDA_VISIBLE_DEVICES": "1"}},
        work_queue_name="default",
    )


# --- the decision, without a server -------------------------------------------------------------


def test_restarts_so_far_reads_the_highest_restart_tag():
    assert restarts_so_far([]) == 0
    assert restarts_so_far(["camtrap", "part1", "gpu"]) == 0
    assert restarts_so_far(["camtrap", "camtrap-restart-1"]) == 1
    assert restarts_so_far(["camtrap-restart-1", "camtrap-restart-3", "x"]) == 3
    assert restarts_so_far(["camtrap-restart-2x", "my-camtrap-restart-5"]) == 0  # not ours


def test_first_crash_of_a_deployment_run_plans_restart_1_with_the_same_parameters():
    deployment = uuid4()
    run = _flow_run(["camtrap", "part1", "gpu"], deployment)
    plan = plan_restart(run, limit=2)
    assert plan is not None
    assert plan.deployment_id == deployment
    assert plan.parameters == PARAMS
    assert plan.tags == ["camtrap", "part1", "gpu", "camtrap-restart-1"]
    assert plan.restart == 1
    assert plan.job_variables == {"env": {"CUDA_VISIBLE_DEVICES": "1"}}
    assert plan.work_queue_name == "default"
    assert plan.idempotency_key == f"camtrap-restart-of-{run.id}"


def test_a_restarted_run_that_crashes_counts_on_and_stops_at_the_limit():
    deployment = uuid4()
    second = plan_restart(_flow_run(["camtrap", "camtrap-restart-1"], deployment), limit=2)
    assert second is not None and second.restart == 2
    assert second.tags == ["camtrap", "camtrap-restart-2"]  # the old count is replaced
    assert plan_restart(_flow_run(["camtrap", "camtrap-restart-2"], deployment), limit=2) is None
    assert plan_restart(_flow_run(["camtrap"], deployment), limit=0) is None  # turned off


def test_a_run_without_a_deployment_is_not_restarted():
    assert plan_restart(_flow_run(["camtrap"], deployment_id=None), limit=2) is None


def test_a_forced_run_resumes_the_folder_it_had_chosen():
    forced = {**PARAMS, "force": True}
    chosen = restart_parameters(forced, "part1-0123456789ab-20250101T030000")
    assert chosen == {**PARAMS, "run_id": "part1-0123456789ab-20250101T030000", "force": False}
    # Crashed before validation named the run: nothing was written, so force again.
    assert restart_parameters(forced, "part1-starting-20250101T030000") == forced
    assert restart_parameters(PARAMS, "part1-0123456789ab") == PARAMS


def test_max_restarts_comes_from_the_environment():
    assert max_restarts({}) == 2
    assert max_restarts({"CAMTRAP_MAX_RESTARTS": " 0 "}) == 0
    assert max_restarts({"CAMTRAP_MAX_RESTARTS": "5"}) == 5
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ConfigError, match=r"CAMTRAP_MAX_RESTARTS=.* — fix: set it to 0"):
            max_restarts({"CAMTRAP_MAX_RESTARTS": bad})


def test_the_flow_carries_the_restart_hook():
    assert train_swin.on_crashed_hooks == [restart_after_crash]


# --- the heartbeat automation --------------------------------------------------------------------


def _automation() -> dict:
    return yaml.safe_load(AUTOMATIONS.read_text())["automations"][0]


def _render(parameters: dict, flow_run: FlowRun) -> dict:
    """What the server's run-deployment action sends for `flow_run` (prefect's own code)."""
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    parameters = copy.deepcopy(parameters)
    RunDeployment._upgrade_v1_templates(parameters)
    context = HydrationContext(
        raise_on_error=True,
        render_jinja=True,
        jinja_context={"flow_run": flow_run},
        render_workspace_variables=True,
        workspace_variables={},
    )
    return hydrate(parameters, context)


def test_automation_file_is_a_valid_prefect_automation():
    from prefect.events.schemas.automations import AutomationCore, Posture

    automation = AutomationCore.model_validate(_automation())
    trigger = automation.trigger
    assert trigger.posture == Posture.Proactive
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Crashed"} <= trigger.expect
    assert trigger.within == timedelta(minutes=10)
    assert [a.type for a in automation.actions] == ["change-flow-run-state", "run-deployment"]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("part1-0123456789ab", PARAMS),
        ("smoke-0123456789ab", {**PARAMS, "preset": "smoke", "run_id": "mine"}),
        ("part1-0123456789ab-20250101T030000", {**PARAMS, "force": True}),
        ("part1-starting-20250101T030000", {**PARAMS, "force": True}),
    ],
)
def test_automation_restarts_with_the_parameters_the_hook_would_use(name, params):
    run = _flow_run(["camtrap"], uuid4(), name=name, parameters=params)
    action = _automation()["actions"][1]
    assert _render(action["parameters"], run) == restart_parameters(params, name)


# --- against a Prefect server --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_hook_schedules_one_restart_per_crash_and_stops_at_the_limit(monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.schemas.automations import AutomationCore
    from prefect.states import Crashed

    monkeypatch.delenv("CAMTRAP_MAX_RESTARTS", raising=False)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(train_swin)
        deployment_id = client.create_deployment(
            flow_id, f"restart-{uuid4().hex[:8]}", parameters=PARAMS, tags=["camtrap"]
        )
        crashed = client.create_flow_run_from_deployment(deployment_id, tags=["part1"])
        client.set_flow_run_state(crashed.id, Crashed(message="killed"), force=True)
        crashed = client.read_flow_run(crashed.id)

        before = datetime.now(UTC)
        restart_after_crash(train_swin, crashed, crashed.state)
        restart_after_crash(train_swin, crashed, crashed.state)  # the worker, then the engine
        only_this = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        runs = client.read_flow_runs(deployment_filter=only_this)
        restarts = [r for r in runs if r.id != crashed.id]
        assert len(restarts) == 1  # one crash, one restart (the idempotency key)
        restart = restarts[0]
        assert restart.parameters == PARAMS
        assert set(restart.tags) == {"camtrap", "part1", "camtrap-restart-1"}
        assert restart.state.is_scheduled()
        due = (restart.state.state_details.scheduled_time - before).total_seconds()
        assert RESTART_DELAY_S - 5 <= due <= RESTART_DELAY_S + 30

        # The second restart of the chain is the last one (CAMTRAP_MAX_RESTARTS=2 by default).
        again = client.create_flow_run_from_deployment(deployment_id, tags=["camtrap-restart-2"])
        client.set_flow_run_state(again.id, Crashed(message="killed again"), force=True)
        again = client.read_flow_run(again.id)
        restart_after_crash(train_swin, again, again.state)
        assert len(client.read_flow_runs(deployment_filter=only_this)) == 3  # nothing new

        # The server takes the heartbeat automation as written.
        automation_id = client.create_automation(AutomationCore.model_validate(_automation()))
        try:
            assert client.read_automation(automation_id).name == "camtrap-unresponsive-runs"
        finally:
            client.delete_automation(automation_id)
