"""What the model sees of an image: its whole frame, its best MegaDetector box (data.crop=best)
or, under data.crop=all, each of its boxes, one sample per box with the image's label.

Training steps over samples; a run is measured, and predict answers, per image: an image's
probabilities are those of its most confident non-blank box, blank when every box is
(camtrap.events' max-animal rule, the one an event applies to its frames). An image with one
sample is its own: its numbers do not change."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pandas as pd

from camtrap import imagecache
from camtrap.dataset.detections import boxes_of
from camtrap.engine import EpochOutputs
from camtrap.events import event_probabilities
from camtrap.metrics import log_loss


def sample_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per sample of `images` (a row per image, with id and, under data.crop, its
    boxes), in the images' order: the image's columns, `image` (its position in `images`),
    `sample` (the image's id, `id#k` for its k-th box of several) and `box` (None: the frame)."""
    rows = []
    for position, row in enumerate(images.itertuples(index=False)):
        boxes = boxes_of(row)
        for k, box in enumerate(boxes):
            sample = row.id if len(boxes) == 1 else f"{row.id}#{k}"
            rows.append({**row._asdict(), "image": position, "sample": sample, "box": box})
    return pd.DataFrame.from_records(rows, columns=[*images.columns, "image", "sample", "box"])


def cache_entries(
    samples: pd.DataFrame, paths: list[str] | pd.Series, margin: float
) -> list[imagecache.CacheEntry]:
    """The image cache's entry of each sample: its image's file (`paths`, one per sample),
    cropped to its box with `margin` (the whole frame without one)."""
    return [
        crop_entry(imagecache.CacheEntry(row.sample, str(path), row.sha256), row.box, margin)
        for row, path in zip(samples.itertuples(index=False), paths, strict=True)
    ]


def crop_entry(
    entry: imagecache.CacheEntry, box: tuple[float, ...] | None, margin: float
) -> imagecache.CacheEntry:
    """`entry` cropped to `box` (x, y, w, h in 0..1) with `margin`: its key covers both, so each
    crop is decoded once and another box is another row. None: the whole frame."""
    if box is None:
        return entry
    crop = (*(round(float(v), 6) for v in box), float(margin))
    key = hashlib.sha256(f"{entry.sha256}|crop|{crop}".encode()).hexdigest()
    return entry._replace(sha256=key, crop=crop)  # type: ignore[arg-type]


def one_per_image(image: np.ndarray) -> bool:
    """Whether no two samples in a row come from one image (`image`: each sample's image)."""
    return not bool((image[1:] == image[:-1]).any())


def image_probabilities(probs: np.ndarray, image: np.ndarray, classes: list[str]) -> np.ndarray:
    """(images, classes) from the samples' (samples, classes): each image's most confident
    non-blank sample (its most confident sample when all are blank)."""
    if one_per_image(image):
        return probs
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])  # samples come image by image
    ends = np.r_[starts[1:], len(image)]
    spans = zip(starts, ends, strict=True)
    return np.stack([event_probabilities(probs[a:b], classes, "max-animal") for a, b in spans])


def image_outputs(out: EpochOutputs, image: np.ndarray, classes: list[str]) -> EpochOutputs:
    """A pass over samples as one over their images: each image's probabilities
    (image_probabilities), its target, and the loss of those (the mean -log p(target): the
    cross entropy the samples' loss is)."""
    if one_per_image(image):
        return out
    probs = image_probabilities(out.probs, image, classes).astype(np.float32)
    first = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    targets = out.targets[first]
    return replace(out, targets=targets, probs=probs, loss=log_loss(targets, probs))
