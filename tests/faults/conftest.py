"""Fixtures of the fault suite: the tiny CPU config, the demo data, S3 behind a fault-injecting
proxy, runs of the CLI and of the flow module in child processes (so they can be killed with
SIGKILL), uninterrupted reference runs to compare against, and the check that a finished run is
whole (every file run.json lists is there with its sha256, and no temp file is left)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fixtures.tiny import TINY
from s3_proxy import FaultRates, FaultyS3Proxy, Schedule

ROOT = Path(__file__).resolve().parents[2]


def set_args(config: dict) -> list[str]:
    """{"train.epochs": 2} -> ["--set", "train.epochs=2"] (the CLI's and the flow module's)."""
    return [arg for key, value in config.items() for arg in ("--set", f"{key}={value}")]


# --- data and places ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset, 8 classes x 4 images (32 images), written once per session."""
    from camtrap.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("faults-demo"), per_class=4, seed=0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """This test's local cache of data, images and runs (a fresh 'machine')."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(path))
    return path


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256): what a test compares before/after."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --- S3 behind the fault-injecting proxy --------------------------------------------------------


@pytest.fixture
def faulty_s3(s3_server, monkeypatch) -> Iterator[Callable[..., FaultyS3Proxy]]:
    """faulty_s3(seed, FaultRates(...), only=None) -> a started proxy in front of the session's
    S3 server, with this process's AWS_ENDPOINT_URL pointed at it (restored afterwards)."""
    proxies: list[FaultyS3Proxy] = []

    def start(seed: int, rates: FaultRates, only=None) -> FaultyS3Proxy:
        schedule = Schedule(np.random.default_rng(seed), rates, only)
        proxy = FaultyS3Proxy(s3_server.endpoint, schedule).__enter__()
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        return proxy

    yield start
    for proxy in proxies:
        proxy.__exit__(None, None, None)


# --- checks on a finished run -------------------------------------------------------------------


def verify_run_dir(run_dir: Path) -> dict:
    """run.json says completed; every file it lists is there with that size and sha256; nothing
    else but run.json is there; no temp file is left anywhere in the folder."""
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed", info.get("status")
    assert info["files"], "run.json lists no files"
    for name, entry in info["files"].items():
        data = (run_dir / name).read_bytes()
        assert len(data) == entry["bytes"], name
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    present = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert [p for p in present if p.endswith(".tmp")] == []
    assert present - {"run.json"} <= set(info["files"]), sorted(present - set(info["files"]))
    return info


def verify_run_uri(s3_server, run_uri: str) -> dict:
    """The same for a run folder in S3: every file of run.json there with its sha256, and no
    temp object."""
    from camtrap.storage import uris

    bucket, prefix = uris.split_s3(run_uri)
    client = s3_server.client()
    info = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/run.json")["Body"].read())
    assert info["status"] == "completed", info.get("status")
    assert info["files"], "run.json lists no files"
    for name, entry in info["files"].items():
        data = client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    keys = s3_server.keys(bucket, prefix + "/")
    assert [k for k in keys if k.endswith(".tmp")] == []
    return info


def epochs_csv(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics" / "epochs.csv")


def s3_epochs_bytes(s3_server, run_uri: str) -> bytes:
    from camtrap.storage import uris

    bucket, prefix = uris.split_s3(run_uri)
    body = s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/metrics/epochs.csv")
    return body["Body"].read()


def s3_epochs_csv(s3_server, run_uri: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(s3_epochs_bytes(s3_server, run_uri)))


# --- child processes ----------------------------------------------------------------------------


# One compute thread per training process: on 2 shared cores, two spinning OpenMP threads per
# process made a 32 px resnet18 step 5-10 times slower (measured); the numbers compared between
# runs all come from processes set up alike.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def child_env(cache: Path, **extra: str) -> dict[str, str]:
    """This process's environment (AWS_* points at the session's S3 server once `s3_server` is
    up), with the child's own cache, one compute thread."""
    return {**os.environ, **ONE_THREAD, "CAMTRAP_CACHE_DIR": str(cache), **extra}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """In-process flows train with one thread too, like the child processes they compare to."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def cli_train(data: Path, out: Path, *args: str, config: dict | None = None) -> list[str]:
    """`camtrap train` (preset smoke, tiny config) as a child process command."""
    return [sys.executable, "-m", "camtrap.cli", "train", "--data", str(data), "--out", str(out),
            "--preset", "smoke", *set_args(config or TINY), *args]  # fmt: skip


def flow_module(data: str, out: str, *args: str, config: dict | None = None) -> list[str]:
    """`python -m flows.train_swin` (preset smoke, tiny config) as a child process command."""
    return [sys.executable, "-m", "flows.train_swin", "--data", data, "--out", out,
            "--preset", "smoke", *set_args(config or TINY), *args]  # fmt: skip


@dataclass
class Child:
    """A child process in its own process group, its output in files (never a pipe that fills
    up while nobody reads it)."""

    proc: subprocess.Popen
    started: float
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def tail(self) -> str:
        return f"stdout:\n{self.out()[-2000:]}\nstderr:\n{self.err()[-3000:]}"

    def kill(self) -> None:
        """SIGKILL the whole group: no handler, no cleanup, like a machine that dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s\n{self.tail()}") from None


def start(command: list[str], env: dict[str, str], logs: Path) -> Child:
    """Start `command` from the repository root; its stdout and stderr go to logs.out/.err."""
    logs.parent.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
    return Child(proc, time.monotonic(), stdout, stderr)


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# --- uninterrupted reference runs ---------------------------------------------------------------

# Enough epochs that training is a good share of a run (the rest: imports, validation, plots).
KILL_CONFIG = {**TINY, "train.epochs": 4}


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run: where it is, its CPU seconds, how many of them it had used when it
    began writing its run folder (before: imports and validation, where a kill tests nothing),
    its epochs.csv. Kill moments are in the child's CPU seconds, not wall seconds: on 2 shared
    cores a run's wall time varies twofold with what runs beside it (a kill drawn from a slow
    reference once came after a faster rerun had finished), its CPU time hardly."""

    location: str  # run folder (local) or run URI (s3://)
    cpu_seconds: float  # CPU seconds of the child, from its start to its exit
    writing_from: float  # CPU seconds of the child when split.csv appeared in the run folder
    epochs: pd.DataFrame

    def kill_time(self, seed: int) -> float:
        """A moment drawn from `seed` (in the child's CPU seconds) in the part of the run that
        writes its folder."""
        u = float(np.random.default_rng(seed).uniform())
        return self.writing_from + u * (self.cpu_seconds - self.writing_from)


_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds a running process has used so far, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (name)"
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND  # utime + stime


def timed_run(
    command: list[str], env: dict[str, str], logs: Path, writing: Callable[[], bool]
) -> tuple[Child, float, float]:
    """Run a child to its end (it must exit 0), watching for `writing()` to become true.
    Returns the child, its CPU seconds, and its CPU seconds when `writing()` first held."""
    child = start(command, env, logs)
    used, began = 0.0, None
    deadline = child.started + 300
    while child.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # it may exit between poll() and the read
            used = cpu_seconds(child.pid)
        if began is None and writing():
            began = used
        time.sleep(0.1)
    code = child.wait(timeout=1)
    assert code == 0, f"exit {code}\n{child.tail()}"
    assert began is not None, "the run folder never got a split.csv"
    return child, used, began


def only_run_dir(out: Path) -> Path:
    """The one run folder under out/smoke (hidden entries, such as leases, are no runs)."""
    (run_dir,) = [p for p in (out / "smoke").iterdir() if p.is_dir() and p.name[0] != "."]
    return run_dir


def _session_folder(tmp_path_factory) -> Path:
    """The test session's folder, above each xdist process's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_reference(
    tmp_path_factory, name: str, make: Callable[[], tuple[Reference, bytes]]
) -> Reference:
    """make() once per test session, shared by its xdist processes through a file: each process
    that needs a reference would otherwise run its own (10-15 CPU-seconds). make returns the
    Reference and its epochs.csv bytes. In the processes that did not make it, only the last
    part of `location` (the run id) means anything: the folder is the maker's."""
    folder = _session_folder(tmp_path_factory)
    saved = folder / f"{name}.json"
    with (folder / f"{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not saved.exists():
            reference, epochs = make()
            fields = {
                "location": reference.location,
                "cpu_seconds": reference.cpu_seconds,
                "writing_from": reference.writing_from,
                "epochs_csv": epochs.decode(),
            }
            saved.with_suffix(".tmp").write_text(json.dumps(fields))
            os.replace(saved.with_suffix(".tmp"), saved)
            return reference
    fields = json.loads(saved.read_text())
    epochs = pd.read_csv(io.BytesIO(fields.pop("epochs_csv").encode()))
    return Reference(**fields, epochs=epochs)


@pytest.fixture(scope="session")
def cli_reference(demo_dir, tmp_path_factory) -> Reference:
    """`camtrap train` with KILL_CONFIG, never interrupted, on a fresh cache."""

    def make() -> tuple[Reference, bytes]:
        base = tmp_path_factory.mktemp("cli-reference")
        out = base / "out"
        child, cpu, began = timed_run(
            cli_train(demo_dir, out, config=KILL_CONFIG), child_env(base / "cache"),
            base / "run", writing=lambda: any(out.glob("smoke/*/split.csv")),
        )  # fmt: skip
        run_dir = only_run_dir(out)
        verify_run_dir(run_dir)
        epochs = (run_dir / "metrics" / "epochs.csv").read_bytes()
        return Reference(str(run_dir), cpu, began, epochs_csv(run_dir)), epochs

    return shared_reference(tmp_path_factory, "cli-reference", make)


@pytest.fixture(scope="session")
def flow_env(prefect_server) -> Callable[[Path], dict[str, str]]:
    """flow_env(cache) -> the environment of a flow module child: the session's Prefect server
    (no temporary one per child) and S3 server, and its own cache. Without the GPU slot
    (tasks/gpu.py): a child killed while holding it keeps it until its lease runs out, about
    two minutes in which the rerun only waits (tests/integration covers the slot)."""

    def env(cache: Path) -> dict[str, str]:
        return child_env(cache, **prefect_server.env, CAMTRAP_GPU_SLOT="none")

    return env


@pytest.fixture(scope="session")
def flow_reference(s3_server, flow_env, demo_dir, tmp_path_factory) -> Reference:
    """`python -m flows.train_swin` on the demo data with outputs in S3, never interrupted."""

    def make() -> tuple[Reference, bytes]:
        base = tmp_path_factory.mktemp("flow-reference")
        bucket = s3_server.new_bucket("ref")
        out = f"s3://{bucket}/runs"
        child, cpu, began = timed_run(
            flow_module(str(demo_dir), out), flow_env(base / "cache"), base / "run",
            writing=lambda: any(k.endswith("/split.csv") for k in s3_server.keys(bucket)),
        )  # fmt: skip
        run_uri = last_line(child.out())
        assert run_uri.startswith(f"{out}/smoke/"), run_uri
        verify_run_uri(s3_server, run_uri)
        epochs = s3_epochs_bytes(s3_server, run_uri)
        return Reference(run_uri, cpu, began, pd.read_csv(io.BytesIO(epochs))), epochs

    return shared_reference(tmp_path_factory, "flow-reference", make)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """This file's helpers for the test modules (a conftest is not a module to import from:
    several files of the suite are named conftest.py)."""
    return SimpleNamespace(
        TINY=TINY,
        KILL_CONFIG=KILL_CONFIG,
        set_args=set_args,
        tree=tree,
        verify_run_dir=verify_run_dir,
        verify_run_uri=verify_run_uri,
        epochs_csv=epochs_csv,
        s3_epochs_csv=s3_epochs_csv,
        child_env=child_env,
        cli_train=cli_train,
        flow_module=flow_module,
        start=start,
        last_line=last_line,
        only_run_dir=only_run_dir,
        cpu_seconds=cpu_seconds,
    )
