"""One run per GPU across deployments (tasks/gpu.py) and the tasks' time limits.

The slow tests run the real `train-swin` flow against the session's Prefect server on the local
demo data, with the train/evaluate/publish tasks replaced by stand-ins that record when
"training" ran: two runs of different presets at once must take turns on the GPU slot (and do
overlap with the slot turned off, so the check can fail), and a train task past its timeout
fails the run clearly and gives the slot back."""

from __future__ import annotations

import contextlib
import contextvars
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect import Task

from camtrap.errors import ConfigError
from tasks.gpu import DEFAULT_TRAIN_TIMEOUT_S, gpu_slot, gpu_slot_name, train_timeout_s
from tasks.refs import TrainSummary, ValMetrics

ROOT = Path(__file__).resolve().parents[2]


# --- settings, without a server ------------------------------------------------------------------


def test_gpu_slot_name_defaults_to_gpu_and_can_be_turned_off():
    assert gpu_slot_name({}) == "gpu"
    assert gpu_slot_name({"CAMTRAP_GPU_SLOT": " gpu-1 "}) == "gpu-1"
    for off in ("", "none", "OFF", " None "):
        assert gpu_slot_name({"CAMTRAP_GPU_SLOT": off}) is None


def test_train_timeout_defaults_to_a_day_and_rejects_what_is_not_seconds():
    assert train_timeout_s({}) == 86400.0 == DEFAULT_TRAIN_TIMEOUT_S
    assert train_timeout_s({"CAMTRAP_TRAIN_TIMEOUT_S": "172800"}) == 172800.0
    assert train_timeout_s({"CAMTRAP_TRAIN_TIMEOUT_S": " 0.5 "}) == 0.5
    for bad in ("abc", "0", "-60", "inf", "nan", "1h"):
        with pytest.raises(ConfigError, match=r"CAMTRAP_TRAIN_TIMEOUT_S=.* — fix: set it to a"):
            train_timeout_s({"CAMTRAP_TRAIN_TIMEOUT_S": bad})


def _tasks() -> dict[str, Task]:
    import tasks.data
    import tasks.evaluation
    import tasks.publish
    import tasks.training

    modules = (tasks.data, tasks.evaluation, tasks.publish, tasks.training)
    return {t.name: t for m in modules for t in vars(m).values() if isinstance(t, Task)}


def test_every_task_has_a_timeout():
    found = _tasks()
    assert {"fetch-metadata", "fetch-images", "validate-and-split", "train", "evaluate"} <= set(
        found
    )
    missing = sorted(name for name, t in found.items() if not t.timeout_seconds)
    assert missing == []
    assert found["run-status"].timeout_seconds == 300
    assert found["fetch-images"].timeout_seconds == 4 * 3600


@pytest.mark.slow  # a second Python process: several seconds
def test_train_timeout_follows_the_environment_of_the_flow_process():
    code = "from tasks.training import train; print(train.timeout_seconds)"
    env = {**os.environ, "CAMTRAP_TRAIN_TIMEOUT_S": "7200"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "7200.0"


class _NoLimits:
    """A Prefect client on a server without limits (ensure_slot_limit's view of one)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_global_concurrency_limit_by_name(self, name):
        from prefect.exceptions import ObjectNotFound

        raise ObjectNotFound(http_exc=Exception("404"))

    def create_global_concurrency_limit(self, limit):
        self.created = limit


def test_a_slot_name_prefect_rejects_is_a_config_error(monkeypatch):
    import tasks.gpu

    client = _NoLimits()
    monkeypatch.setattr(tasks.gpu, "get_client", lambda **kwargs: client)
    assert tasks.gpu.ensure_slot_limit("gpu-0") is True
    assert (client.created.name, client.created.limit) == ("gpu-0", 1)
    with pytest.raises(ConfigError, match=r"CAMTRAP_GPU_SLOT='gpu/0' .* — fix: use letters"):
        tasks.gpu.ensure_slot_limit("gpu/0")


def test_no_slot_without_a_prefect_server(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import tasks.gpu

    def fail(name: str) -> bool:
        raise AssertionError(f"limit {name!r} created without a server")

    monkeypatch.setattr(tasks.gpu, "ensure_slot_limit", fail)
    monkeypatch.setenv("CAMTRAP_GPU_SLOT", "gpu")
    entered = []
    with temporary_settings(restore_defaults={PREFECT_API_URL}), gpu_slot():
        entered.append(True)
    assert entered == [True]


# --- against a Prefect server --------------------------------------------------------------------


@dataclass
class Interval:
    preset: str
    start: float
    end: float


class FakeTraining:
    """Stands in for the train task: records when it ran. Whoever gets here first waits until
    both runs have their image cache (they are at the GPU step), then up to `wait_s` for the
    other inside training: without the slot both are here at once, so they overlap for sure;
    with it the other cannot come in, the wait runs out and the first ends alone."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.cached = 0
        self.both_cached = threading.Event()
        self.barrier = threading.Barrier(2)
        self.intervals: list[Interval] = []
        self.lock = threading.Lock()

    def spy_on(self, cache_images):
        def cache_then_count(*args, **kwargs):
            result = cache_images(*args, **kwargs)
            with self.lock:
                self.cached += 1
                if self.cached == 2:
                    self.both_cached.set()
            return result

        return cache_then_count

    def train(self, config, snapshot, run) -> TrainSummary:
        start = time.monotonic()
        assert self.both_cached.wait(timeout=180), "the other run never reached the GPU step"
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(timeout=self.wait_s)
        with self.lock:
            self.intervals.append(Interval(config.output.stage, start, time.monotonic()))
        return TrainSummary(best_epoch=1, best_value=0.5, epochs_run=1, resumed_from=0)


def _overlap(a: Interval, b: Interval) -> bool:
    return a.start < b.end and b.start < a.end


def _run_in_threads(jobs: dict[str, dict], demo_dir: Path, output: Path) -> dict[str, object]:
    """train_swin for each preset -> overrides, all at once, one thread each; their states."""
    from flows.train_swin import train_swin

    states: dict[str, object] = {}

    def run(preset: str, overrides: dict) -> None:
        states[preset] = train_swin(
            str(demo_dir), str(output), preset, overrides, return_state=True
        )

    # Each thread in a copy of this context: Prefect's settings (the server's URL) live there.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(run, *item))
        for item in jobs.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a flow run did not finish in 300 s"
    return states


# Two presets (two deployments' runs) on the demo data; different image sizes keep their image
# caches apart. Nothing is trained: FakeTraining stands in.
JOBS = {
    "part1": {"model.weights": "none", "data.image_size": 32, "data.num_workers": 0},
    "smoke": {"data.image_size": 40, "data.num_workers": 0},
}


def _read_limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "cache_dir")
@pytest.mark.parametrize(("slot", "wait_s"), [("gpu-test", 3.0), ("none", 60.0)])
def test_runs_of_two_presets_take_turns_on_the_gpu_slot(
    slot, wait_s, demo_dir, tmp_path, monkeypatch
):
    import flows.train_swin

    name = f"{slot}-{uuid.uuid4().hex[:8]}" if slot != "none" else slot
    monkeypatch.setenv("CAMTRAP_GPU_SLOT", name)
    fake = FakeTraining(wait_s)
    monkeypatch.setattr(flows.train_swin, "train", fake.train)
    monkeypatch.setattr(
        flows.train_swin, "cache_images", fake.spy_on(flows.train_swin.cache_images)
    )
    monkeypatch.setattr(flows.train_swin, "evaluate", lambda *a: ValMetrics(metrics={}))
    monkeypatch.setattr(flows.train_swin, "publish", lambda *a: "")

    states = _run_in_threads(JOBS, demo_dir, tmp_path / "runs")
    for preset, state in states.items():
        assert state.is_completed(), f"{preset}: {state.message}"
    first, second = sorted(fake.intervals, key=lambda i: i.start)
    assert {first.preset, second.preset} == {"part1", "smoke"}
    if slot == "none":
        assert _overlap(first, second), fake.intervals
        return
    assert first.end <= second.start, fake.intervals  # the second waited for the slot
    limit = _read_limit(name)  # created on first use, with one slot, and free again
    assert (limit.limit, limit.active_slots) == (1, 0)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "cache_dir")
def test_a_train_task_past_its_timeout_fails_the_run_and_frees_the_slot(
    demo_dir, tmp_path, monkeypatch, read_run
):
    import camtrap.stages
    import flows.train_swin
    import tasks.training
    from flows.train_swin import train_swin

    name = f"gpu-timeout-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CAMTRAP_GPU_SLOT", name)

    def hang(*args, **kwargs):  # short sleeps: a timeout may only land between them
        for _ in range(300):
            time.sleep(0.1)
        raise AssertionError("the timeout did not stop training")

    monkeypatch.setattr(camtrap.stages, "train", hang)  # what the task imports
    quick = tasks.training.train.with_options(timeout_seconds=2, retries=0)
    monkeypatch.setattr(flows.train_swin, "train", quick)

    state = train_swin(str(demo_dir), str(tmp_path / "runs"), "smoke", JOBS["smoke"],
                       return_state=True)  # fmt: skip
    assert state.is_failed()
    record = read_run(state.state_details.flow_run_id)
    assert record.tasks["train"] == ["TimedOut"]  # Prefect's state for a task past its limit
    deadline = time.monotonic() + 30  # the slot's release reaches the server asynchronously
    while _read_limit(name).active_slots and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _read_limit(name).active_slots == 0  # the GPU is free for the next run
