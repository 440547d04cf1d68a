"""camtrap.torchfile: torch files saved atomically and loaded with weights_only."""

import pytest
import torch

from camtrap import torchfile
from camtrap.errors import StorageError


def test_save_and_load_torch_with_weights_only(tmp_path):
    state = {"epoch": 3, "w": torch.arange(4.0), "history": [{"epoch": 1, "loss": 0.5}]}
    torchfile.save_torch(state, tmp_path / "s.pt")
    loaded = torchfile.load_torch(tmp_path / "s.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], torch.arange(4.0))
    assert loaded["history"] == [{"epoch": 1, "loss": 0.5}]


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(StorageError, match="delete it"):
        torchfile.load_torch(tmp_path / "last.pt")
