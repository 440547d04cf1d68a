"""The place of one process among several training processes (DDP), and the collectives they
share: the per-rank seed, this rank's shard of the train split, gathering each rank's outputs,
agreeing that a step's loss is finite, waiting for each other. How the processes are started is
camtrap.launch's job; this module knows nothing of runs or files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from camtrap.errors import ConfigError

_STREAM = 0x7261_6E6B  # tells per-rank seeds apart from other streams derived from train.seed


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Group:
        """From the variables torchrun sets in each worker."""
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                   int(os.environ["LOCAL_RANK"]))  # fmt: skip


# --- what to launch ----------------------------------------------------------------------------


def world_size(nproc: int | str, device: str, gpus: int | None = None) -> int:
    """train.nproc as a number of processes: "auto" is every visible GPU (1 without GPUs, or
    with train.device=cpu). On CUDA each process needs a GPU of its own (nccl)."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    on_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if nproc == "auto":
        return max(gpus, 1) if on_gpu else 1
    if on_gpu and nproc > gpus:
        raise ConfigError(
            f"train.nproc={nproc} but {gpus} GPU(s) are visible: each training process needs a "
            f"GPU of its own — fix: --nproc {gpus} (or auto), or train.device=cpu"
        )
    return int(nproc)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The global RNG seed of `rank` (dropout, stochastic depth): train.seed itself for rank 0
    at the start (one process is rank 0 of one), else derived from (seed, rank, epoch); `epoch`
    is the last completed one when a run resumes on ranks whose streams were not saved."""
    if rank == 0 and epoch == 0:
        return seed
    words = np.random.SeedSequence([seed, rank, epoch, _STREAM]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def shard_sampler(n: int, seed: int, group: Group) -> DistributedSampler:
    """This rank's share of an n-image split: a new order each epoch from (seed, set_epoch's
    epoch), padded by repeating images so that every rank takes the same number of steps."""
    return DistributedSampler(range(n), num_replicas=group.world_size, rank=group.rank,
                              shuffle=True, seed=seed, drop_last=False)  # fmt: skip


# --- collectives -------------------------------------------------------------------------------


def gather(obj: Any, group: Group) -> list[Any]:
    """`obj` of every rank, in rank order (on every rank)."""
    parts: list[Any] = [None] * group.world_size
    dist.all_gather_object(parts, obj)
    return parts


def all_finite(loss: torch.Tensor) -> bool:
    """Whether `loss` is finite here and, when training on several processes, on every rank:
    they must agree to take a step, or the ranks that did would wait forever for the others'
    gradients."""
    finite = torch.isfinite(loss.detach()).to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def barrier() -> None:
    dist.barrier()
