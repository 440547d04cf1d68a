import os

import pytest
import torch

from camtrap import checkpoint
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
