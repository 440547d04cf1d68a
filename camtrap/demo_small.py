"""The demo dataset with small animals, and the detector's output for it (`camtrap demo-data
--small-animals`): what crops (data.crop=best) are for.

    root/train_features.csv, root/train_labels.csv, root/train_features/<id>.jpg   as camtrap.demo
    root/detections.json   a MegaDetector batch output file (format_version 1.4) for every image

Every frame is 960x540 and each animal's box covers about 2% of it (SMALL_AREA_RANGE), so at
64 px the whole frame shows it as a smudge of about 9 x 9 pixels while its crop shows it whole.
The sites, the night shots and the animals' drawings are camtrap.demo's. detections.json holds,
like a real detector's output:

- the true box of each animal (tight around its pixels), confidence 0.6-0.98, except for about
  MISS_FRACTION of the animals, which the "detector" missed;
- false boxes on the background, in any image (blanks too), almost all with a confidence below
  the default data.detection_threshold (0.1) and so dropped; about one in ten a bit above it.

All randomness comes from one `np.random.default_rng(seed)`: same arguments, same bytes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from camtrap.demo import (
    DRAWERS,
    NIGHT_FRACTION,
    SEED_CLASSES,
    Pose,
    Site,
    day_shot,
    night_shot,
    site_background,
    write_shots,
)
from camtrap.storage.files import atomic_write_bytes

DETECTIONS_JSON = "detections.json"
FRAME_SIZE = (960, 540)  # (width, height): the competition's main frame size
SMALL_AREA_RANGE = (0.015, 0.025)  # the animal's box as a share of the frame's area: ~2%
TRUE_CONF_RANGE = (0.6, 0.98)
MISS_FRACTION = 0.05  # animals the detector lists no box for: they keep their whole frame
FALSE_BOX_COUNTS = (0, 1, 2)  # false boxes per image, drawn with FALSE_BOX_WEIGHTS
FALSE_BOX_WEIGHTS = (0.5, 0.35, 0.15)
FALSE_CONF_RANGE = (0.02, 0.09)  # below the default data.detection_threshold (0.1)...
FALSE_ABOVE_FRACTION = 0.1  # ...except for these, a bit above it
FALSE_ABOVE_RANGE = (0.1, 0.2)
DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
_UNIT_SIZE = 200  # nominal animal size (px) at which each silhouette's box area is measured

PixelBox = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive)


@dataclass(frozen=True)
class Shot:
    """One frame: its pixels and the animal's box in it (None for a blank)."""

    image: Image.Image
    box: PixelBox | None


@functools.cache
def _unit_area(label: str) -> float:
    """The box area of class `label`'s silhouette in units of the nominal size squared. The
    outline does not depend on the random colours or spots, so any generator measures it."""
    drawer = DRAWERS[label]
    assert drawer is not None, "blanks have no animal"
    side = 4 * _UNIT_SIZE
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    drawer(ImageDraw.Draw(layer), Pose(side / 2, side / 2, _UNIT_SIZE, 1), np.random.default_rng(0))
    left, top, right, bottom = layer.getchannel("A").getbbox()
    return (right - left) * (bottom - top) / _UNIT_SIZE**2


def _small_pose(label: str, rng: np.random.Generator) -> Pose:
    """A pose whose box covers a share of the frame drawn from SMALL_AREA_RANGE, anywhere the
    whole animal fits (silhouettes reach about one size beyond their centre sideways, 0.6 up
    and down)."""
    width, height = FRAME_SIZE
    area = rng.uniform(*SMALL_AREA_RANGE) * width * height
    size = float(np.sqrt(area / _unit_area(label)))
    cx = rng.uniform(1.05 * size, width - 1.05 * size)
    cy = rng.uniform(max(0.6 * size, 0.3 * height), height - 0.6 * size)  # on or near the ground
    facing = 1 if rng.random() < 0.5 else -1
    return Pose(float(cx), float(cy), size, facing)


def _small_animal(label: str, rng: np.random.Generator) -> tuple[np.ndarray, PixelBox] | None:
    """Class `label`'s animal on a transparent (h, w, 4) float layer, and its tight box."""
    drawer = DRAWERS[label]
    if drawer is None:
        return None
    layer = Image.new("RGBA", FRAME_SIZE, (0, 0, 0, 0))
    drawer(ImageDraw.Draw(layer), _small_pose(label, rng), rng)
    box = layer.getchannel("A").getbbox()
    assert box is not None, f"a {label} drawn outside the frame"
    return np.asarray(layer, dtype=np.float32), box


def render_small(label: str, site: Site, rng: np.random.Generator) -> Shot:
    """One 960x540 shot of `label` at `site`, the animal small."""
    is_night = bool(rng.random() < NIGHT_FRACTION)
    background = site_background(site, FRAME_SIZE, rng)
    drawn = _small_animal(label, rng)
    animal, box = drawn if drawn is not None else (None, None)
    pixels = night_shot(background, animal, rng) if is_night else day_shot(background, animal)
    return Shot(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), box)


def _overlaps(a: PixelBox, b: PixelBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _false_box(avoid: PixelBox | None, rng: np.random.Generator) -> PixelBox | None:
    """A box of an animal's size on the background, clear of `avoid`; None if the draws keep
    landing on it (rare: the animal covers 2% of the frame)."""
    width, height = FRAME_SIZE
    for _ in range(10):
        area = rng.uniform(*SMALL_AREA_RANGE) * width * height
        aspect = rng.uniform(0.6, 2.0)  # width / height
        w, h = int(np.sqrt(area * aspect)), int(np.sqrt(area / aspect))
        left, top = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        box = (left, top, left + w, top + h)
        if avoid is None or not _overlaps(box, avoid):
            return box
    return None


def _detection(box: PixelBox, conf: float) -> dict:
    """A MegaDetector record: bbox normalised x, y, width, height (4 decimals, as it writes)."""
    width, height = FRAME_SIZE
    left, top, right, bottom = box
    bbox = [left / width, top / height, (right - left) / width, (bottom - top) / height]
    return {"category": "1", "conf": round(conf, 3), "bbox": [round(v, 4) for v in bbox]}


def detections_of(box: PixelBox | None, rng: np.random.Generator) -> list[dict]:
    """What the synthetic detector reports for a frame whose animal is at `box` (None: blank):
    the true box unless missed, then false boxes, most confident first (as MegaDetector)."""
    found = []
    if box is not None and rng.random() >= MISS_FRACTION:
        found.append(_detection(box, float(rng.uniform(*TRUE_CONF_RANGE))))
    for _ in range(int(rng.choice(FALSE_BOX_COUNTS, p=FALSE_BOX_WEIGHTS))):
        false = _false_box(box, rng)
        above = rng.random() < FALSE_ABOVE_FRACTION
        conf = float(rng.uniform(*(FALSE_ABOVE_RANGE if above else FALSE_CONF_RANGE)))
        if false is not None:
            found.append(_detection(false, conf))
    return sorted(found, key=lambda d: -d["conf"])


def _megadetector_bytes(images: list[dict]) -> bytes:
    doc = {
        "info": {"format_version": "1.4", "detector": "camtrap.demo_small (synthetic)"},
        "detection_categories": DETECTION_CATEGORIES,
        "images": images,
    }
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def write_small_animals_dataset(
    root: str | Path,
    per_class: int = 40,
    seed: int = 0,
    classes: Sequence[str] = SEED_CLASSES,
    n_sites: int = 6,
) -> Path:
    """Write `per_class` 960x540 images of each class with small animals (shuffled, ids
    "ZJ000000"...) under `root` in the Conser-vision layout, and DETECTIONS_JSON for them;
    return `root`. Same arguments, same bytes."""
    detected = []

    def shoot(name: str, site: Site, rng: np.random.Generator, filepath: str) -> Image.Image:
        shot = render_small(name, site, rng)
        detected.append({"file": filepath, "detections": detections_of(shot.box, rng)})
        return shot.image

    root = write_shots(root, per_class, seed, classes, n_sites, shoot)
    atomic_write_bytes(root / DETECTIONS_JSON, _megadetector_bytes(detected))
    return root
