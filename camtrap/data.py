"""Datasets and loaders. The reference path is the seed's: PIL decode -> Resize((s, s)) ->
ToTensor -> Normalize(ImageNet), done per image in loader workers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from camtrap.images import open_rgb


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


class ImageFolderDataset(Dataset):
    """(image tensor, class index) for each path; images decoded on access."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], transform: transforms.Compose):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = open_rgb(self.paths[index])
        return self.transform(image), self.targets[index]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader; `generator` fixes the shuffle order (and worker seeds) of an epoch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
        drop_last=False,
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffle RNG of one epoch, derived from (seed, epoch) alone, so a resumed run shuffles
    epoch k exactly as an uninterrupted run would."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)
