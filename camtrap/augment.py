"""Augmentation of training batches on the device: a random resized crop, a horizontal flip and
colour jitter, as batched tensor ops (no per-image PIL, no work on the loader's CPU).

The train split is cached at `data.train_cache_size` (uint8 rows, like every cache); each batch is
cropped and resized to `data.image_size` here, after the copy to the device. Validation and
predict never come here: they see images resized straight to image_size.

Every random number of a batch comes from a torch.Generator seeded from (train.seed, epoch, step)
alone and is drawn on the CPU (a few numbers per image), so a resumed run sees exactly the crops,
flips and jitter an uninterrupted run saw, on any device. A batch always draws the same numbers in
the same order, whichever options are on: turning one off does not move the others."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import roi_align

from camtrap.config import AugmentConfig

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), as its colour jitter uses them.
GRAY = (0.2989, 0.587, 0.114)
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop's tries before its fallback
_STREAM = 0x6175_6720  # tells this generator's seeds apart from other streams of the same seed


@dataclass(frozen=True)
class BatchParams:
    """The random choices for one batch of n images (CPU tensors)."""

    boxes: torch.Tensor  # (n, 4) float32: x0, y0, x1, y1 in pixels of the cached image
    flip: torch.Tensor  # (n,) bool: mirror left-right
    brightness: torch.Tensor  # (n,) float32 factors (1: unchanged)
    contrast: torch.Tensor  # (n,) float32
    saturation: torch.Tensor  # (n,) float32


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The RNG of one training step, derived from (seed, epoch, step) alone."""
    words = np.random.SeedSequence([seed, epoch, step, _STREAM]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 31) ^ int(words[1]))


def crop_boxes(
    generator: torch.Generator,
    n: int,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """(n, 4) crop boxes (x0, y0, x1, y1; whole pixels) inside a `size` x `size` image, drawn as
    torchvision's RandomResizedCrop draws them: area a share in `scale` of the image's, aspect
    ratio log-uniform in `ratio`, the first of 10 tries that fits, else the centre crop closest
    to `ratio`; position uniform over the places where the box fits."""
    u = torch.rand((n, CROP_ATTEMPTS, 2), generator=generator, dtype=torch.float64)
    where = torch.rand((n, 2), generator=generator, dtype=torch.float64)
    area = size * size * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first try that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    fallback_w, fallback_h = _centre_crop(size, ratio)
    none_fit = ~fits.any(dim=1)
    w = torch.where(none_fit, torch.full_like(w, fallback_w), w)
    h = torch.where(none_fit, torch.full_like(h, fallback_h), h)
    x0 = torch.floor(where[:, 0] * (size - w + 1))
    y0 = torch.floor(where[:, 1] * (size - h + 1))
    x0 = torch.where(none_fit, torch.floor((size - w) / 2), x0)
    y0 = torch.where(none_fit, torch.floor((size - h) / 2), y0)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1).to(torch.float32)


def _centre_crop(size: int, ratio: Sequence[float]) -> tuple[float, float]:
    """RandomResizedCrop's fallback on a square image: the largest box with a ratio in range."""
    if ratio[0] > 1:
        return float(size), float(round(size / ratio[0]))
    if ratio[1] < 1:
        return float(round(size * ratio[1])), float(size)
    return float(size), float(size)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box, resized to `size` x `size`: (B, C, H, W) float -> (B, C, size, size).

    roi_align with aligned=True samples each output pixel's area (ceil(box/size) points a
    side, bilinear): bilinear interpolation when the box is smaller than the output, an average
    over the area (antialiased) when it is larger. A box of the whole image at its own size
    gives the image back exactly. Samples lie inside the box; at its edge bilinear
    interpolation reads up to half a pixel across (torchvision crops first, then resizes)."""
    index = torch.arange(len(boxes), dtype=images.dtype, device=images.device)[:, None]
    rois = torch.cat([index, boxes.to(images.device, images.dtype)], dim=1)
    return roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)  # fmt: skip


def hflip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) with those where `flip` (B,) is true mirrored left-right."""
    mask = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(3), images)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, as torchvision's rgb_to_grayscale."""
    r, g, b = images.unbind(dim=1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.to(images.device, images.dtype).view(-1, 1, 1, 1)
    return (ratio * images + (1 - ratio) * other).clamp_(0.0, 1.0)


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor | None = None,
    contrast: torch.Tensor | None = None,
    saturation: torch.Tensor | None = None,
) -> torch.Tensor:
    """torchvision's adjust_brightness, adjust_contrast and adjust_saturation, in this order,
    with one factor per image ((B,) tensors; None skips the step), on images in [0, 1]."""
    if brightness is not None:
        images = _blend(images, torch.zeros_like(images), brightness)
    if contrast is not None:
        mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
        images = _blend(images, mean, contrast)
    if saturation is not None:
        images = _blend(images, grayscale(images), saturation)
    return images


def draw_params(
    generator: torch.Generator, n: int, size: int, config: AugmentConfig
) -> BatchParams:
    """One batch's crops, flips and jitter factors, drawn in a fixed order (see the module)."""
    boxes = crop_boxes(generator, n, size, config.crop_scale, config.crop_ratio)
    flip = torch.rand(n, generator=generator) < config.hflip
    u = torch.rand((3, n), generator=generator)
    strengths = torch.tensor([config.brightness, config.contrast, config.saturation])
    factors = 1 + strengths[:, None] * (2 * u - 1)  # uniform in [1 - x, 1 + x]
    return BatchParams(boxes, flip, *factors)


class TrainAugment:
    """A loader's uint8 batch (B, S, S, 3) on the host -> the model's augmented, normalised
    float32 input (B, 3, s, s) on `device` (channels_last on CUDA), s = image_size."""

    def __init__(
        self,
        config: AugmentConfig,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        seed: int,
    ) -> None:
        self.config = config
        self.size = image_size
        self.device = device
        self.seed = seed
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def params(self, n: int, cached_size: int, epoch: int, step: int) -> BatchParams:
        return draw_params(step_generator(self.seed, epoch, step), n, cached_size, self.config)

    def __call__(self, images: torch.Tensor, *, epoch: int, step: int) -> torch.Tensor:
        p = self.params(images.shape[0], images.shape[1], epoch, step)
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.to(torch.float32).div_(255).contiguous()
        x = hflip(resized_crop(x, p.boxes, self.size), p.flip)
        cfg = self.config
        x = color_jitter(
            x,
            p.brightness if cfg.brightness > 0 else None,
            p.contrast if cfg.contrast > 0 else None,
            p.saturation if cfg.saturation > 0 else None,
        )
        x = x.sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def for_epoch(self, epoch: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """`(images, step) -> input` for engine.train_one_epoch's `augment`."""

        def augment(images: torch.Tensor, step: int) -> torch.Tensor:
            return self(images, epoch=epoch, step=step)

        return augment
