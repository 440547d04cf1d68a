"""Loaders over the image cache, and the normalisation that turns its uint8 rows into the model's
input on the device.

The reference path is the seed's: PIL decode -> Resize((s, s)) -> ToTensor -> Normalize(ImageNet),
per image, every epoch (`seed_transform`, kept as the reference the cache is tested against). Here
each image was decoded once (camtrap.imagecache); a batch is gathered from the cache file by row,
travels as uint8 (pinned on CUDA: a quarter of float32's bytes), and is normalised on the device
with the same arithmetic as ToTensor + Normalize."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler
from torchvision import transforms

from camtrap.imagecache import Pack, RowReader

log = logging.getLogger("camtrap")


def seed_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> transforms.Compose:
    """The seed recipe's transform: no augmentation, a square resize (aspect ratio not kept)."""
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


class CachedBatches(Dataset):
    """Whole batches from a pack: `dataset[[i, j, ...]]` -> (uint8 images (B, s, s, 3), int64
    targets (B,)), item i being pack row `rows[i]`. Indexed by lists (BatchSampler), so one call
    gathers a batch instead of collating B separate items."""

    def __init__(self, pack: Pack, rows: Sequence[int], targets: Sequence[int]) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
        self.reader = RowReader(pack)
        self.size = pack.size
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(positions, dtype=np.int64)
        images = torch.empty((len(index), self.size, self.size, 3), dtype=torch.uint8)
        self.reader.read_into(self.rows[index], images.numpy())
        return images, self.targets[index]


class EpochShuffle(Sampler[int]):
    """A random order per epoch, derived from (seed, epoch) alone: a resumed run sees epoch k in
    the order an uninterrupted run did. Call `set_epoch` before iterating."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = epoch_generator(self.seed, self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffle RNG of one epoch, derived from (seed, epoch) alone."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class TrainBatches(BatchSampler):
    """Batches of `order` without a last batch of a single sample: BatchNorm cannot train on
    one (and the sample is in another batch next epoch, the order being new each epoch). A
    split of one sample keeps it."""

    def __init__(self, order: Sampler[int], batch_size: int) -> None:
        super().__init__(order, batch_size, drop_last=False)
        n = len(order)  # type: ignore[arg-type]
        self.drop_single = batch_size > 1 and n > 1 and n % batch_size == 1

    def __iter__(self) -> Iterator[list[int]]:
        for batch in super().__iter__():
            if len(batch) > 1 or not self.drop_single:
                yield batch

    def __len__(self) -> int:
        return super().__len__() - int(self.drop_single)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def capped_workers(requested: int) -> int:
    """data.num_workers at most usable_cpus(): more loader processes than CPUs only fight for
    them (24 on 2 cores started 32 processes). Applied where loaders are made, not in the config:
    a run keeps what was asked, and resumed on a larger machine uses more."""
    cpus = usable_cpus()
    if requested > cpus:
        _warn_capped(requested, cpus)
    return min(requested, cpus)


@functools.cache  # once per process: a run makes a train, a val and an evaluation loader
def _warn_capped(requested: int, cpus: int) -> None:
    log.warning("data.num_workers=%d is more than the %d CPUs this process may use: %d loader "
                "workers instead — fix: set data.num_workers=%d or less", requested, cpus, cpus,
                cpus)  # fmt: skip


def make_loader(
    dataset: CachedBatches,
    batch_size: int,
    *,
    order: Sampler[int] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    train: bool = False,
) -> DataLoader:
    """Batches of `dataset` in `order` (default: as stored; `train`: TrainBatches). Workers are
    started once and kept across epochs; with the cache a batch is a few row reads, so 0 or 1
    worker is plenty."""
    num_workers = capped_workers(num_workers)
    order = order if order is not None else SequentialSampler(range(len(dataset)))
    batches = (TrainBatches(order, batch_size) if train
               else BatchSampler(order, batch_size, drop_last=False))  # fmt: skip
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,  # the dataset returns whole batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


class DeviceNormalize:
    """uint8 (B, s, s, 3) on the host -> normalised float32 (B, 3, s, s) on `device`: the same
    arithmetic as ToTensor (/255) + Normalize ((x - mean) / std), after the copy, so 4x fewer
    bytes cross to the GPU. On CUDA the result is channels_last (the permuted NHWC layout).

    On CPU the result lives in one of two buffers used in turn, valid until the call after
    next: a fresh 38 MB batch costs as much as the arithmetic (the allocator maps and unmaps
    it each time). Autograd's version counters raise if a batch is overwritten too early."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._buffers: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        nchw = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            x = nchw.to(torch.float32, memory_format=torch.channels_last)
        else:
            x = self._next_buffer(nchw.shape).copy_(nchw)
        return x.div_(255).sub_(self.mean).div_(self.std)

    def _next_buffer(self, shape: torch.Size) -> torch.Tensor:
        self._buffers = [b for b in self._buffers if b.shape == shape]
        if len(self._buffers) < 2:
            self._buffers.append(torch.empty(shape, dtype=torch.float32))
        else:
            self._buffers.reverse()  # the older one is reused
        return self._buffers[-1]
