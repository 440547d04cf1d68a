"""The GPU step's guards: one run per GPU across every deployment, and the train task's time limit.

A deployment's `concurrency_limit` counts only that deployment's runs, so `part1` and `smoke` (or
any two deployments, or an ad-hoc run) could train on one GPU at once. `gpu_slot()` holds one slot
of a Prefect *global* concurrency limit (named by $CAMTRAP_GPU_SLOT, default "gpu") while the flow
trains and evaluates: whoever comes second waits. The limit is created with 1 slot when missing
and never changed afterwards, so an operator's `prefect gcl update gpu --limit 2` stays.

Slots are leased: the holding process renews its lease every 90 s, so when it dies (kill -9, OOM,
a lost machine) the server frees the slot within SLOT_LEASE_S plus its repossessor's 15 s loop.

Without a Prefect server (no PREFECT_API_URL: `python -m flows.train_swin` starts a temporary one
per process) there is no slot: leases live in that server's memory and would die with the process,
leaving the slot taken in the shared database for good."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.settings import get_current_settings

from camtrap.errors import ConfigError

GPU_SLOT_ENV = "CAMTRAP_GPU_SLOT"
DEFAULT_GPU_SLOT = "gpu"
NO_SLOT = frozenset({"", "none", "off"})  # values of $CAMTRAP_GPU_SLOT that turn the slot off
SLOT_LEASE_S = 120  # the server's minimum is 60 s; Prefect renews at 75% of it
TRAIN_TIMEOUT_ENV = "CAMTRAP_TRAIN_TIMEOUT_S"
DEFAULT_TRAIN_TIMEOUT_S = 24 * 3600  # part1 (30 epochs of Swin-T) takes hours, not a day


def gpu_slot_name(environ: Mapping[str, str] = os.environ) -> str | None:
    """The global concurrency limit guarding this machine's GPU, or None when turned off."""
    name = environ.get(GPU_SLOT_ENV, DEFAULT_GPU_SLOT).strip()
    return None if name.lower() in NO_SLOT else name


def train_timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds one attempt of the train task may take: $CAMTRAP_TRAIN_TIMEOUT_S, else a day."""
    text = environ.get(TRAIN_TIMEOUT_ENV, "").strip()
    if not text:
        return float(DEFAULT_TRAIN_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(
            f"{TRAIN_TIMEOUT_ENV}={text!r} is not a number of seconds — fix: set it to a "
            f"positive number (e.g. {2 * DEFAULT_TRAIN_TIMEOUT_S} for two days), or unset it "
            f"for the default {DEFAULT_TRAIN_TIMEOUT_S}"
        )
    return seconds


def ensure_slot_limit(name: str) -> bool:
    """Create the global concurrency limit `name` with 1 slot unless it exists (an existing one is
    left as it is). True when this call created it."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # another run created it a moment ago
            return False
        except ValueError as err:  # pydantic: a name Prefect does not accept
            raise ConfigError(
                f"{GPU_SLOT_ENV}={name!r} is not a name Prefect accepts for a concurrency limit "
                "— fix: use letters, digits and dashes, e.g. gpu-0"
            ) from err
    return True


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a run (a test, a script): the library's logger
        return logging.getLogger("camtrap")


def _holder() -> ConcurrencyLeaseHolder | None:
    """This flow run as the slot's holder, so `prefect gcl inspect` shows who has the GPU."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=context.flow_run.id)


@contextmanager
def gpu_slot(name: str | None = None) -> Iterator[None]:
    """Hold one slot of the GPU's global concurrency limit for the `with` block; wait for it as
    long as it takes (the holder's train task has a timeout). `name` defaults to
    $CAMTRAP_GPU_SLOT; no slot when that is off or no Prefect server is configured."""
    log = _logger()
    name = name or gpu_slot_name()
    if name is None:
        log.info("GPU slot off (%s=%s): runs on this machine may share it", GPU_SLOT_ENV,
                 os.environ.get(GPU_SLOT_ENV, ""))  # fmt: skip
        yield
        return
    if not get_current_settings().api.url:
        log.info("no GPU slot: no Prefect server (PREFECT_API_URL) to hold it across processes")
        yield
        return
    if ensure_slot_limit(name):
        log.info("created global concurrency limit %r with 1 slot", name)
    log.info("waiting for GPU slot %r (runs of every deployment take turns)", name)
    started = time.monotonic()
    # strict: if the limit vanished since ensure_slot_limit, fail instead of running unguarded.
    # A failed lease renewal (server briefly unreachable) must not kill hours of training, so
    # it only logs a warning.
    with concurrency(
        name,
        occupy=1,
        lease_duration=SLOT_LEASE_S,
        strict=True,
        holder=_holder(),
        raise_on_lease_renewal_failure=False,
    ):
        log.info("GPU slot %r acquired after %.0f s", name, time.monotonic() - started)
        yield
