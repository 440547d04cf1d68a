"""Shared fixtures: an S3 server (moto, real HTTP on 127.0.0.1) and a Prefect server.

Both are session-scoped and started only by the tests that ask for them. Nothing here reaches
beyond 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT_START_TIMEOUT_S = 90

# Credentials for moto only: any non-empty values work there.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_SESSION_TOKEN": "testing-session-token",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def pytest_configure(config) -> None:
    """Under pytest-xdist, in each test process (before torch is imported):
    - one compute thread for torch, here and in the processes tests start: with several test
      processes on 2 cores, torch's default (a thread per core each) made them fight over the
      cores, and a training test ran 4x slower than alone;
    - its own folder inside PREFECT_HOME (when set, as in CI: a fresh one), so two processes
      never migrate one new database at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    home = os.environ.get("PREFECT_HOME")
    if home:
        os.environ["PREFECT_HOME"] = str(Path(home) / worker)


# The longest tests (a minute or more on 2 busy cores): started first.
LONGEST_TESTS = {
    "test_camtrap_demo_on_a_fresh_machine_waits_for_a_slow_first_migration",
    "test_smoke_preset_clearly_learns_the_demo_data",
}


def pytest_collection_modifyitems(config, items) -> None:
    """The longest tests first (the longest of all, end-to-end, slow, then the rest; otherwise
    in file order). With `--dist load --maxschedchunk 1` test processes take one test at a time
    in this order as they free up, so they finish together instead of waiting on one long test
    picked up last."""

    def rank(item) -> int:
        if item.originalname in LONGEST_TESTS:
            return 0
        if item.get_closest_marker("e2e"):
            return 1
        return 2 if item.get_closest_marker("slow") else 3

    items.sort(key=rank)  # stable: file order within a rank


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> Iterator[Path]:
    """The session's camtrap cache (image cache, data and run copies): a new folder, never the
    user's ~/.cache/camtrap. Tests that need a fresh "machine" set their own (`cache_dir`)."""
    path = tmp_path_factory.mktemp("camtrap-cache")
    saved = os.environ.get("CAMTRAP_CACHE_DIR")
    os.environ["CAMTRAP_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("CAMTRAP_CACHE_DIR", None)
    else:
        os.environ["CAMTRAP_CACHE_DIR"] = saved


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    return free_port()


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # AWS_* variables that point a process at this server

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_tree(self, local: Path, bucket: str, prefix: str) -> str:
        """Every file under `local` to s3://bucket/prefix/...; returns that URI."""
        client = self.client()
        for path in sorted(local.rglob("*")):
            if path.is_file():
                client.upload_file(
                    str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}"
                )
        return f"s3://{bucket}/{prefix}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _atomic_conditional_puts() -> None:
    """S3 makes a conditional PUT (If-None-Match: *, If-Match: etag) atomic; moto checks, then
    writes, so two racing writers could both win under load (seen: the lease race test). One
    lock around moto's PUT handling gives the server in these tests S3's guarantee."""
    import threading

    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "atomic", False):
        return
    lock = threading.Lock()
    put_object = S3Response.put_object

    def atomic_put_object(self):
        with lock:
            return put_object(self)

    atomic_put_object.atomic = True
    S3Response.put_object = atomic_put_object


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, and this process's AWS environment pointed at it."""
    from moto.server import ThreadedMotoServer

    _atomic_conditional_puts()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(env)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(key, None)
    try:
        yield S3Server(endpoint, env)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's S3 server."""
    return s3_server.new_bucket()


# --- Prefect --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    env: dict[str, str]  # for `prefect ...` subprocesses: API URL, home, no telemetry

    def cli(self, *args: str, timeout: float = 120, extra_env: dict | None = None, check=True):
        """Run `prefect --no-prompt ARGS` from the repo root against this server."""
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
        proc = subprocess.run(
            [prefect, "--no-prompt", *args],
            cwd=ROOT,
            env={**os.environ, **self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"prefect {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    port = api_url.rsplit(":", 1)[1].split("/")[0]
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": port,
        "PREFECT_SERVER_UI_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def _wait_healthy(api_url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + PREFECT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {PREFECT_START_TIMEOUT_S}s")


def stop_process(proc: subprocess.Popen, signals=(signal.SIGINT, signal.SIGTERM)) -> None:
    """Stop a process we started (its own process group), politely first, then kill it."""
    for sig in signals:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _migrated_prefect_db(tmp_path_factory) -> Path:
    """A Prefect database with every migration applied, made once per test session and shared
    by its xdist processes: each session server starts from a copy instead of migrating its own
    (about 10 s of CPU each). The first-run tests start from nothing on purpose, not from this."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above each process's own
    template = shared / "prefect-db-template" / "prefect.db"
    with _file_lock(shared / "prefect-db-template.lock"):
        if not template.exists():
            staging = shared / f"prefect-db-staging-{os.getpid()}"
            staging.mkdir()
            prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
            subprocess.run(
                [prefect, "--no-prompt", "server", "database", "upgrade", "-y"],
                env={**os.environ, "PREFECT_HOME": str(staging),
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
                capture_output=True, check=True, timeout=PREFECT_START_TIMEOUT_S * 2,
            )  # fmt: skip
            os.replace(staging, template.parent)
    return template


# The session server's loops that no test needs, off: they cost CPU every few seconds beside the
# tests, and two of them would change what tests see (the scheduler adds a deployment's future
# cron runs; late-runs turns a restart that waits its turn from Scheduled into Late). Kept on:
# task-run recording, event persistence, triggers (automations) and the repossessor (it frees
# the concurrency-slot leases of dead runs: the GPU slot).
UNUSED_SERVICES = "SCHEDULER LATE_RUNS FOREMAN PAUSE_EXPIRATIONS CANCELLATION_CLEANUP"
UNUSED_SERVER_SERVICES_OFF = {
    "PREFECT_SERVER_UI_ENABLED": "false",
    **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in UNUSED_SERVICES.split()},
}


@pytest.fixture
def migrated_prefect_home(tmp_path, tmp_path_factory) -> Path:
    """A PREFECT_HOME whose database is already migrated, for tests of a temporary server that
    are not about the first start (test_flow_module.py's first-run tests start from nothing)."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    shutil.copyfile(_migrated_prefect_db(tmp_path_factory), home / "prefect.db")
    return home


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port with its own PREFECT_HOME (sqlite)."""
    home = tmp_path_factory.mktemp("prefect-home")
    shutil.copyfile(_migrated_prefect_db(tmp_path_factory), home / "prefect.db")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = prefect_env(home, api_url)
    log = home / "server.log"
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                prefect,
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                env["PREFECT_SERVER_API_PORT"],
            ],
            env={**os.environ, **env, **UNUSED_SERVER_SERVICES_OFF},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(api_url, proc, log)
        yield PrefectServer(api_url, home, env)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """This process's Prefect settings pointed at the session's server (in-process flows)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    updates = {
        PREFECT_API_URL: prefect_server.api_url,
        PREFECT_HOME: str(prefect_server.home / "client"),
        PREFECT_LOCAL_STORAGE_PATH: str(prefect_server.home / "client" / "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    # Threads that do not inherit the settings' context (a lease renewal, a download pool) read
    # the environment: without it there, each started its own temporary Prefect server.
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = prefect_server.api_url
    try:
        with temporary_settings(updates=updates):
            yield prefect_server
            _drain_prefect_workers()
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


def _drain_prefect_workers() -> None:
    """Send queued logs and events before the server stops (else they retry at exit)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.drain_all(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


# --- reading a flow run back through the Prefect API ----------------------------------------------


@dataclass
class RunRecord:
    """A finished flow run as the Prefect API shows it."""

    state: str  # state name: Completed, Failed, ...
    name: str
    message: str
    tasks: dict[str, list[str]]  # task name (no suffix) -> state names of its runs, in order
    run_counts: dict[str, int]  # task name -> run_count of its last run (1 + retries used)
    artifacts: list  # prefect.client.schemas.objects.Artifact, oldest first
    logs: list[str]


def read_run(flow_run_id) -> RunRecord:
    """Read a flow run, its task runs, artifacts and logs (settings must point at the API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    only = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=only, limit=200)
        artifacts = client.read_artifacts(flow_run_filter=only, limit=200)
        logs = []  # the API returns 200 at most per call: page through all of them
        while page := client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            limit=200,
            offset=len(logs),
        ):
            logs.extend(page)
            if len(page) < 200:
                break
    tasks: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for task_run in sorted(task_runs, key=lambda t: t.expected_start_time or t.created):
        name = task_run.name.rsplit("-", 1)[0]
        tasks.setdefault(name, []).append(task_run.state.name if task_run.state else "?")
        counts[name] = task_run.run_count
    return RunRecord(
        state=run.state.name if run.state else "?",
        name=run.name,
        message=(run.state.message or "") if run.state else "",
        tasks=tasks,
        run_counts=counts,
        artifacts=sorted(artifacts, key=lambda a: a.created),  # oldest first
        logs=[log.message for log in logs],
    )


@pytest.fixture(name="read_run")
def read_run_fixture(prefect_api):
    """read_run(flow_run_id) -> RunRecord, through the session's Prefect API."""
    return read_run


@pytest.fixture(name="read_run_at")
def read_run_at_fixture():
    """read_run_at(api_url, flow_run_id) -> RunRecord, through the Prefect API at api_url (a
    server the test started itself, not the session's)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def read(api_url: str, flow_run_id) -> RunRecord:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            return read_run(flow_run_id)

    return read
