"""A synthetic, learnable camera-trap-like dataset in the Conser-vision layout.

    root/train_features.csv   id, filepath, site
    root/train_labels.csv     id, then one column per class holding "1.0" or "0.0" (one-hot)
    root/train_features/<id>.jpg

Every site has its own background (tone, horizon, vegetation); about a quarter of the images are
night shots (grey infrared look, still 3-channel), so colour alone does not give the class away.
Each class except "blank" draws an animal with its own silhouette, colour and markings at a random
position, scale and facing. All randomness comes from one `np.random.default_rng(seed)`, so the
same arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from camtrap.config import FEATURES_CSV, LABELS_CSV
from camtrap.storage.files import atomic_write_bytes

SEED_CLASSES: tuple[str, ...] = (
    "antelope_duiker",
    "bird",
    "blank",
    "civet_genet",
    "hog",
    "leopard",
    "monkey_prosimian",
    "rodent",
)
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((960, 540), (640, 360), (360, 240))  # (width, height)
IMAGE_SIZE_WEIGHTS = (0.45, 0.45, 0.10)
NIGHT_FRACTION = 0.25
# Nominal animal size (Pose.size) as a fraction of the image height. Silhouettes span 0.5 (civet)
# to 1.1 (antelope) of it, so animals measure 21%-59% of the image height, median 39%: about
# 20 px when the seed recipe resizes to 64 x 64.
OBJECT_HEIGHT_RANGE = (0.40, 0.55)
JPEG_QUALITY = 85
IMAGE_DIR = "train_features"
_TRUNK_SHADE = 0.75  # tree trunks darken the background to this fraction
_TEXTURE_STRENGTH = 0.06  # relative contrast of leaf and soil blotches
_BACKGROUND_SIZE = (192, 108)  # site backgrounds are painted small and resized up per image

RGB = tuple[int, int, int]
_CANOPY_TONES: tuple[RGB, ...] = ((70, 100, 55), (110, 125, 80), (50, 75, 45), (140, 140, 110))
_GROUND_TONES: tuple[RGB, ...] = ((120, 100, 70), (150, 135, 100), (95, 80, 60), (110, 115, 75))


@dataclass(frozen=True)
class Site:
    """What a camera always sees: sky and ground tones, horizon height, vegetation."""

    name: str
    sky: RGB
    ground: RGB
    horizon: float  # fraction of the height
    background: np.ndarray  # (h, w, 3) float32, painted at _BACKGROUND_SIZE


@dataclass(frozen=True)
class Pose:
    """Where an animal stands. Drawing coordinates (u, v) are in units of `size` (the nominal
    animal height in pixels) around (cx, cy); u points the way the animal faces, v points down."""

    cx: float
    cy: float
    size: float
    facing: int  # +1 right, -1 left

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + self.facing * u * self.size, self.cy + v * self.size)

    def box(self, u: float, v: float, ru: float, rv: float) -> list[float]:
        x, y = self.xy(u, v)
        rx, ry = ru * self.size, rv * self.size
        return [x - rx, y - ry, x + rx, y + ry]

    def points(self, uv: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.xy(u, v) for u, v in uv]

    def width(self, fraction: float) -> int:
        return max(1, round(fraction * self.size))


Drawer = Callable[[ImageDraw.ImageDraw, Pose, np.random.Generator], None]


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 18) -> RGB:
    shifted = np.clip(np.array(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def _legs(
    draw: ImageDraw.ImageDraw,
    pose: Pose,
    us: Sequence[float],
    top: float,
    bottom: float,
    width: float,
    colour: RGB,
) -> None:
    for u in us:
        draw.line(pose.points([(u, top), (u + 0.03, bottom)]), fill=colour, width=pose.width(width))


def _spots(
    draw: ImageDraw.ImageDraw,
    pose: Pose,
    rng: np.random.Generator,
    centre: tuple[float, float],
    radii: tuple[float, float],
    count: int,
    spot: float,
    colour: RGB,
) -> None:
    """Dark spots scattered inside the ellipse `centre` +- `radii`."""
    angles = rng.uniform(0, 2 * np.pi, count)
    reach = np.sqrt(rng.uniform(0, 0.8, count))
    for angle, r in zip(angles, reach, strict=True):
        u = centre[0] + r * radii[0] * np.cos(angle)
        v = centre[1] + r * radii[1] * np.sin(angle)
        draw.ellipse(pose.box(u, v, spot, spot), fill=colour)


def _draw_antelope(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Slim reddish-brown body on four long thin legs, raised neck, small head with spike horns."""
    coat = _jitter(rng, (140, 75, 40))
    _legs(draw, pose, (-0.32, -0.22, 0.2, 0.3), 0.05, 0.5, 0.06, coat)
    draw.ellipse(pose.box(0.0, -0.05, 0.42, 0.17), fill=coat)
    draw.line(pose.points([(0.3, -0.1), (0.48, -0.36)]), fill=coat, width=pose.width(0.11))
    draw.ellipse(pose.box(0.55, -0.38, 0.13, 0.07), fill=coat)
    horns = (40, 30, 20)
    draw.line(pose.points([(0.47, -0.43), (0.42, -0.55)]), fill=horns, width=pose.width(0.025))
    draw.line(pose.points([(0.52, -0.44), (0.48, -0.56)]), fill=horns, width=pose.width(0.025))
    draw.ellipse(pose.box(0.05, 0.05, 0.3, 0.05), fill=(235, 215, 185))  # pale belly


def _draw_bird(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Bright body with two wide raised wings (a flying V) and an orange beak."""
    plumage = _jitter(rng, (225, 230, 240), 12)
    tips = (30, 30, 40)
    draw.polygon(pose.points([(-0.05, -0.02), (-0.55, -0.5), (-0.3, 0.02)]), fill=plumage)
    draw.polygon(pose.points([(0.05, -0.02), (0.45, -0.52), (0.25, 0.02)]), fill=plumage)
    draw.polygon(pose.points([(-0.45, -0.4), (-0.55, -0.5), (-0.38, -0.3)]), fill=tips)
    draw.polygon(pose.points([(0.37, -0.42), (0.45, -0.52), (0.33, -0.32)]), fill=tips)
    draw.ellipse(pose.box(0.0, 0.05, 0.3, 0.13), fill=plumage)
    draw.ellipse(pose.box(0.3, -0.02, 0.1, 0.09), fill=plumage)
    draw.polygon(pose.points([(0.38, -0.05), (0.55, 0.0), (0.38, 0.03)]), fill=(240, 140, 20))
    draw.polygon(pose.points([(-0.28, 0.05), (-0.5, -0.02), (-0.5, 0.14)]), fill=tips)  # tail


def _draw_civet(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Long low grey body on short legs, black mask, spots, long straight ringed tail."""
    coat = _jitter(rng, (175, 170, 150))
    dark = (25, 22, 20)
    _legs(draw, pose, (-0.38, -0.28, 0.28, 0.38), 0.05, 0.28, 0.07, dark)
    ring_count = 8
    for i in range(ring_count):  # tail from the rump backwards, alternating light and dark rings
        start = -0.45 - i * 0.085
        colour = dark if i % 2 else coat
        segment = [(start, 0.0 + i * 0.015), (start - 0.085, 0.0 + (i + 1) * 0.015)]
        draw.line(pose.points(segment), fill=colour, width=pose.width(0.1))
    draw.ellipse(pose.box(0.0, 0.0, 0.5, 0.15), fill=coat)
    _spots(draw, pose, rng, (0.0, 0.0), (0.45, 0.12), 14, 0.035, dark)
    draw.polygon(pose.points([(0.42, -0.12), (0.78, 0.02), (0.42, 0.1)]), fill=coat)
    draw.ellipse(pose.box(0.6, -0.01, 0.08, 0.05), fill=dark)  # mask
    draw.polygon(pose.points([(0.45, -0.1), (0.5, -0.24), (0.55, -0.08)]), fill=coat)  # ear


def _draw_hog(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Bulky dark barrel of a body on short thick legs, wedge head, pale snout and tusks, mane."""
    hide = _jitter(rng, (55, 45, 40), 10)
    _legs(draw, pose, (-0.35, -0.22, 0.18, 0.3), 0.2, 0.5, 0.1, hide)
    draw.ellipse(pose.box(0.0, 0.0, 0.5, 0.3), fill=hide)
    draw.polygon(pose.points([(0.35, -0.22), (0.78, 0.02), (0.78, 0.18), (0.35, 0.22)]), fill=hide)
    draw.ellipse(pose.box(0.78, 0.1, 0.05, 0.09), fill=(200, 150, 140))  # snout disc
    draw.line(
        pose.points([(0.68, 0.16), (0.74, 0.02)]), fill=(245, 240, 225), width=pose.width(0.03)
    )
    for u in np.linspace(-0.3, 0.35, 8):  # bristly mane along the back
        draw.line(
            pose.points([(u, -0.28), (u - 0.04, -0.4)]), fill=(20, 15, 12), width=pose.width(0.03)
        )
    draw.polygon(pose.points([(-0.5, -0.05), (-0.62, 0.1), (-0.48, 0.05)]), fill=hide)  # tail


def _draw_leopard(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Golden body covered in black rosettes, round head with ears, tail curling up at the end."""
    coat = _jitter(rng, (230, 185, 60))
    dark = (15, 12, 8)
    _legs(draw, pose, (-0.35, -0.25, 0.25, 0.35), 0.05, 0.45, 0.08, coat)
    tail = [(-0.45, -0.05), (-0.7, 0.12), (-0.88, 0.1), (-0.98, -0.05), (-0.95, -0.22)]
    draw.line(pose.points(tail), fill=coat, width=pose.width(0.07), joint="curve")
    draw.ellipse(pose.box(0.0, -0.05, 0.5, 0.2), fill=coat)
    draw.ellipse(pose.box(0.55, -0.22, 0.15, 0.14), fill=coat)
    draw.ellipse(pose.box(0.5, -0.36, 0.05, 0.05), fill=coat)
    draw.ellipse(pose.box(0.64, -0.35, 0.05, 0.05), fill=coat)
    _spots(draw, pose, rng, (0.0, -0.05), (0.48, 0.18), 26, 0.035, dark)
    _spots(draw, pose, rng, (0.55, -0.2), (0.1, 0.08), 4, 0.02, dark)


def _draw_monkey(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Upright black body with a white mantle, round head with a white face ring, long arms and
    an S-shaped white-tipped tail (a colobus)."""
    fur = _jitter(rng, (35, 32, 30), 10)
    white = (235, 235, 228)
    tail = [(-0.1, 0.28), (-0.35, 0.42), (-0.5, 0.25), (-0.45, 0.0), (-0.3, -0.08)]
    draw.line(pose.points(tail), fill=fur, width=pose.width(0.08), joint="curve")
    draw.line(pose.points(tail[3:]), fill=white, width=pose.width(0.1), joint="curve")
    for side in (-1, 1):  # arms and legs
        arm = [(0.1 * side, -0.15), (0.32 * side, 0.1), (0.3 * side, 0.4)]
        draw.line(pose.points(arm), fill=fur, width=pose.width(0.09))
    draw.ellipse(pose.box(0.0, 0.05, 0.2, 0.3), fill=fur)
    draw.ellipse(pose.box(-0.12, 0.1, 0.07, 0.22), fill=white)  # mantle
    draw.ellipse(pose.box(0.0, -0.35, 0.17, 0.16), fill=white)
    draw.ellipse(pose.box(0.02, -0.34, 0.1, 0.1), fill=fur)  # face inside the white ring


def _draw_rodent(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Compact round body with two big round ears, white belly and a long thin curving tail."""
    fur = _jitter(rng, (205, 170, 140))
    tail = [(-0.35, 0.2), (-0.6, 0.35), (-0.85, 0.3), (-1.0, 0.15)]
    draw.line(pose.points(tail), fill=(200, 150, 140), width=pose.width(0.045), joint="curve")
    draw.ellipse(pose.box(0.0, 0.1, 0.4, 0.25), fill=fur)
    draw.ellipse(pose.box(0.05, 0.22, 0.25, 0.1), fill=(240, 235, 225))
    draw.ellipse(pose.box(0.38, -0.02, 0.17, 0.15), fill=fur)
    draw.ellipse(pose.box(0.25, -0.22, 0.11, 0.11), fill=(225, 170, 165))  # ears, pink inside
    draw.ellipse(pose.box(0.42, -0.24, 0.11, 0.11), fill=(225, 170, 165))
    draw.ellipse(pose.box(0.5, -0.04, 0.025, 0.025), fill=(5, 5, 5))


DRAWERS: dict[str, Drawer | None] = {
    "antelope_duiker": _draw_antelope,
    "bird": _draw_bird,
    "blank": None,
    "civet_genet": _draw_civet,
    "hog": _draw_hog,
    "leopard": _draw_leopard,
    "monkey_prosimian": _draw_monkey,
    "rodent": _draw_rodent,
}


def paint_site(rng: np.random.Generator, index: int) -> Site:
    """A site's background at _BACKGROUND_SIZE: sky/canopy above a horizon, ground below, with
    site-specific tones, tree trunks and leaf blotches."""
    width, height = _BACKGROUND_SIZE
    sky = _jitter(rng, _CANOPY_TONES[index % len(_CANOPY_TONES)], 15)
    ground = _jitter(rng, _GROUND_TONES[int(rng.integers(len(_GROUND_TONES)))], 15)
    horizon = float(rng.uniform(0.3, 0.55))
    rows = np.arange(height, dtype=np.float32)[:, None, None] / height
    image = np.where(rows < horizon, np.array(sky, np.float32), np.array(ground, np.float32))
    image = np.broadcast_to(image, (height, width, 3)).copy()
    image *= 0.8 + 0.4 * rows  # darker at the top, lighter towards the camera
    for _ in range(int(rng.integers(2, 6))):  # tree trunks
        x = int(rng.integers(0, width))
        trunk_width = int(rng.integers(3, 10))
        image[: int(horizon * height) + 5, x : x + trunk_width] *= _TRUNK_SHADE
    blotches = rng.normal(0.0, 1.0, size=(height // 6, width // 6)).astype(np.float32)
    texture = np.asarray(Image.fromarray(blotches).resize((width, height), Image.BILINEAR))
    image *= (1.0 + _TEXTURE_STRENGTH * texture)[:, :, None]
    return Site(f"S{index + 1:04d}", sky, ground, horizon, np.clip(image, 0, 255))


def site_background(site: Site, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The site's background at `size`, with this shot's light level and sensor noise."""
    small = Image.fromarray(site.background.astype(np.uint8))
    image = np.asarray(small.resize(size, Image.BILINEAR), dtype=np.float32)
    image = image * rng.uniform(0.85, 1.15)
    noise = rng.normal(0.0, 6.0, size=(size[1] // 4, size[0] // 4)).astype(np.float32)
    grain = np.asarray(Image.fromarray(noise).resize(size, Image.NEAREST))
    return image + grain[:, :, None]


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def night_shot(
    background: np.ndarray, animal: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Infrared look: grey, the animal lit up by the flash (fur reflects IR), bright centre with
    dark corners; still three channels."""
    height, width = background.shape[:2]
    grey = background @ _LUMA * 0.75 + 15.0
    if animal is not None:
        alpha = animal[:, :, 3] / 255.0
        lit = animal[:, :, :3] @ _LUMA * 0.6 + 110.0
        grey = grey * (1.0 - alpha) + lit * alpha
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    vignette = np.clip(1.15 - 0.5 * (xs**2 + ys**2), 0.25, 1.0)
    grey = grey * vignette * rng.uniform(0.85, 1.1)
    return np.repeat(grey[:, :, None], 3, axis=2)


def day_shot(background: np.ndarray, animal: np.ndarray | None) -> np.ndarray:
    if animal is None:
        return background
    alpha = animal[:, :, 3:] / 255.0
    return background * (1.0 - alpha) + animal[:, :, :3] * alpha


def _animal_pose(size: tuple[int, int], rng: np.random.Generator) -> Pose:
    width, height = size
    animal = rng.uniform(*OBJECT_HEIGHT_RANGE) * height
    margin_x = 0.9 * animal  # the longest animals reach about one height beyond their centre
    cx = rng.uniform(margin_x, width - margin_x) if width > 2 * margin_x else width / 2
    cy = rng.uniform(0.55 * animal, height - 0.55 * animal)
    facing = 1 if rng.random() < 0.5 else -1
    return Pose(float(cx), float(cy), float(animal), facing)


def _animal(label: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
    """The animal of class `label` on a transparent (h, w, 4) float layer; None if blank."""
    drawer = DRAWERS[label]
    if drawer is None:
        return None
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    drawer(ImageDraw.Draw(layer), _animal_pose(size, rng), rng)
    return np.asarray(layer, dtype=np.float32)


def _render(label: str, site: Site, rng: np.random.Generator) -> Image.Image:
    """One camera-trap shot of `label` at `site`."""
    size = IMAGE_SIZES[int(rng.choice(len(IMAGE_SIZES), p=IMAGE_SIZE_WEIGHTS))]
    is_night = bool(rng.random() < NIGHT_FRACTION)
    background = site_background(site, size, rng)
    animal = _animal(label, size, rng)
    pixels = night_shot(background, animal, rng) if is_night else day_shot(background, animal)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def check_arguments(per_class: int, classes: Sequence[str], n_sites: int) -> list[str]:
    names = [str(c) for c in classes]
    unknown = [c for c in names if c not in DRAWERS]
    if unknown:
        raise ValueError(f"no drawing for classes {unknown}; choose from {list(DRAWERS)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be non-empty and unique, got {names}")
    if per_class < 1 or n_sites < 1:
        raise ValueError(f"per_class and n_sites must be >= 1, got {per_class} and {n_sites}")
    return names


def write_demo_dataset(
    root: str | Path,
    per_class: int = 40,
    seed: int = 0,
    classes: Sequence[str] = SEED_CLASSES,
    n_sites: int = 6,
) -> Path:
    """Write `per_class` images of each class (shuffled, ids "ZJ000000"...) under `root` in the
    Conser-vision layout and return `root`. Same arguments, same bytes."""
    return write_shots(root, per_class, seed, classes, n_sites,
                       lambda name, site, rng, _: _render(name, site, rng))  # fmt: skip


# A class name, its site, the dataset's RNG and the image's filepath -> the image
Shoot = Callable[[str, Site, np.random.Generator, str], Image.Image]


def write_shots(
    root: str | Path, per_class: int, seed: int, classes: Sequence[str], n_sites: int, shoot: Shoot
) -> Path:
    """The Conser-vision layout under `root`, each image drawn by `shoot` (camtrap.demo_small
    draws small animals and notes their boxes)."""
    names = check_arguments(per_class, classes, n_sites)
    root = Path(root)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sites = [paint_site(rng, i) for i in range(n_sites)]
    labels = rng.permutation(np.repeat(np.arange(len(names)), per_class))
    feature_rows, label_rows = [], []
    for number, label_idx in enumerate(labels):
        image_id = f"ZJ{number:06d}"
        site = sites[int(rng.integers(n_sites))]
        filepath = f"{IMAGE_DIR}/{image_id}.jpg"
        atomic_write_bytes(
            root / filepath, jpeg_bytes(shoot(names[label_idx], site, rng, filepath))
        )
        feature_rows.append([image_id, filepath, site.name])
        label_rows.append(
            [image_id, *("1.0" if i == label_idx else "0.0" for i in range(len(names)))]
        )
    atomic_write_bytes(root / LABELS_CSV, csv_bytes(["id", *names], label_rows))
    atomic_write_bytes(root / FEATURES_CSV, csv_bytes(["id", "filepath", "site"], feature_rows))
    return root
