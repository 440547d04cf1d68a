"""The data contract every reader of a dataset meets, whatever the format on disk: one validated
table with a row per image (id, image path inside the data root, site, label), the classes, and a
fingerprint that changes exactly when the data does. Also the checks every reader shares: ids,
image paths that stay inside the data root, and each image read once (hashed for the
fingerprint, checked against the size limits, decoded). Problems are collected, never raised one
by one, so a user can repair a dataset in one pass."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd

from camtrap.config import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from camtrap.dataset.csvtable import Row
from camtrap.dataset.media import is_uri
from camtrap.dataset.media import local_path as media_local_path
from camtrap.errors import DataError, Problem
from camtrap.images import check_image, header_problem, read_image_bytes

MIN_CLASSES = 2
FAILED_COLUMNS = ["id", "filepath", "site", "event", "timestamp", "failure"]
# Columns the pipeline writes beside the class columns (the labels frame, split.csv,
# predictions/val.csv, stages.split_items): a class with one of these names would collide
# with them after training, so validation refuses it.
RESERVED_COLUMNS = ("id", "filepath", "path", "site", "label", "label_idx", "split", "sha256",
                    "row")  # fmt: skip

# How validation checks one image: (file bytes, their sha256, the image's path) -> the Problem
# with it, or None. The default decodes it (at reduced scale for JPEGs); the image cache's
# `Decoder` decodes it in full and keeps the pixels, so a run decodes each image once.
ImageCheck = Callable[[bytes, str, str], Problem | None]
# What inspecting one image file found: (the sha256 of its bytes, the Problem with it).
Inspection = tuple[str | None, Problem | None]


@runtime_checkable
class ImageMemo(Protocol):
    """What a check may carry as its `memo` (the image cache's Decoder does:
    camtrap.imagecache_hashes): what inspecting each file found, kept by the file's identity,
    so that a rerun does not read, hash or check an unchanged file again."""

    def inspected(
        self, path: str, max_bytes: int, max_pixels: int, inspect: Callable[[], Inspection]
    ) -> Inspection: ...


def decode_check(data: bytes, digest: str, name: str) -> Problem | None:
    return check_image(data, name=name)


@dataclass
class LabelledData:
    """A validated dataset: one row per image, in features-CSV order."""

    root: Path
    # id, filepath, path (absolute), site, label, label_idx, sha256 (+ event, timestamp for the
    # formats that have them: "" where unknown)
    frame: pd.DataFrame
    classes: list[str]
    fingerprint: str  # sha256 over the source files, every image's sha256 (by id), the classes
    # images the reader left out on purpose, by reason (no label, two labels with
    # data.multi_label=drop): `camtrap validate` reports them
    left_out: dict[str, int] = field(default_factory=dict)


@dataclass
class FeatureData:
    """A validated features CSV without labels (photos to label): one row per image, in CSV
    order."""

    root: Path
    frame: pd.DataFrame  # id, filepath, path (absolute), site ("" when absent), sha256
    fingerprint: str  # sha256 over the CSV's bytes and every image's sha256 (by id)
    # photos that could not be read (id, filepath, site, event, timestamp, failure: why): not
    # labelled, listed in the outputs
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILED_COLUMNS))


@dataclass(frozen=True)
class ImageLimits:
    """Per image: files over `max_bytes` are not read past the limit, images whose header
    declares over `max_pixels` pixels are not decoded (data.max_image_bytes / _pixels)."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


DEFAULT_LIMITS = ImageLimits()


def reserved_class_problems(file: str, classes: list[str], line: int | None = 1) -> list[Problem]:
    """A class named like a column the pipeline adds (e.g. `label`) would break its outputs
    after training; refused here, where the class is named (`line`: the header's)."""
    return [
        Problem(
            file,
            f"class column {name!r} has a name the pipeline reserves for its own "
            f"column (reserved: {', '.join(RESERVED_COLUMNS)})",
            f"rename the class column {name!r} in the header (e.g. to '{name}_class')",
            line,
        )
        for name in classes
        if name in RESERVED_COLUMNS
    ]


# --- row checks ----------------------------------------------------------------------------


def id_problems(file: str, rows: list[Row]) -> list[Problem]:
    """Empty and repeated ids."""
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        row_id = row["id"]
        if not row_id:
            problems.append(Problem(file, "id is empty", "give every row an id", line))
        elif row_id in first_line:
            message = f"id {row_id!r} is repeated (first on line {first_line[row_id]})"
            fix = "ids must be unique: remove or rename the repeat"
            problems.append(Problem(file, message, fix, line, row_id))
        else:
            first_line[row_id] = line
    return problems


def feature_row_problems(
    file: str, rows: list[Row], root: Path, require_site: bool = True
) -> list[Problem]:
    """Ids, sites and image paths of the rows that list images."""
    problems = id_problems(file, rows)
    for line, row in rows:
        row_id = row["id"] or None
        if require_site and not row["site"]:
            fix = "give every image its camera site"
            problems.append(Problem(file, "site is empty", fix, line, row_id))
        message = filepath_problem(root, row["filepath"])
        if message is not None:
            fix = "use a path relative to the data root, inside it (e.g. train_features/x.jpg)"
            problems.append(Problem(file, message, fix, line, row_id))
    return problems


# Asked twice per row (row checks, then image reads): remembered, as are the root's own paths.
@functools.lru_cache(maxsize=1 << 17)
def filepath_problem(root: Path, filepath: str) -> str | None:
    """Why `filepath` may not be used (empty, absolute, leaving the root), or None. A URI
    (camtrap.dataset.media: a Camtrap DP filePath) is checked by its reader."""
    if not filepath:
        return "filepath is empty"
    if is_uri(filepath):
        return None
    if Path(filepath).is_absolute():
        return f"filepath {filepath!r} is absolute"
    lexical = image_path(root, filepath)
    if not lexical.is_relative_to(_absolute(root)):
        return f"filepath {filepath!r} leads outside the data root ('..')"
    if not lexical.resolve().is_relative_to(_real(root)):
        return f"filepath {filepath!r} is a link to {lexical.resolve()}, outside the data root"
    return None


@functools.lru_cache(maxsize=64)
def _absolute(root: Path) -> Path:
    return Path(os.path.abspath(root))


@functools.lru_cache(maxsize=64)
def _real(root: Path) -> Path:
    return root.resolve()


def image_path(root: Path, filepath: str) -> Path:
    """The absolute path of an image, `..` collapsed, links inside the root left as they are;
    for a URI, where its bytes are on this machine (camtrap.dataset.media)."""
    if is_uri(filepath):
        return media_local_path(filepath)
    return Path(os.path.normpath(_absolute(root) / filepath))


# --- images --------------------------------------------------------------------------------


def inspect_images(
    file: str,
    rows: list[Row],
    root: Path,
    check: ImageCheck | None,
    workers: int,
    limits: ImageLimits,
    problems: list[Problem],
) -> dict[str, str]:
    """Read every image once (a thread pool); returns id -> sha256, appends the problems."""
    usable = [
        (ln, r, str(image_path(root, r["filepath"])))  # once per row: a rerun's main cost
        for ln, r in rows
        if filepath_problem(root, r["filepath"]) is None
    ]
    paths = sorted({path for _, _, path in usable})
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths) or 1))) as pool:
        found = list(pool.map(lambda path: _inspect_image(path, check, limits), paths))
    results = dict(zip(paths, found, strict=True))
    hashes: dict[str, str] = {}
    for line, row, path in usable:
        digest, problem = results[path]
        if problem is not None:
            message = f"image {row['filepath']} {problem.message}"
            problems.append(Problem(file, message, problem.fix, line, row["id"] or None))
        elif digest is not None:
            hashes[row["id"]] = digest
    return hashes


def _inspect_image(path: str, check: ImageCheck | None, limits: ImageLimits) -> Inspection:
    """(sha256 of the file, the Problem with it or None): what the check's memo remembers of
    the file when it is unchanged, else `_read_image`'s."""
    memo = getattr(check, "memo", None)
    if not isinstance(memo, ImageMemo):
        return _read_image(path, check, limits)
    inspect = functools.partial(_read_image, path, check, limits)
    return memo.inspected(path, limits.max_bytes, limits.max_pixels, inspect)


def _read_image(path: str, check: ImageCheck | None, limits: ImageLimits) -> Inspection:
    """Read the file once, hash it, check it. The size limits come first, so an oversized file
    is neither read whole nor decoded."""
    try:
        data = read_image_bytes(path, max_bytes=limits.max_bytes)
    except DataError as err:
        return None, err.problems[0]
    digest = hashlib.sha256(data).hexdigest()
    if check is None:
        return digest, None
    return digest, header_problem(data, path, limits.max_pixels) or check(data, digest, path)


# --- the validated table ---------------------------------------------------------------------


def labelled_frame(
    rows: list[Row],
    root: Path,
    label_of: dict[str, str],
    classes: list[str],
    hashes: dict[str, str],
) -> pd.DataFrame:
    index = {name: i for i, name in enumerate(classes)}
    records = [
        {
            "id": row["id"],
            "filepath": row["filepath"],
            "path": str(image_path(root, row["filepath"])),
            "site": row["site"],
            "label": label_of[row["id"]],
            "label_idx": index[label_of[row["id"]]],
            "sha256": hashes[row["id"]],
        }
        for _, row in rows
    ]
    frame = pd.DataFrame.from_records(records)
    return frame.astype({"label_idx": "int64"})


def features_frame(rows: list[Row], root: Path, hashes: dict[str, str]) -> pd.DataFrame:
    records = [
        {
            "id": row["id"],
            "filepath": row["filepath"],
            "path": str(image_path(root, row["filepath"])),
            "site": row.get("site", ""),
            "sha256": hashes[row["id"]],
        }
        for _, row in rows
    ]
    return pd.DataFrame.from_records(records, columns=["id", "filepath", "path", "site", "sha256"])


def in_reading_order(problems: list[Problem], files: list[str]) -> list[Problem]:
    """In the order of `files` (features CSV first, then labels CSV), each by line; file-level
    problems first."""

    def key(problem: Problem) -> tuple[int, int]:
        rank = files.index(problem.file) if problem.file in files else len(files)
        return rank, problem.line or 0

    return sorted(problems, key=key)
