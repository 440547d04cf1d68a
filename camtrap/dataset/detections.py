"""Detections as data: a MegaDetector batch output file (data.detections, `camtrap predict
--detections`) matched to a dataset's images, checked like the CSVs, and each image's crop.

`images[].file` is matched to the image's path inside the data root. Problems, each with the
record and the fix: a file that is not one of the dataset's images, the same file twice, a box
outside [0, 1] or a confidence outside 0..1 (camtrap.dataset.megadetector). Dataset images the
file does not list are not problems: they have no detection (they keep their whole frame), and
`missing` counts them.

The crop of an image (data.crop=best) is its most confident animal box with conf >=
data.detection_threshold, as (x, y, w, h) normalised; camtrap.imagecache squares it with
data.crop_margin context and clips it to the image when it decodes it, once."""

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


def best_box(image: DetectionImage | None, threshold: float) -> tuple[float, ...] | None:
    """The most confident animal box with conf >= threshold, or None (the whole frame)."""
    if image is None or image.failure:
        return None
    animals = [d for d in image.detections if d.category == "animal" and d.conf >= threshold]
    return max(animals, key=lambda d: d.conf).bbox if animals else None


def with_crops(frame: pd.DataFrame, detections: Detections, threshold: float) -> pd.DataFrame:
    """`frame` (a row per image, `filepath`) with the crop columns: each image's best box, NaN
    where it keeps its whole frame."""
    boxes = [best_box(detections.by_file.get(f), threshold) for f in frame["filepath"]]
    columns = {c: [b[i] if b else float("nan") for b in boxes] for i, c in enumerate(CROP_COLUMNS)}
    return frame.assign(**columns)


def crop_of(row: object) -> tuple[float, float, float, float] | None:
    """The crop box of a frame's row (a namedtuple or Series with CROP_COLUMNS), or None."""
    values = [getattr(row, c, float("nan")) for c in CROP_COLUMNS]
    if any(v != v or v == "" for v in values):  # NaN or an empty CSV cell: the whole frame
        return None
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def apply_detections(
    root: Path, name: str, frame: pd.DataFrame, fingerprint: str, threshold: float,
    listed: list[str] | None = None,
) -> tuple[pd.DataFrame, str, list[Problem]]:  # fmt: skip
    """`frame` with each image's crop from the detections file `name` and `fingerprint` with
    the file in it (other detections, other crops: other data); or the file's problems.
    `listed`: every image the file may name (default: the frame's)."""
    listed = frame["filepath"].tolist() if listed is None else listed
    found, problems = read_detections(root, name, listed)
    if found is None:
        return frame, fingerprint, problems
    if found.missing:
        log.info("%s lists no detection for %d of the %d images: they keep their whole frame",
                 name, len(found.missing), len(listed))  # fmt: skip
    digest = hashlib.sha256(f"{fingerprint}+{found.sha256}".encode()).hexdigest()
    return with_crops(frame, found, threshold), digest, []
