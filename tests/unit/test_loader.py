"""The training batches (camtrap.loader.TrainBatches): no last batch of one sample, which
BatchNorm cannot train on."""

from __future__ import annotations

import pytest
from torch.utils.data import SequentialSampler

from camtrap.loader import TrainBatches


@pytest.mark.parametrize(
    ("n", "batch", "sizes"),
    [
        (17, 8, [8, 8]),  # the 17th sample waits for an epoch that batches it with another
        (16, 8, [8, 8]),
        (18, 8, [8, 8, 2]),
        (9, 8, [8]),
        (1, 8, [1]),  # a split of one sample keeps it
        (3, 1, [1, 1, 1]),  # batches of one were asked for
    ],
)
def test_a_last_batch_of_one_sample_is_left_out(n, batch, sizes):
    batches = TrainBatches(SequentialSampler(range(n)), batch)
    assert [len(b) for b in batches] == sizes
    assert len(batches) == len(sizes)
