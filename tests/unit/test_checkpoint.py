import contextvars
import errno
import os
import stat
import threading
import time

import pytest
import torch

from camtrap import checkpoint
from camtrap.checkpoint import (
    BackgroundWriter,
    cpu_copy,
    load_scaler_state,
    restore_rng_state,
)
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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask, mode):
    # Group-readable checkpoints (0o666 less the umask), not mkstemp's 0o600.
    previous = os.umask(umask)
    try:
        checkpoint.atomic_write_bytes(tmp_path / "best.pth", b"w")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "best.pth").stat().st_mode) == mode


def test_atomic_write_fsyncs_the_file_then_the_folder_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def noting_fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def noting_replace(source, target) -> None:
        events.append("replace")
        replace(source, target)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    monkeypatch.setattr(os, "replace", noting_replace)
    checkpoint.atomic_write_bytes(tmp_path / "state.pt", b"s")
    assert events == ["fsync file", "replace", "fsync folder"]


def test_a_full_disk_is_a_storage_error_naming_the_path(tmp_path, monkeypatch):
    target = tmp_path / "state" / "last.pt"
    checkpoint.atomic_write_bytes(target, b"old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError) as info:
        checkpoint.atomic_write_bytes(target, b"new")
    assert str(info.value) == (
        f"disk full at {target} — fix: free space or set CAMTRAP_CACHE_DIR to a bigger disk"
    )
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["last.pt"]


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
