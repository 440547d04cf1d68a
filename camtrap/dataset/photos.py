"""Photos to label, in the layout a user has them: a features CSV (`conservision`, today's
submission path), every image under a folder (`folder`: a memory card's photos), the images of a
COCO Camera Traps file (`coco`) or the media of a Camtrap DP package (`camtrap-dp`); labels, if
any, are ignored. Ids, paths and the metadata are checked as for training (a DataError with
every problem); an image that cannot be read is not an error of the input but a `failure` the
outputs list (except for the features CSV, whose submission format has no place for one)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from camtrap import storage
from camtrap.config import DATAPACKAGE_JSON, IMAGE_SUFFIXES, PREDICT_INPUTS
from camtrap.dataset.contract import (
    DEFAULT_LIMITS,
    FAILED_COLUMNS,
    FeatureData,
    ImageCheck,
    ImageLimits,
    decode_check,
    feature_row_problems,
    features_frame,
    inspect_images,
)
from camtrap.dataset.csvtable import Row
from camtrap.dataset.records import Item, fingerprint_of, read_json
from camtrap.errors import DataError, Problem
from camtrap.images import capture_time


def resolve_input(data_uri: str | Path, input: str, features_csv: str,
                  annotations: str | None) -> str:  # fmt: skip
    """`auto`: a COCO file when --annotations names one, else the features CSV when there is
    one (today's behaviour), else a Camtrap DP package, else every image under the folder.
    `data_uri`: a local folder or an S3 prefix."""
    if input != "auto":
        return input
    if annotations:
        return "coco"
    if storage.exists(storage.join(str(data_uri), features_csv)):
        return "conservision"
    return (
        "camtrap-dp" if storage.exists(storage.join(str(data_uri), DATAPACKAGE_JSON)) else "folder"
    )


def all_images(root: Path) -> list[str]:
    """Every image under `root` (any depth; hidden files and folders skipped), sorted."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
    )


def load_photos(
    root: Path,
    input: str,
    annotations: str | None = None,
    check: ImageCheck = decode_check,
    limits: ImageLimits = DEFAULT_LIMITS,
    workers: int = 8,
    allow_http: bool = False,
) -> FeatureData:
    """The photos of `input` at `root` (not conservision: see load_features), images that
    cannot be read listed in `failed`."""
    problems: list[Problem] = []
    file, items, raw = _items(root, input, annotations, problems, allow_http, limits.max_bytes)
    rows: list[Row] = [(item.line or 0, {"id": item.id, "filepath": item.filepath,
                                         "site": item.site}) for item in items]  # fmt: skip
    problems += feature_row_problems(file, rows, root, require_site=False)
    if problems:
        raise DataError(problems, root=str(root))
    unreadable: list[Problem] = []
    hashes = inspect_images(file, rows, root, check, workers, limits, unreadable)
    why = {p.id: p.message for p in unreadable}
    good = [row for row in rows if row[1]["id"] in hashes]
    frame = features_frame(good, root, hashes)
    kept = [item for item in items if item.id in hashes]
    frame["event"] = [item.event for item in kept]
    frame["timestamp"] = [item.timestamp for item in kept]
    failed = pd.DataFrame.from_records(
        [(i.id, i.filepath, i.site, i.event, i.timestamp, why.get(i.id, "cannot be read"))
         for i in items if i.id not in hashes], columns=FAILED_COLUMNS,
    )  # fmt: skip
    fingerprint = fingerprint_of(raw, hashes, failed=sorted(failed["id"]))
    return FeatureData(root=root, frame=frame, fingerprint=fingerprint, failed=failed)


def _items(
    root: Path,
    input: str,
    annotations: str | None,
    problems: list[Problem],
    allow_http: bool = False,
    max_bytes: int = DEFAULT_LIMITS.max_bytes,
) -> tuple[str, list[Item], dict[str, bytes]]:
    """(the file that lists them, the photos, the source files' bytes)."""
    if input == "folder":
        return _folder_items(root, problems)
    if input == "coco":
        return _coco_items(root, annotations, problems)
    if input == "camtrap-dp":
        return _package_items(root, problems, allow_http, max_bytes)
    raise DataError(
        [Problem(str(root), f"unknown input {input!r}", f"use one of {', '.join(PREDICT_INPUTS)}")]
    )


def _folder_items(root: Path, problems: list[Problem]) -> tuple[str, list[Item], dict[str, bytes]]:
    """Every image under `root`; a photo's site is its folder (a camera's card or its site
    folder), its timestamp the EXIF capture time, so a card's bursts become events."""
    names = all_images(root)
    if not names:
        fix = f"put the photos ({', '.join(IMAGE_SUFFIXES)}) in the folder, at any depth"
        problems.append(Problem(str(root), "holds no image", fix))
    items = [
        Item(file=str(root), line=None, id=name, filepath=name,
             site=name.rsplit("/", 1)[0] if "/" in name else "",
             timestamp=capture_time(root / name))
        for name in names
    ]  # fmt: skip
    return str(root), items, {"images": "\n".join(names).encode()}


def _coco_items(
    root: Path, annotations: str | None, problems: list[Problem]
) -> tuple[str, list[Item], dict[str, bytes]]:
    from camtrap.dataset.coco import coco_images

    name = annotations or "annotations.json"
    parsed = read_json(root, name, problems)
    if parsed is None:
        return name, [], {}
    items = coco_images(name, parsed[1], problems)
    return name, items, {name: parsed[0]}


def _package_items(
    root: Path, problems: list[Problem], allow_http: bool, max_bytes: int
) -> tuple[str, list[Item], dict[str, bytes]]:
    from camtrap.dataset.camtrapdp import package_media

    media_file, items, raw = package_media(root, problems, allow_http, max_bytes)
    return media_file, items, raw
