"""Flow-run hooks of `train-swin`: a deployment run that crashed is started again.

A run is Crashed when its process died without reporting (OOM kill, segfault, kill -9, a driver
fault): the worker sees the exit and runs `restart_after_crash` in a fresh process. The hook
schedules a new run of the same deployment with the same parameters, which resumes after the
last epoch saved in output_uri (the run id is derived from config and data). Each restart is
tagged `camtrap-restart-N`; after $CAMTRAP_MAX_RESTARTS of them (default 2) a crash stays a
crash, so a run that crashes every time stops. The restart's idempotency key is the crashed
run's id: however many times the hook runs for one crash, it starts one run.

Runs without a deployment (`python -m flows.train_swin`) are not restarted: rerun the command.
A run whose machine died is marked Crashed by the server's automation instead (heartbeats,
deployments/automations.yaml), which also starts it again."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.logging.loggers import flow_run_logger

from camtrap.errors import ConfigError

RESTART_TAG_PREFIX = "camtrap-restart-"
MAX_RESTARTS_ENV = "CAMTRAP_MAX_RESTARTS"
DEFAULT_MAX_RESTARTS = 2
# Why wait: the dead run's GPU slot lease (tasks/gpu.py) and the driver's memory take a moment
# to free, and a crash at start-up should not spin.
RESTART_DELAY_S = 60
_RESTART_TAG = re.compile(re.escape(RESTART_TAG_PREFIX) + r"(\d+)$")
STARTING_MARK = "-starting-"  # in the flow run's name until it is renamed after its run id


@dataclass(frozen=True)
class RestartPlan:
    """The run that replaces a crashed one: same deployment, parameters and job variables."""

    deployment_id: UUID
    parameters: dict[str, Any]
    tags: list[str]
    job_variables: dict[str, Any]
    idempotency_key: str
    restart: int  # 1 for the first restart of a chain
    work_queue_name: str | None = None


def max_restarts(environ: Mapping[str, str] = os.environ) -> int:
    """$CAMTRAP_MAX_RESTARTS (0 turns restarts off), else DEFAULT_MAX_RESTARTS."""
    text = environ.get(MAX_RESTARTS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RESTARTS
    if not text.isdigit():
        raise ConfigError(
            f"{MAX_RESTARTS_ENV}={text!r} is not a whole number — fix: set it to 0 (never "
            f"restart), 1, 2, ... or unset it for the default {DEFAULT_MAX_RESTARTS}"
        )
    return int(text)


def restarts_so_far(tags: Iterable[str]) -> int:
    """How many restarts led to this run: N of its `camtrap-restart-N` tag, 0 without one."""
    counts = [int(m.group(1)) for tag in tags if (m := _RESTART_TAG.match(tag))]
    return max(counts, default=0)


def restart_parameters(parameters: Mapping[str, Any], run_name: str) -> dict[str, Any]:
    """The crashed run's parameters, except for a forced run that had chosen its folder (the
    flow run is named after it): `force` would start yet another folder, so the restart names
    that folder instead and resumes it."""
    restart = dict(parameters)
    if restart.get("force") and STARTING_MARK not in run_name:
        restart.update(run_id=run_name, force=False)
    return restart


def plan_restart(flow_run: FlowRun, limit: int) -> RestartPlan | None:
    """The restart of a crashed `flow_run`, or None: not a deployment run, or `limit` restarts
    already happened in its chain."""
    if flow_run.deployment_id is None:
        return None
    done = restarts_so_far(flow_run.tags)
    if done >= limit:
        return None
    kept = [tag for tag in flow_run.tags if not _RESTART_TAG.match(tag)]
    return RestartPlan(
        deployment_id=flow_run.deployment_id,
        parameters=restart_parameters(flow_run.parameters, flow_run.name),
        tags=[*kept, f"{RESTART_TAG_PREFIX}{done + 1}"],
        job_variables=dict(flow_run.job_variables or {}),
        idempotency_key=f"camtrap-restart-of-{flow_run.id}",
        restart=done + 1,
        work_queue_name=flow_run.work_queue_name,
    )


def restart_after_crash(flow: Any, flow_run: FlowRun, state: State) -> None:
    """on_crashed hook: schedule the crashed run again (see the module's docstring)."""
    log = flow_run_logger(flow_run, flow)
    limit = max_restarts()
    plan = plan_restart(flow_run, limit)
    if plan is None:
        why = "not a deployment run" if flow_run.deployment_id is None else "restart limit"
        log.warning("crashed (%s); not restarted: %s (%s=%d)", state.message, why,
                    MAX_RESTARTS_ENV, limit)  # fmt: skip
        return
    new_run = run_deployment(
        plan.deployment_id,
        parameters=plan.parameters,
        scheduled_time=datetime.now(UTC) + timedelta(seconds=RESTART_DELAY_S),
        timeout=0,  # schedule it, do not wait for it
        tags=plan.tags,
        idempotency_key=plan.idempotency_key,
        work_queue_name=plan.work_queue_name,
        as_subflow=False,
        job_variables=plan.job_variables,
    )
    log.warning("crashed (%s); restart %d of %d scheduled in %d s: flow run %s", state.message,
                plan.restart, limit, RESTART_DELAY_S, new_run.id)  # fmt: skip
