import contextvars
import os
import threading
import time

import pytest
import torch

from camtrap import checkpoint
from camtrap.checkpoint import BackgroundWriter, cpu_copy
from camtrap.errors import StorageError


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.txt"
    checkpoint.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert sorted(os.listdir(target.parent)) == ["b.txt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    checkpoint.atomic_write_bytes(target, b"old")

    def crash(*args):
        raise OSError("disk full")

    # A crash between writing the temp file and renaming it must not touch the real file.
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        checkpoint.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["state.pt"]


def test_save_and_load_torch_with_weights_only(tmp_path):
    state = {"epoch": 3, "w": torch.arange(4.0), "history": [{"epoch": 1, "loss": 0.5}]}
    checkpoint.save_torch(state, tmp_path / "s.pt")
    loaded = checkpoint.load_torch(tmp_path / "s.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], torch.arange(4.0))
    assert loaded["history"] == [{"epoch": 1, "loss": 0.5}]


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(StorageError, match="delete it"):
        checkpoint.load_torch(tmp_path / "last.pt")


def test_rng_state_round_trip_reproduces_draws():
    saved = checkpoint.rng_state()
    first = torch.rand(3)
    checkpoint.restore_rng_state(saved)
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
