"""camtrap.checkpoints: RNG and scaler state round trips, the background writer (one job in
flight, in order, errors on the next submit, the submitter's context), CPU snapshots."""

import contextvars
import threading
import time

import pytest
import torch

from camtrap import checkpoints
from camtrap.checkpoints import BackgroundWriter, cpu_copy, load_scaler_state, restore_rng_state


def test_rng_state_round_trip_reproduces_draws():
    saved = checkpoints.rng_state()
    first = torch.rand(3)
    checkpoints.restore_rng_state(saved)
    assert torch.equal(torch.rand(3), first)


def test_background_writer_keeps_one_job_in_flight_and_in_order():

    events: list[str] = []
    release = threading.Event()

    def slow() -> None:
        release.wait(5)
        events.append("first done")

    writer = BackgroundWriter()
    writer.submit(slow)
    starter = threading.Thread(target=lambda: writer.submit(lambda: events.append("second")))
    starter.start()
    time.sleep(0.2)
    assert events == []  # the second job waits for the first: never two epochs unsaved
    release.set()
    starter.join(5)
    writer.wait()
    assert events == ["first done", "second"]


def test_background_writer_raises_a_jobs_error_on_the_next_submit():
    class DiskFull(OSError):
        pass

    def fail() -> None:
        raise DiskFull("no space left")

    writer = BackgroundWriter()
    writer.submit(fail)
    with pytest.raises(DiskFull):
        writer.submit(lambda: None)
    writer.wait()  # raised once, then clear


def test_background_jobs_see_the_submitters_context():

    run = contextvars.ContextVar("run", default="none")
    run.set("run-1")  # what Prefect's task context is: a contextvar
    seen: list[str] = []
    writer = BackgroundWriter()
    writer.submit(lambda: seen.append(run.get()))
    writer.wait()
    assert seen == ["run-1"]


def test_cpu_copy_is_a_snapshot():
    weights = torch.zeros(3)
    state = {"model": {"w": weights}, "history": [1, 2], "epoch": 4}
    copy = cpu_copy(state)
    weights += 1  # training goes on
    assert copy["model"]["w"].tolist() == [0.0, 0.0, 0.0] and copy["history"] == [1, 2]


def test_a_cpu_runs_empty_scaler_state_loads_into_an_fp16_scaler():
    # Saved on CPU (AMP off: the disabled scaler's state is {}), resumed on a GPU with fp16.
    saved = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert saved == {}
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    load_scaler_state(scaler, saved)  # torch's own load_state_dict raises on {}
    assert scaler.get_scale() == 1024.0


def test_an_fp16_runs_scaler_state_is_ignored_by_a_disabled_scaler_and_kept_by_an_enabled_one():
    fp16 = torch.amp.GradScaler("cpu", init_scale=256.0, enabled=True)
    fp16.scale(torch.ones(1, requires_grad=True))  # creates the scale tensor
    saved = fp16.state_dict()
    load_scaler_state(torch.amp.GradScaler("cpu", enabled=False), saved)  # back on CPU: no error
    other = torch.amp.GradScaler("cpu", init_scale=2.0, enabled=True)
    load_scaler_state(other, saved)
    assert other.get_scale() == 256.0


def test_rng_state_saved_with_more_gpus_than_now_restores_what_exists(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((int(s[0]), d)))
    state = {"torch": torch.get_rng_state(), "cuda": [torch.tensor([7], dtype=torch.uint8)] * 4}
    restore_rng_state(state)  # saved with 4 GPUs visible, 1 now
    assert restored == [(7, 0)]
    restored.clear()
    restore_rng_state({"torch": torch.get_rng_state()})  # saved on CPU: GPUs keep their own
    assert restored == []
