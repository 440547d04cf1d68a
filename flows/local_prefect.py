"""Prefect's temporary server, made to start on the first run of a fresh machine.

With no Prefect API configured, a flow run starts a temporary server. On its first start that
server creates and migrates its SQLite database (about 115 migrations, then block registration)
before it answers /health, and Prefect gives it 20 s: on a busy laptop the first run failed with
"Timed out while attempting to connect to ephemeral Prefect API server" and a long traceback.

`prepare_temporary_server()` migrates the database first, with no deadline, then starts the
server with a longer deadline, so the flow run finds it up. Failures are `LocalPrefectError`s,
whose message says what failed and how to fix it (the flow's main prints it as one line)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from prefect.settings import Settings, get_current_settings

from camtrap.errors import CamtrapError

# With the database migrated beforehand, what remains (imports, block registration) takes seconds;
# the margin is for a machine busy with something else. A user's own setting wins.
STARTUP_TIMEOUT_S = 600
_FIX_API = "set PREFECT_API_URL to a running Prefect server (e.g. `prefect server start`)"


class LocalPrefectError(CamtrapError):
    """Prefect's temporary server cannot be prepared or started."""


def prepare_temporary_server(settings: Settings | None = None) -> None:
    """When no Prefect API is configured: migrate the temporary server's database, then start the
    server (the flow run reuses it). Does nothing when PREFECT_API_URL is set (env or profile)."""
    settings = settings or get_current_settings()
    if settings.api.url:
        return
    if not settings.server.ephemeral.enabled:
        raise LocalPrefectError(
            "no Prefect API: PREFECT_API_URL is not set and the temporary server is disabled — "
            f"fix: {_FIX_API}, or set PREFECT_SERVER_EPHEMERAL_ENABLED=true"
        )
    # The first time on a machine this is silent for a minute or more: say what is going on.
    print(
        f"preparing Prefect's temporary server (PREFECT_HOME {settings.home}; "
        "the first time on a machine it creates its database, a minute or two)",
        file=sys.stderr,
    )
    if settings.server.database.migrate_on_start:  # a user who turned migrations off keeps that
        migrate_database(settings)
    start_temporary_server(startup_timeout_s(settings))


def startup_timeout_s(settings: Settings) -> int:
    """PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS when the user set it (env var or profile),
    else STARTUP_TIMEOUT_S (Prefect's own default, 20 s, is too short for a busy machine)."""
    ephemeral = settings.server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return ephemeral.startup_timeout_seconds
    return STARTUP_TIMEOUT_S


def migrate_database(settings: Settings) -> None:
    """`prefect server database upgrade` in a child process, with the environment the temporary
    server gets (so both see the same database). About 5 s when the database is current."""
    command = [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"]
    env = {**os.environ, **settings.to_environment_variables(exclude_unset=True)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LocalPrefectError(
            f"could not create or migrate Prefect's database in {settings.home} "
            f"({_last_error(proc.stdout + proc.stderr)}) — fix: check that PREFECT_HOME "
            f"({settings.home}) is a writable folder, or {_FIX_API}"
        )


def start_temporary_server(timeout_s: int) -> None:
    """Start the temporary server the flow run will use (Prefect keeps one per process)."""
    from prefect.server.api.server import SubprocessASGIServer  # the server's imports are heavy

    server = SubprocessASGIServer()
    try:
        server.start(timeout=timeout_s)
    except Exception as err:  # RuntimeError past the deadline, httpx errors on a bad answer
        raise LocalPrefectError(
            f"Prefect's temporary server did not start within {timeout_s} s "
            f"({_why_not_started(server, err)}) — fix: {_FIX_API}, or give it longer with "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
        ) from err


def _why_not_started(server: Any, err: Exception) -> str:
    process = server.server_process
    if process is not None and process.poll() is not None:
        return f"it exited with status {process.returncode}; its messages are above"
    if isinstance(err, RuntimeError) and "Timed out" in str(err):
        return "it did not answer"
    return f"{type(err).__name__}: {err}"


def _last_error(output: str) -> str:
    """The exception line at the end of a child's traceback, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1]


def run_main(prepare: Callable[[], Callable[[], Any]]) -> int:
    """The shared body of the flows' `python -m` mains. `prepare` checks the arguments (a
    refused one, a mistyped local folder: a CamtrapError, one line, before any server starts)
    and returns what runs the flow (returning its final state); with no Prefect server
    configured, Prefect's temporary server is made ready in between. Returns the exit status."""
    try:
        start = prepare()
        prepare_temporary_server()  # no-op with PREFECT_API_URL; else works on a fresh machine
    except CamtrapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return exit_status(start())


def exit_status(state: Any) -> int:
    """A `python -m flows...` main's ending for its flow's final state: the result (a URI) on
    stdout and 0; else one error line on stderr, 2 for a user's error (CamtrapError) and 1 for
    anything else (a bug or a crash: the run's logs have the traceback)."""
    if state.is_completed():
        print(state.result())
        return 0
    try:
        state.result()
    except CamtrapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 1
