"""Class balance for long-tailed camera-trap data: per-class loss weights (train.class_weights)
and a sampler that makes every class equally likely per epoch (data.sampler=balanced).

- `inverse`: w_c = N / (C * n_c), so each class carries the same total weight.
- `effective` (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", 2019):
  w_c proportional to (1 - beta) / (1 - beta^n_c), beta = 0.999, normalised so the weights sum to
  C (the loss keeps its scale).

Compute only, and seeded: the sampler's order comes from (seed, epoch) alone, like the shuffle
(camtrap.loader.epoch_generator), so a resumed run draws epoch k as an uninterrupted one did."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from camtrap.loader import epoch_generator

EFFECTIVE_BETA = 0.999


def class_counts(targets: Sequence[int], n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=n_classes)


def class_weights(counts: np.ndarray, kind: str) -> np.ndarray | None:
    """Per-class loss weights from the train split's class counts (None for `none`). A class
    with no train image gets weight 0: it contributes no loss either way."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if kind == "none":
        return None
    if kind == "inverse":
        raw = np.where(present, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        return raw
    if kind == "effective":
        raw = np.where(present, (1 - EFFECTIVE_BETA) / (1 - EFFECTIVE_BETA**counts), 0.0)
        return raw * len(counts) / raw.sum()
    raise ValueError(f"class weights {kind!r} are not one of none, inverse, effective")


class BalancedSampler(Sampler[int]):
    """Each epoch: as many draws as there are train images, each a class drawn uniformly (among
    those with images) and then one of its images uniformly, with replacement. With several
    processes, rank r takes every world-th draw of the same order (all ranks the same length)."""

    def __init__(self, targets: Sequence[int], seed: int, rank: int = 0, world: int = 1) -> None:
        labels = np.asarray(targets, dtype=np.int64)
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.n, self.seed, self.rank, self.world = len(labels), seed, rank, world
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)  # ceil: every rank takes the same number of steps

    def order(self) -> list[int]:
        """The whole epoch's draws (every rank's), from (seed, epoch)."""
        generator = epoch_generator(self.seed, self.epoch)
        total = len(self) * self.world
        which = torch.randint(len(self.members), (total,), generator=generator).numpy()
        pick = torch.rand(total, generator=generator, dtype=torch.float64).numpy()
        sizes = np.array([len(m) for m in self.members])
        within = np.minimum((pick * sizes[which]).astype(np.int64), sizes[which] - 1)
        return [int(self.members[c][i]) for c, i in zip(which, within, strict=True)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank :: self.world])
