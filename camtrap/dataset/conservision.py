"""The Conser-vision layout: a data root holding `train_features.csv` (id, filepath, site) and
`train_labels.csv` (id plus one one-hot column per class; the class names are those columns, in
order). `validate_dataset` reports every problem at once — file, 1-based line (the header is
line 1), id and a fix — so a user can repair a dataset in one pass; `load_dataset` raises them as
one DataError.

Photos to label come with a features CSV alone (the competition's `test_features.csv`: id,
filepath, optional site; no labels): `validate_features` / `load_features` run the same checks on
it and its images (ids, paths, unreadable or oversized images)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from camtrap.config import FEATURES_CSV, LABELS_CSV, TEST_FEATURES_CSV
from camtrap.dataset.contract import (
    DEFAULT_LIMITS,
    MIN_CLASSES,
    FeatureData,
    ImageCheck,
    ImageLimits,
    LabelledData,
    decode_check,
    feature_row_problems,
    features_frame,
    filepath_problem,
    id_problems,
    in_reading_order,
    inspect_images,
    labelled_frame,
    reserved_class_problems,
)
from camtrap.dataset.csvtable import Table, has_columns, read_table
from camtrap.errors import DataError, Problem
from camtrap.redact import excerpt

FEATURE_COLUMNS = ("id", "filepath", "site")
# A features CSV of photos to label needs no site: predictions do not use it.
PREDICT_COLUMNS = ("id", "filepath")


def load_dataset(
    root: str | Path,
    features_csv: str = FEATURES_CSV,
    labels_csv: str = LABELS_CSV,
    check_images: bool = True,
    check: ImageCheck = decode_check,
    limits: ImageLimits = DEFAULT_LIMITS,
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
    features_csv: str = FEATURES_CSV,
    labels_csv: str = LABELS_CSV,
    check_images: bool = True,
    workers: int = 8,
    check: ImageCheck = decode_check,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> tuple[LabelledData | None, list[Problem]]:
    """(data, []) for a valid dataset, else (None, every problem found).

    Each image is read once: its bytes are hashed for the fingerprint and, with `check_images`,
    its header is checked against `limits.max_pixels` and the bytes passed to `check` (in a
    thread pool; PIL releases the GIL while decoding). Without `check_images` the images are
    still read and hashed (the fingerprint must follow the data) but not decoded. A file over
    `limits.max_bytes` is a problem either way, found without reading it whole.
    """
    root = Path(root)
    filepath_problem.cache_clear()  # files may have become links since the last validation
    if not root.is_dir():
        fix = "pass the folder that holds the CSV files and the images"
        return None, [Problem(file=str(root), message="data root is not a folder", fix=fix)]
    problems: list[Problem] = []
    features = read_table(root, features_csv, problems)
    labels = read_table(root, labels_csv, problems)
    if features is not None and not has_columns(features, FEATURE_COLUMNS, problems):
        features = None
    classes = _class_columns(labels, problems) if labels is not None else None
    if classes is None:
        labels = None
    label_of: dict[str, str] = {}
    hashes: dict[str, str] = {}
    if features is not None:
        problems += feature_row_problems(features.name, features.rows, root)
        checked = check if check_images else None
        hashes = inspect_images(
            features.name, features.rows, root, checked, workers, limits, problems
        )
    if labels is not None and classes is not None:
        problems += _label_row_problems(labels, classes, label_of)
    if features is not None and labels is not None:
        problems += _id_mismatch_problems(features, labels)
    if problems:
        return None, in_reading_order(problems, [features_csv, labels_csv])
    assert features is not None and labels is not None and classes is not None
    frame = labelled_frame(features.rows, root, label_of, classes, hashes)
    fingerprint = _fingerprint(features.raw, labels.raw, hashes, classes)
    return LabelledData(root=root, frame=frame, classes=classes, fingerprint=fingerprint), []


def load_features(
    root: str | Path,
    features_csv: str = TEST_FEATURES_CSV,
    check: ImageCheck = decode_check,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> FeatureData:
    """`validate_features`, raising DataError with every problem if there are any."""
    data, problems = validate_features(root, features_csv, check=check, limits=limits)
    if problems or data is None:
        raise DataError(problems, root=str(root))
    return data


def validate_features(
    root: str | Path,
    features_csv: str = TEST_FEATURES_CSV,
    workers: int = 8,
    check: ImageCheck = decode_check,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> tuple[FeatureData | None, list[Problem]]:
    """(data, []) for a valid features CSV and its images, else (None, every problem found).

    The checks of `validate_dataset` on the features side: the CSV parses, has `id` and
    `filepath` (`site` is optional, other columns are ignored), ids are unique and not empty,
    filepaths stay inside the root, every image exists, is within `limits` and decodes."""
    root = Path(root)
    filepath_problem.cache_clear()
    if not root.is_dir():
        fix = "pass the folder that holds the features CSV and the images"
        return None, [Problem(file=str(root), message="data root is not a folder", fix=fix)]
    problems: list[Problem] = []
    features = read_table(root, features_csv, problems)
    if features is not None and not has_columns(features, PREDICT_COLUMNS, problems):
        features = None
    hashes: dict[str, str] = {}
    if features is not None:
        problems += feature_row_problems(features.name, features.rows, root, require_site=False)
        hashes = inspect_images(
            features.name, features.rows, root, check, workers, limits, problems
        )
    if problems or features is None:
        return None, in_reading_order(problems, [features_csv])
    frame = features_frame(features.rows, root, hashes)
    fingerprint = _features_fingerprint(features.raw, hashes)
    return FeatureData(root=root, frame=frame, fingerprint=fingerprint), []


# --- labels ---------------------------------------------------------------------------------


def _class_columns(labels: Table, problems: list[Problem]) -> list[str] | None:
    """The class names: every labels column but `id`, in order (at least MIN_CLASSES)."""
    if not has_columns(labels, ["id"], problems):
        return None
    classes = [column for column in labels.header if column != "id"]
    if len(classes) < MIN_CLASSES:
        message = f"needs at least {MIN_CLASSES} class columns after 'id', has {len(classes)}"
        problems.append(Problem(labels.name, message, "add one 0/1 column per class", 1))
        return None
    problems += reserved_class_problems(labels.name, classes)
    return classes


def _label_row_problems(
    labels: Table, classes: list[str], label_of: dict[str, str]
) -> list[Problem]:
    """Ids and one-hot rows; fills `label_of` (id -> class) for the good rows."""
    problems = id_problems(labels.name, labels.rows)
    for line, row in labels.rows:
        label, message = _one_hot_label(row, classes)
        if message is not None:
            fix = "put 1 (or 1.0) in exactly one class column and 0 in the others"
            problems.append(Problem(labels.name, message, fix, line, excerpt(row["id"]) or None))
        elif label is not None:
            label_of.setdefault(row["id"], label)
    return problems


def _one_hot_label(row: dict[str, str], classes: list[str]) -> tuple[str | None, str | None]:
    """(the class marked 1, None) or (None, what is wrong). `1.0`/`0.0` count as 1/0."""
    bad = [f"{name}={row[name]!r}" for name in classes if _as_binary(row[name]) is None]
    if bad:
        return None, f"label values must be 0 or 1, got {excerpt(', '.join(bad))}"
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


def _id_mismatch_problems(features: Table, labels: Table) -> list[Problem]:
    """Ids in one CSV but not the other, reported on the line where they do appear."""
    problems: list[Problem] = []
    pairs = ((features, labels, "label row"), (labels, features, "features row"))
    for table, other, what in pairs:
        known = {row["id"] for _, row in other.rows} | other.broken_ids
        for line, row in table.rows:
            if row["id"] and row["id"] not in known:
                shown = excerpt(row["id"])
                message = f"id {shown!r} has no {what} in {other.name}"
                fix = f"add a row for it to {other.name} or remove it from {table.name}"
                problems.append(Problem(table.name, message, fix, line, shown))
    return problems


# --- fingerprints ---------------------------------------------------------------------------


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
