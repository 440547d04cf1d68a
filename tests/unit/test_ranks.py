"""camtrap.ranks, the leaf collectives of DDP: how many processes, per-rank seeds, the train
shard, a finite check across ranks. (Training on two processes: tests/faults/test_ddp.py.)"""

import pytest
import torch

from camtrap import ranks
from camtrap.errors import ConfigError
from camtrap.ranks import Group


@pytest.mark.parametrize(
    ("nproc", "device", "gpus", "expected"),
    [
        ("auto", "auto", 0, 1),  # no GPU: one process
        ("auto", "auto", 4, 4),  # one per GPU
        ("auto", "cpu", 4, 1),  # GPUs not used
        (2, "cpu", 0, 2),  # two gloo processes on CPU
        (2, "auto", 0, 2),
        (2, "cuda", 2, 2),
        (1, "cuda", 8, 1),
    ],
)
def test_world_size(nproc, device, gpus, expected):
    assert ranks.world_size(nproc, device, gpus=gpus) == expected


def test_more_processes_than_gpus_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="train.nproc=3 but 2 GPU.*--nproc 2"):
        ranks.world_size(3, "auto", gpus=2)


def test_backend():
    assert ranks.backend_for("cuda") == "nccl"
    assert ranks.backend_for("cpu") == "gloo"


def test_rank_seeds_rank_zero_keeps_the_seed_the_others_differ():
    assert ranks.rank_seed(7, 0) == 7  # one process is rank 0 of one: today's runs
    seeds = {ranks.rank_seed(7, rank) for rank in range(4)}
    assert len(seeds) == 4
    assert ranks.rank_seed(7, 1) == ranks.rank_seed(7, 1)  # derived, not drawn
    # resumed after epoch 3: other streams than at the start, and per rank
    resumed = {ranks.rank_seed(7, rank, epoch=3) for rank in range(4)}
    assert len(resumed) == 4 and not resumed & seeds
    assert ranks.rank_seed(8, 1) != ranks.rank_seed(7, 1)


def test_shard_sampler_splits_each_epochs_order_between_ranks():
    # torch's DistributedSampler: the order is randperm(n) from seed + epoch, padded with its
    # first images to a multiple of the world size; rank r takes every world-th from r.
    n, seed, epoch = 5, 3, 2
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    padded = order + order[:1]
    shards = []
    for rank in (0, 1):
        sampler = ranks.shard_sampler(n, seed, Group(rank, 2, rank))
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert shards[-1] == padded[rank::2]
    assert sorted(shards[0] + shards[1]) == sorted(padded)
    assert len(shards[0]) == len(shards[1]) == 3  # the same number of steps on every rank
    sampler = ranks.shard_sampler(n, seed, Group(0, 2, 0))
    sampler.set_epoch(epoch + 1)
    other = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch + 1)).tolist()
    assert list(sampler) == (other + other[:1])[0::2]


def test_all_finite_without_a_process_group():
    assert ranks.all_finite(torch.tensor(1.5))
    assert not ranks.all_finite(torch.tensor(float("nan")))
    assert not ranks.all_finite(torch.tensor(float("inf")))
