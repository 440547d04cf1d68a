"""Detections as data: a MegaDetector batch output file (data.detections, `camtrap predict
--detections`) matched to a dataset's images, checked like the CSVs, and each image's crop.

`images[].file` is matched to the image's path inside the data root. Problems, each with the
record and the fix: a file that is not one of the dataset's images, the same file twice, a box
outside [0, 1] or a confidence outside 0..1 (camtrap.dataset.megadetector). Dataset images the
file does not list are not problems: they have no detection (they keep their whole frame), and
`missing` counts them.

The crop of an image (data.crop=best) is its most confident animal box with conf >=
data.detection_threshold, as (x, y, w, h) normalised, in the CROP_COLUMNS; under data.crop=all
every such box, most confident first, in BOXES_COLUMN (`x y w h;x y w h`). camtrap.imagecache
squares a box with data.crop_margin context and clips it to the image when it decodes it, once;
camtrap.samples makes each box a sample."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from camtrap.dataset.megadetector import DetectionImage, read_megadetector
from camtrap.errors import DataError, Problem

log = logging.getLogger("camtrap")

CROP_COLUMNS = ("crop_x", "crop_y", "crop_w", "crop_h")
BOXES_COLUMN = "crop_boxes"  # data.crop=all: every box of the image
Box = tuple[float, float, float, float]
UNKNOWN_FIX = (
    "remove the record, or point data.detections / --detections at the MegaDetector output for "
    "this dataset's images (files relative to the data root)"
)


@dataclass
class Detections:
    """The detections of a dataset's images, by image path inside the data root."""

    by_file: dict[str, DetectionImage]
    sha256: str  # of the file's bytes: part of the data fingerprint when crops are on
    missing: list[str] = field(default_factory=list)  # dataset images the file does not list


def read_detections(
    root: Path, name: str, filepaths: list[str]
) -> tuple[Detections | None, list[Problem]]:
    """The detections file `name` (relative to `root`) for the images at `filepaths`."""
    path = Path(root) / name
    if not path.is_file():
        fix = "put the MegaDetector output there, or fix data.detections / --detections"
        return None, [Problem(name, "file does not exist", fix)]
    try:
        images = read_megadetector(path)
    except DataError as err:
        return None, [Problem(name, p.message, p.fix, p.line, p.id) for p in err.problems]
    wanted = set(filepaths)
    problems: list[Problem] = []
    by_file: dict[str, DetectionImage] = {}
    for i, image in enumerate(images):
        where = f"images[{i}]"
        if image.file in by_file:
            problems.append(Problem(name, f"{where}: {image.file} is listed twice",
                                    "keep one record per image", None, image.file))  # fmt: skip
        elif image.file not in wanted:
            message = f"{where}: {image.file} is not an image of this dataset"
            problems.append(Problem(name, message, UNKNOWN_FIX, None, image.file))
        else:
            by_file[image.file] = image
    if problems:
        return None, problems
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    missing = [f for f in filepaths if f not in by_file]
    return Detections(by_file, digest, missing), []


def animal_boxes(image: DetectionImage | None, threshold: float) -> list[Box]:
    """The animal boxes with conf >= threshold, most confident first (ties: the file's order);
    none for a failed or unlisted image."""
    if image is None or image.failure:
        return []
    animals = [d for d in image.detections if d.category == "animal" and d.conf >= threshold]
    return [d.bbox for d in sorted(animals, key=lambda d: -d.conf)]


def best_box(image: DetectionImage | None, threshold: float) -> Box | None:
    """The most confident animal box with conf >= threshold, or None (the whole frame)."""
    boxes = animal_boxes(image, threshold)
    return boxes[0] if boxes else None


def with_crops(
    frame: pd.DataFrame, detections: Detections, threshold: float, crop: str = "best"
) -> pd.DataFrame:
    """`frame` (a row per image, `filepath`) with its crops: under `best` the CROP_COLUMNS (each
    image's best box, NaN where it keeps its whole frame), under `all` BOXES_COLUMN (every box,
    "" for the whole frame)."""
    found = [detections.by_file.get(f) for f in frame["filepath"]]
    if crop == "all":
        return frame.assign(**{BOXES_COLUMN: [format_boxes(animal_boxes(i, threshold))
                                              for i in found]})  # fmt: skip
    boxes = [best_box(i, threshold) for i in found]
    columns = {c: [b[i] if b else float("nan") for b in boxes] for i, c in enumerate(CROP_COLUMNS)}
    return frame.assign(**columns)


def format_boxes(boxes: list[Box]) -> str:
    """BOXES_COLUMN's cell: `x y w h` per box, `;` between them ("": none)."""
    return ";".join(" ".join(repr(float(v)) for v in box) for box in boxes)


def parse_boxes(cell: object) -> list[Box]:
    """The boxes of a BOXES_COLUMN cell ("" or NaN, an empty CSV cell: none)."""
    if not isinstance(cell, str):
        return []
    return [tuple(map(float, part.split())) for part in cell.split(";") if part.strip()]  # type: ignore[misc]


def crop_of(row: object) -> Box | None:
    """The crop box of a frame's row (a namedtuple or Series with CROP_COLUMNS), or None."""
    values = [getattr(row, c, float("nan")) for c in CROP_COLUMNS]
    if any(v != v or v == "" for v in values):  # NaN or an empty CSV cell: the whole frame
        return None
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def boxes_of(row: object) -> list[Box | None]:
    """What the model sees of a frame's row, one entry per sample: its boxes (BOXES_COLUMN,
    data.crop=all), else its crop or None (the whole frame)."""
    boxes: list[Box | None] = list(parse_boxes(getattr(row, BOXES_COLUMN, "")))
    return boxes or [crop_of(row)]


def crop_summary(frame: pd.DataFrame) -> str | None:
    """`N animal boxes on M images; K keep their whole frame` for a frame with crops (None
    without: whole frames)."""
    if BOXES_COLUMN not in frame and CROP_COLUMNS[0] not in frame:
        return None
    counts = [0 if b == [None] else len(b) for b in map(boxes_of, frame.itertuples())]
    boxed = sum(1 for n in counts if n)
    return (f"{sum(counts)} animal boxes on {boxed} images; {len(counts) - boxed} keep their "
            "whole frame")  # fmt: skip


def apply_detections(
    root: Path, name: str, frame: pd.DataFrame, fingerprint: str, threshold: float,
    listed: list[str] | None = None, crop: str = "best",
) -> tuple[pd.DataFrame, str, list[Problem]]:  # fmt: skip
    """`frame` with each image's crops (`crop`: best or all) from the detections file `name`
    and `fingerprint` with the file in it (other detections, other crops: other data); or the
    file's problems. `listed`: every image the file may name (default: the frame's)."""
    listed = frame["filepath"].tolist() if listed is None else listed
    found, problems = read_detections(root, name, listed)
    if found is None:
        return frame, fingerprint, problems
    if found.missing:
        log.info("%s lists no detection for %d of the %d images: they keep their whole frame",
                 name, len(found.missing), len(listed))  # fmt: skip
    digest = hashlib.sha256(f"{fingerprint}+{found.sha256}".encode()).hexdigest()
    return with_crops(frame, found, threshold, crop), digest, []
