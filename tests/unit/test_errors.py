"""camtrap.errors: user errors keep their text and problems when they cross DataLoader worker
processes (torch's wrapper, pickling). NaN losses and out-of-memory: tests/unit/test_engine.py."""

import copy
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper
from torch.utils.data import DataLoader, Dataset

from camtrap.errors import (
    DataError,
    OutOfMemory,
    Problem,
    StorageError,
    TrainingDiverged,
)
from camtrap.images import open_rgb


def _raised(error: BaseException) -> BaseException:
    """What torch's DataLoader hands the main process for `error` raised in worker 0."""
    try:
        raise error
    except BaseException:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(type(error)) as caught:
        wrapper.reraise()
    return caught.value


def test_errors_keep_their_text_through_torchs_worker_wrapper():
    problems = [Problem("a.jpg", "is truncated", "re-export it", line=3), Problem("b.jpg", "gone")]
    data = DataError(problems, root="/data")
    storage = StorageError("image cache /c/pack.bin ended early; run the cache step again")
    for error in (data, storage, TrainingDiverged("lr too high — fix: lower it")):
        assert str(_raised(error)) == str(error)
    assert str(data).startswith("2 problems with the dataset in /data:\n  - a.jpg, line 3:")


def test_the_error_itself_not_its_cause_is_kept():
    try:
        try:
            raise StorageError("the cause")
        except StorageError as cause:
            raise StorageError("the error — fix: this") from cause
    except StorageError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(StorageError) as caught:
        wrapper.reraise()
    assert str(caught.value) == "the error — fix: this"


def test_a_plain_message_is_kept_as_is():
    assert str(DataError("2 problems with the dataset")) == "2 problems with the dataset"
    assert str(StorageError("Caught nothing")) == "Caught nothing"


def test_errors_survive_pickling_with_their_problems():
    error = DataError([Problem("a.jpg", "is empty (0 bytes)", "replace it", id="x1")], root="r")
    copy_ = pickle.loads(pickle.dumps(error))
    assert str(copy_) == str(error) and copy_.problems == error.problems and copy_.root == "r"
    for other in (OutOfMemory("too big — fix: smaller"), TrainingDiverged("nan — fix: lr")):
        again = pickle.loads(pickle.dumps(other))
        assert type(again) is type(other) and str(again) == str(other)
    assert str(copy.copy(error)) == str(error)


class DecodedImages(Dataset):
    """Decodes each file through camtrap.images, as a direct-decode loader would."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(open_rgb(self.paths[i])).copy())


def _jpeg(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    path.write_bytes(buffer.getvalue())
    return path


def test_a_data_error_in_a_loader_worker_reaches_the_user_intact(tmp_path):
    paths = [_jpeg(tmp_path / f"img{i}.jpg", i) for i in range(4)]
    os.truncate(paths[2], paths[2].stat().st_size // 2)  # broken after validation
    with pytest.raises(DataError) as direct:
        open_rgb(paths[2])
    expected = str(direct.value)
    assert f"{paths[2]}: is truncated or corrupt" in expected and "— fix: re-export" in expected

    loader = DataLoader(DecodedImages(paths), batch_size=1, num_workers=2)
    with pytest.raises(DataError) as err:
        list(loader)
    assert str(err.value) == expected
