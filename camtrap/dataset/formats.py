"""Which reader a dataset needs (data.format, or `auto`: the one the data root holds), and what
each format keeps where: the metadata files to fetch first, then the images they list. The
Conser-vision CSVs are tried first, then a Camtrap DP package, a COCO Camera Traps JSON, and
last class folders."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from camtrap import storage
from camtrap.config import DATAPACKAGE_JSON, DataConfig
from camtrap.dataset.contract import (
    DEFAULT_LIMITS,
    ImageCheck,
    ImageLimits,
    LabelledData,
    decode_check,
)
from camtrap.dataset.detections import apply_detections
from camtrap.errors import DataError, Problem

log = logging.getLogger("camtrap")

FORMAT_FIX = (
    "put train_features.csv + train_labels.csv (conservision), datapackage.json (camtrap-dp), a "
    "COCO Camera Traps JSON (coco, with data.annotations=FILE.json) or one folder per class "
    "(folders) there, or set data.format"
)


def resolve_format(root: str | Path, data: DataConfig) -> str:
    """data.format, or for `auto` the format the data root (local or s3://) holds."""
    if data.format != "auto":
        return data.format
    if data.annotations:
        return "coco"
    root = str(root)
    if storage.exists(storage.join(root, data.features_csv)) and storage.exists(
        storage.join(root, data.labels_csv)
    ):
        return "conservision"
    if storage.exists(storage.join(root, DATAPACKAGE_JSON)):
        return "camtrap-dp"
    if coco_file(root) is not None:
        return "coco"
    return "folders"


def coco_file(root: str) -> str | None:
    """The one JSON file at the top of the data root that is a COCO Camera Traps file."""
    names = [name for name in _top_files(root) if name.lower().endswith(".json")]
    found = [name for name in names if _is_coco(storage.join(root, name))]
    return found[0] if len(found) == 1 else None


def _top_files(root: str) -> list[str]:
    if storage.is_remote(root):
        return sorted(name for name in storage.list_files(root) if "/" not in name)
    folder = Path(root)
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _is_coco(uri: str) -> bool:
    try:
        doc = json.loads(storage.read_bytes(uri))
    except (ValueError, OSError, storage.StorageError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in ("images", "categories", "annotations"))


def annotations_file(root: str | Path, data: DataConfig) -> str:
    """The COCO file: data.annotations, else the one the root holds."""
    found = data.annotations or coco_file(str(root))
    if found is None:
        raise DataError([Problem(str(root), "no COCO Camera Traps JSON found", FORMAT_FIX)])
    return found


def validate_data(
    root: str | Path,
    data: DataConfig,
    check_images: bool = True,
    workers: int = 8,
    check: ImageCheck = decode_check,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> tuple[LabelledData | None, list[Problem]]:
    """(data, []) for a valid dataset in data.format (or the one found), else (None, every
    problem), each with its file, line or record and the fix."""
    from camtrap.dataset.camtrapdp import read_package
    from camtrap.dataset.coco import read_coco
    from camtrap.dataset.conservision import validate_dataset
    from camtrap.dataset.folders import read_folders

    root = Path(root)
    if not root.is_dir():
        fix = "pass the folder that holds the dataset"
        return None, [Problem(file=str(root), message="data root is not a folder", fix=fix)]
    checked = check if check_images else None
    fmt = resolve_format(root, data)
    if fmt == "conservision":
        found = validate_dataset(root, data.features_csv, data.labels_csv, check_images,
                                 workers, check, limits)  # fmt: skip
    elif fmt == "coco":
        try:
            annotations = annotations_file(root, data)
        except DataError as err:
            return None, err.problems
        found = read_coco(root, annotations, data.multi_label, checked, workers, limits)
    elif fmt == "camtrap-dp":
        found = read_package(root, data.multi_label, checked, workers, limits, data.allow_http)
    else:
        found = read_folders(root, data.multi_label, checked, workers, limits)
    return _with_detections(root, data, *found)


def _with_detections(
    root: Path, data: DataConfig, found: LabelledData | None, problems: list[Problem]
) -> tuple[LabelledData | None, list[Problem]]:
    """data.detections checked against the dataset's images (camtrap.dataset.detections)."""
    if found is None or data.detections is None:
        return found, problems
    frame, fingerprint, wrong = apply_detections(
        root, data.detections, found.frame, found.fingerprint, data.detection_threshold,
        crop=data.crop,
    )  # fmt: skip
    if wrong:
        return None, wrong
    return dataclasses.replace(found, frame=frame, fingerprint=fingerprint), []


def load_data(
    root: str | Path,
    data: DataConfig,
    check: ImageCheck = decode_check,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> LabelledData:
    """`validate_data`, raising DataError with every problem if there are any."""
    found, problems = validate_data(root, data, check=check, limits=limits)
    if problems or found is None:
        raise DataError(problems, root=str(root))
    return found
