"""The Conser-vision data contract: read and validate the two CSVs and the images they name.

A data root holds `train_features.csv` (id, filepath, site) and `train_labels.csv` (id plus one
one-hot column per class; the class names are those columns, in order). `validate_dataset`
reports every problem at once — file, 1-based line (the header is line 1), id and a fix — so a
user can repair a dataset in one pass; `load_dataset` raises them as one DataError.

Photos to label come with a features CSV alone (the competition's `test_features.csv`: id,
filepath, optional site; no labels): `validate_features` / `load_features` run the same checks on
it and its images (ids, paths, unreadable or oversized images).

CSVs are parsed with the `csv` module rather than pandas so that line numbers stay exact (blank
lines and quoted newlines do not shift them) and every value stays the string it was (`007`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from camtrap.config import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from camtrap.errors import DataError, Problem
from camtrap.images import check_image, header_problem, read_image_bytes

FEATURE_COLUMNS = ("id", "filepath", "site")
# A features CSV of photos to label needs no site: predictions do not use it.
PREDICT_COLUMNS = ("id", "filepath")
MIN_CLASSES = 2
# Columns the pipeline writes beside the class columns (the labels frame, split.csv,
# predictions/val.csv, pipeline.split_items): a class with one of these names would collide
# with them after training, so validation refuses it.
RESERVED_COLUMNS = ("id", "filepath", "path", "site", "label", "label_idx", "split", "sha256",
                    "row")  # fmt: skip

# How validation checks one image: (file bytes, their sha256, the image's path) -> the Problem
# with it, or None. The default decodes it (at reduced scale for JPEGs); the image cache's
# `Decoder` decodes it in full and keeps the pixels, so a run decodes each image once.
ImageCheck = Callable[[bytes, str, str], Problem | None]


def decode_check(data: bytes, digest: str, name: str) -> Problem | None:
    return check_image(data, name=name)


@dataclass
class LabelledData:
    """A validated dataset: one row per image, in features-CSV order."""

    root: Path
    frame: pd.DataFrame  # id, filepath, path (absolute), site, label, label_idx, sha256
    classes: list[str]
    fingerprint: str  # sha256 over both CSVs, every image's sha256 (by id) and the classes


@dataclass
class FeatureData:
    """A validated features CSV without labels (photos to label): one row per image, in CSV
    order."""

    root: Path
    frame: pd.DataFrame  # id, filepath, path (absolute), site ("" when absent), sha256
    fingerprint: str  # sha256 over the CSV's bytes and every image's sha256 (by id)


@dataclass(frozen=True)
class ImageLimits:
    """Per image: files over `max_bytes` are not read past the limit, images whose header
    declares over `max_pixels` pixels are not decoded (data.max_image_bytes / _pixels)."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class _Table:
    """One parsed CSV: its name as given (for messages), raw bytes, header and good rows."""

    name: str
    raw: bytes
    header: list[str]
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (line, values)
    # ids of rows dropped for a wrong field count: not reported again as "missing" elsewhere
    broken_ids: set[str] = field(default_factory=set)


def load_dataset(
    root: str | Path,
    features_csv: str = "train_features.csv",
    labels_csv: str = "train_labels.csv",
    check_images: bool = True,
    check: ImageCheck = decode_check,
    limits: ImageLimits = ImageLimits(),
) -> LabelledData:
    """`validate_dataset`, raising DataError with every problem if there are any."""
    data, problems = validate_dataset(
        root, features_csv, labels_csv, check_images, check=check, limits=limits
    )
    if problems or data is None:
        raise DataError(problems, root=str(root))
    return data


def validate_dataset(
    root: str | Path,
    features_csv: str = "train_features.csv",
    labels_csv: str = "train_labels.csv",
    check_images: bool = True,
    workers: int = 8,
    check: ImageCheck = decode_check,
    limits: ImageLimits = ImageLimits(),
) -> tuple[LabelledData | None, list[Problem]]:
    """(data, []) for a valid dataset, else (None, every problem found).

    Each image is read once: its bytes are hashed for the fingerprint and, with `check_images`,
    its header is checked against `limits.max_pixels` and the bytes passed to `check` (in a
    thread pool; PIL releases the GIL while decoding). Without `check_images` the images are
    still read and hashed (the fingerprint must follow the data) but not decoded. A file over
    `limits.max_bytes` is a problem either way, found without reading it whole.
    """
    root = Path(root)
    _filepath_problem.cache_clear()  # files may have become links since the last validation
    if not root.is_dir():
        fix = "pass the folder that holds the CSV files and the images"
        return None, [Problem(file=str(root), message="data root is not a folder", fix=fix)]
    problems: list[Problem] = []
    features = _read_table(root, features_csv, problems)
    labels = _read_table(root, labels_csv, problems)
    if features is not None and not _has_columns(features, FEATURE_COLUMNS, problems):
        features = None
    classes = _class_columns(labels, problems) if labels is not None else None
    if classes is None:
        labels = None
    label_of: dict[str, str] = {}
    hashes: dict[str, str] = {}
    if features is not None:
        problems += _feature_row_problems(features, root)
        checked = check if check_images else None
        hashes = _check_images(features, root, checked, workers, limits, problems)
    if labels is not None and classes is not None:
        problems += _label_row_problems(labels, classes, label_of)
    if features is not None and labels is not None:
        problems += _id_mismatch_problems(features, labels)
    if problems:
        return None, _in_reading_order(problems, [features_csv, labels_csv])
    assert features is not None and labels is not None and classes is not None
    frame = _build_frame(features, root, label_of, classes, hashes)
    fingerprint = _fingerprint(features.raw, labels.raw, hashes, classes)
    return LabelledData(root=root, frame=frame, classes=classes, fingerprint=fingerprint), []


def load_features(
    root: str | Path,
    features_csv: str = "test_features.csv",
    check: ImageCheck = decode_check,
    limits: ImageLimits = ImageLimits(),
) -> FeatureData:
    """`validate_features`, raising DataError with every problem if there are any."""
    data, problems = validate_features(root, features_csv, check=check, limits=limits)
    if problems or data is None:
        raise DataError(problems, root=str(root))
    return data


def validate_features(
    root: str | Path,
    features_csv: str = "test_features.csv",
    workers: int = 8,
    check: ImageCheck = decode_check,
    limits: ImageLimits = ImageLimits(),
) -> tuple[FeatureData | None, list[Problem]]:
    """(data, []) for a valid features CSV and its images, else (None, every problem found).

    The checks of `validate_dataset` on the features side: the CSV parses, has `id` and
    `filepath` (`site` is optional, other columns are ignored), ids are unique and not empty,
    filepaths stay inside the root, every image exists, is within `limits` and decodes."""
    root = Path(root)
    _filepath_problem.cache_clear()
    if not root.is_dir():
        fix = "pass the folder that holds the features CSV and the images"
        return None, [Problem(file=str(root), message="data root is not a folder", fix=fix)]
    problems: list[Problem] = []
    features = _read_table(root, features_csv, problems)
    if features is not None and not _has_columns(features, PREDICT_COLUMNS, problems):
        features = None
    hashes: dict[str, str] = {}
    if features is not None:
        problems += _feature_row_problems(features, root, require_site=False)
        hashes = _check_images(features, root, check, workers, limits, problems)
    if problems or features is None:
        return None, _in_reading_order(problems, [features_csv])
    frame = _features_frame(features, root, hashes)
    fingerprint = _features_fingerprint(features.raw, hashes)
    return FeatureData(root=root, frame=frame, fingerprint=fingerprint), []


# --- reading -------------------------------------------------------------------------------


def _read_table(root: Path, name: str, problems: list[Problem]) -> _Table | None:
    """Parse `root/name`; on failure append a Problem and return None."""
    path = root / name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.append(Problem(name, "file does not exist", f"put {name} in {root}"))
        return None
    except OSError as err:
        problems.append(Problem(name, f"cannot be read: {err.strerror or err}", "check the file"))
        return None
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate the BOM that Excel writes
    except UnicodeDecodeError as err:
        fix = "save it as UTF-8 CSV"
        problems.append(Problem(name, f"is not UTF-8 text ({err.reason} at byte {err.start})", fix))
        return None
    return _parse_csv(name, raw, text, problems)


def _parse_csv(name: str, raw: bytes, text: str, problems: list[Problem]) -> _Table | None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    table: _Table | None = None
    try:
        for line, values in _records(reader):
            if table is None:
                table = _Table(name, raw, header=values)
                if not _header_ok(table, line, problems):
                    return None
            elif len(values) != len(table.header):
                table.broken_ids.add(_row_id(table, values))
                problems.append(_field_count_problem(table, line, values))
            else:
                table.rows.append((line, dict(zip(table.header, values, strict=True))))
    except csv.Error as err:
        fix = "fix the quoting on that line (a value with a comma or quote must be in quotes)"
        problems.append(Problem(name, f"cannot be parsed as CSV: {err}", fix, reader.line_num))
        return None
    if table is None:
        problems.append(Problem(name, "is empty", "write the header and one row per image"))
    elif not table.rows and not table.broken_ids:
        problems.append(Problem(name, "has a header but no data rows", "add one row per image", 1))
    return table if table is not None and table.rows else None


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, stripped values) from a csv.reader, skipping blank rows and
    rows of empty values (spreadsheets leave those at the end)."""
    line = 1
    for values in reader:
        start, line = line, reader.line_num + 1  # line_num: the record's last line
        stripped = [value.strip() for value in values]
        if any(stripped):
            yield start, stripped


def _header_ok(table: _Table, line: int, problems: list[Problem]) -> bool:
    seen: set[str] = set()
    ok = True
    for column in table.header:
        if not column:
            fix = "name every column (or remove trailing commas)"
            problems.append(Problem(table.name, "the header has an empty column name", fix, line))
            ok = False
        elif column in seen:
            message = f"column {column!r} appears twice in the header"
            problems.append(Problem(table.name, message, "give every column a distinct name", line))
            ok = False
        seen.add(column)
    return ok


def _field_count_problem(table: _Table, line: int, values: list[str]) -> Problem:
    return Problem(
        table.name,
        f"has {len(values)} values but the header has {len(table.header)} columns",
        "give the row one value per column; quote values that contain commas",
        line,
        _row_id(table, values) or None,
    )


def _row_id(table: _Table, values: list[str]) -> str:
    """The id of a row that may be short or long: the value under the `id` column, if any."""
    position = table.header.index("id") if "id" in table.header else 0
    return values[position] if position < len(values) else ""


def _has_columns(table: _Table, required: Iterable[str], problems: list[Problem]) -> bool:
    missing = [column for column in required if column not in table.header]
    for column in missing:
        message = f"required column {column!r} is missing"
        problems.append(Problem(table.name, message, f"add a {column!r} column to the header", 1))
    return not missing


def _class_columns(labels: _Table, problems: list[Problem]) -> list[str] | None:
    """The class names: every labels column but `id`, in order (at least MIN_CLASSES)."""
    if not _has_columns(labels, ["id"], problems):
        return None
    classes = [column for column in labels.header if column != "id"]
    if len(classes) < MIN_CLASSES:
        message = f"needs at least {MIN_CLASSES} class columns after 'id', has {len(classes)}"
        problems.append(Problem(labels.name, message, "add one 0/1 column per class", 1))
        return None
    problems += _reserved_class_problems(labels, classes)
    return classes


def _reserved_class_problems(labels: _Table, classes: list[str]) -> list[Problem]:
    """A class named like a column the pipeline adds (e.g. `label`) would break its outputs
    after training; refused here, with the line of the header."""
    return [
        Problem(
            labels.name,
            f"class column {name!r} has a name the pipeline reserves for its own "
            f"column (reserved: {', '.join(RESERVED_COLUMNS)})",
            f"rename the class column {name!r} in the header (e.g. to '{name}_class')",
            1,
        )
        for name in classes
        if name in RESERVED_COLUMNS
    ]


# --- row checks ----------------------------------------------------------------------------


def _id_problems(table: _Table) -> list[Problem]:
    """Empty and repeated ids."""
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for line, row in table.rows:
        row_id = row["id"]
        if not row_id:
            problems.append(Problem(table.name, "id is empty", "give every row an id", line))
        elif row_id in first_line:
            message = f"id {row_id!r} is repeated (first on line {first_line[row_id]})"
            fix = "ids must be unique: remove or rename the repeat"
            problems.append(Problem(table.name, message, fix, line, row_id))
        else:
            first_line[row_id] = line
    return problems


def _feature_row_problems(features: _Table, root: Path, require_site: bool = True) -> list[Problem]:
    problems = _id_problems(features)
    for line, row in features.rows:
        row_id = row["id"] or None
        if require_site and not row["site"]:
            fix = "give every image its camera site"
            problems.append(Problem(features.name, "site is empty", fix, line, row_id))
        message = _filepath_problem(root, row["filepath"])
        if message is not None:
            fix = "use a path relative to the data root, inside it (e.g. train_features/x.jpg)"
            problems.append(Problem(features.name, message, fix, line, row_id))
    return problems


# Asked twice per row (row checks, then image reads): remembered, as are the root's own paths.
@functools.lru_cache(maxsize=1 << 17)
def _filepath_problem(root: Path, filepath: str) -> str | None:
    """Why `filepath` may not be used (empty, absolute, leaving the root), or None."""
    if not filepath:
        return "filepath is empty"
    if Path(filepath).is_absolute():
        return f"filepath {filepath!r} is absolute"
    lexical = _image_path(root, filepath)
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


def _image_path(root: Path, filepath: str) -> Path:
    """The absolute path of an image, `..` collapsed, links inside the root left as they are."""
    return Path(os.path.normpath(_absolute(root) / filepath))


def _label_row_problems(
    labels: _Table, classes: list[str], label_of: dict[str, str]
) -> list[Problem]:
    """Ids and one-hot rows; fills `label_of` (id -> class) for the good rows."""
    problems = _id_problems(labels)
    for line, row in labels.rows:
        label, message = _one_hot_label(row, classes)
        if message is not None:
            fix = "put 1 (or 1.0) in exactly one class column and 0 in the others"
            problems.append(Problem(labels.name, message, fix, line, row["id"] or None))
        elif label is not None:
            label_of.setdefault(row["id"], label)
    return problems


def _one_hot_label(row: dict[str, str], classes: list[str]) -> tuple[str | None, str | None]:
    """(the class marked 1, None) or (None, what is wrong). `1.0`/`0.0` count as 1/0."""
    bad = [f"{name}={row[name]!r}" for name in classes if _as_binary(row[name]) is None]
    if bad:
        return None, f"label values must be 0 or 1, got {', '.join(bad)}"
    ones = [name for name in classes if _as_binary(row[name]) == 1]
    if not ones:
        return None, "no class is marked 1 (every value is 0)"
    if len(ones) > 1:
        return None, f"{len(ones)} classes are marked 1 ({', '.join(ones)}); exactly one must be"
    return ones[0], None


def _as_binary(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def _id_mismatch_problems(features: _Table, labels: _Table) -> list[Problem]:
    """Ids in one CSV but not the other, reported on the line where they do appear."""
    problems: list[Problem] = []
    pairs = ((features, labels, "label row"), (labels, features, "features row"))
    for table, other, what in pairs:
        known = {row["id"] for _, row in other.rows} | other.broken_ids
        for line, row in table.rows:
            if row["id"] and row["id"] not in known:
                message = f"id {row['id']!r} has no {what} in {other.name}"
                fix = f"add a row for it to {other.name} or remove it from {table.name}"
                problems.append(Problem(table.name, message, fix, line, row["id"]))
    return problems


# --- images --------------------------------------------------------------------------------


def _check_images(
    features: _Table,
    root: Path,
    check: ImageCheck | None,
    workers: int,
    limits: ImageLimits,
    problems: list[Problem],
) -> dict[str, str]:
    """Read every image once (a thread pool); returns id -> sha256, appends the problems."""
    rows = [(ln, r) for ln, r in features.rows if _filepath_problem(root, r["filepath"]) is None]
    paths = sorted({str(_image_path(root, row["filepath"])) for _, row in rows})
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths) or 1))) as pool:
        found = list(pool.map(lambda path: _inspect_image(path, check, limits), paths))
    results = dict(zip(paths, found, strict=True))
    hashes: dict[str, str] = {}
    for line, row in rows:
        digest, problem = results[str(_image_path(root, row["filepath"]))]
        if problem is not None:
            message = f"image {row['filepath']} {problem.message}"
            problems.append(Problem(features.name, message, problem.fix, line, row["id"] or None))
        elif digest is not None:
            hashes[row["id"]] = digest
    return hashes


def _inspect_image(
    path: str, check: ImageCheck | None, limits: ImageLimits
) -> tuple[str | None, Problem | None]:
    """(sha256 of the file, the Problem with it or None), reading the file once. The size
    limits come first, so an oversized file is neither read whole nor decoded."""
    try:
        data = read_image_bytes(path, max_bytes=limits.max_bytes)
    except DataError as err:
        return None, err.problems[0]
    digest = hashlib.sha256(data).hexdigest()
    if check is None:
        return digest, None
    return digest, header_problem(data, path, limits.max_pixels) or check(data, digest, path)


# --- result --------------------------------------------------------------------------------


def _build_frame(
    features: _Table,
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
            "path": str(_image_path(root, row["filepath"])),
            "site": row["site"],
            "label": label_of[row["id"]],
            "label_idx": index[label_of[row["id"]]],
            "sha256": hashes[row["id"]],
        }
        for _, row in features.rows
    ]
    frame = pd.DataFrame.from_records(records)
    return frame.astype({"label_idx": "int64"})


def _features_frame(features: _Table, root: Path, hashes: dict[str, str]) -> pd.DataFrame:
    records = [
        {
            "id": row["id"],
            "filepath": row["filepath"],
            "path": str(_image_path(root, row["filepath"])),
            "site": row.get("site", ""),
            "sha256": hashes[row["id"]],
        }
        for _, row in features.rows
    ]
    return pd.DataFrame.from_records(records, columns=["id", "filepath", "path", "site", "sha256"])


def _features_fingerprint(features_raw: bytes, image_hashes: dict[str, str]) -> str:
    """sha256 over the features CSV's bytes and each image's sha256 (sorted by id)."""
    content = {
        "features_csv": hashlib.sha256(features_raw).hexdigest(),
        "images": sorted(image_hashes.items()),
    }
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _fingerprint(
    features_raw: bytes, labels_raw: bytes, image_hashes: dict[str, str], classes: list[str]
) -> str:
    """sha256 over both CSVs' bytes, each image's sha256 (sorted by id) and the classes."""
    content = {
        "features_csv": hashlib.sha256(features_raw).hexdigest(),
        "labels_csv": hashlib.sha256(labels_raw).hexdigest(),
        "images": sorted(image_hashes.items()),
        "classes": classes,
    }
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _in_reading_order(problems: list[Problem], files: list[str]) -> list[Problem]:
    """Features CSV first, then labels CSV, each by line; file-level problems first."""

    def key(problem: Problem) -> tuple[int, int]:
        rank = files.index(problem.file) if problem.file in files else len(files)
        return rank, problem.line or 0

    return sorted(problems, key=key)
