"""A dataset at a URI made local: its metadata files first (the CSVs, the COCO JSON, the Camtrap
DP descriptor and tables), then every image they list, through the fetch cache
(camtrap.storage.mirror: only files whose ETag changed are downloaded; a local folder is used in
place). Images missing at the URI are left for validation to report, with their line or
record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from camtrap.config import DATAPACKAGE_JSON, FEATURES_CSV, LABELS_CSV, DataConfig, PredictOptions
from camtrap.dataset.media import is_uri

# mirror.fetch_files by attribute, so a fault test can replace it for every caller
from camtrap.storage import StorageNotFound, join, list_files, mirror
from camtrap.storage.mirror import FetchReport


def image_names(features_csv: Path) -> list[str]:
    """The `filepath` column of a features CSV (empty when the column is absent: validation
    reports that with the line and the fix)."""
    with Path(features_csv).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        return [row["filepath"].strip() for row in reader if (row.get("filepath") or "").strip()]


def metadata_names(data_uri: str, data: DataConfig) -> list[str]:
    """The files that describe the dataset at `data_uri` (before its images): for Camtrap DP
    only datapackage.json, whose tables `table_names` gives once it is local."""
    from camtrap.dataset.formats import annotations_file, resolve_format

    fmt = resolve_format(data_uri, data)
    if fmt == "conservision":
        return [data.features_csv, data.labels_csv]
    if fmt == "coco":
        return [annotations_file(data_uri, data)]
    return [DATAPACKAGE_JSON] if fmt == "camtrap-dp" else []


def state_names(data_uri: str, data: DataConfig) -> list[str] | None:
    """The files whose state keys a cached copy of the metadata: `metadata_names`, or None
    (every file at the URI) where the metadata names more files than it is (Camtrap DP's
    tables) or is the listing itself (class folders)."""
    names = metadata_names(data_uri, data)
    return None if names in ([], [DATAPACKAGE_JSON]) else names


def table_names(root: Path) -> list[str]:
    """The CSV tables a local datapackage.json names (none when it cannot be read: validation
    reports why)."""
    try:
        resources = json.loads((root / DATAPACKAGE_JSON).read_bytes()).get("resources", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r["path"] for r in resources if isinstance(r, dict) and isinstance(r.get("path"), str)]


def listed_images(root: Path, data_uri: str, data: DataConfig) -> list[str]:
    """The images the local metadata at `root` lists (for class folders: those at `data_uri`)."""
    from camtrap.dataset.folders import is_image_name
    from camtrap.dataset.formats import annotations_file, resolve_format

    fmt = resolve_format(root, data)  # the local copy holds the metadata files
    if fmt == "conservision":
        return image_names(root / data.features_csv)
    if fmt == "coco":
        return _json_list(root / annotations_file(root, data), "images", "file_name")
    if fmt == "camtrap-dp":
        media = [p for p in table_names(root) if Path(p).stem == "media"]
        paths = _csv_column(root / media[0], "filePath") if media else []
        return [p for p in paths if not is_uri(p)]  # URIs: fetched by the reader
    return sorted(n for n in list_files(data_uri) if "/" in n and is_image_name(n))


def _json_list(path: Path, section: str, key: str) -> list[str]:
    try:
        records = json.loads(path.read_bytes()).get(section, [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r[key] for r in records if isinstance(r, dict) and isinstance(r.get(key), str)]


def _csv_column(path: Path, column: str) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [row[column] for row in csv.DictReader(fh) if row.get(column)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def fetch_metadata(data_uri: str, cache_dir: str | Path, data: DataConfig) -> FetchReport:
    """The dataset's metadata files under `cache_dir` (StorageNotFound with the fix when one
    is not there)."""
    names = metadata_names(data_uri, data)
    report = mirror.fetch_files(data_uri, names, cache_dir)
    if DATAPACKAGE_JSON in names and not report.missing:
        tables = mirror.fetch_files(data_uri, table_names(report.root), cache_dir)
        report.missing += tables.missing
        report.digest = f"{report.digest}+{tables.digest}"
    if report.missing:
        raise StorageNotFound(
            f"{join(data_uri, report.missing[0])} does not exist — fix: put it there, or set "
            "data.format / data.features_csv / data.labels_csv / data.annotations"
        )
    return report


def fetch_detections(data_uri: str, cache_dir: str | Path, name: str) -> FetchReport:
    """The MegaDetector output `name` (data.detections, --detections) under `cache_dir`, as
    the metadata is (ETag-keyed); StorageNotFound with the fix when it is not there."""
    report = mirror.fetch_files(data_uri, [name], cache_dir)
    if report.missing:
        raise StorageNotFound(
            f"{join(data_uri, name)} does not exist — fix: put the MegaDetector output for "
            "these images there (README: Train on the animal), or correct data.detections / "
            "--detections (relative to the data)"
        )
    return report


def fetch_data(data_uri: str, cache_dir: str | Path, data: DataConfig) -> Path:
    """The local root of the labelled dataset at `data_uri`, in any format (and its
    detections, with data.detections)."""
    root = fetch_metadata(data_uri, cache_dir, data).root
    if data.detections:
        fetch_detections(data_uri, cache_dir, data.detections)
    mirror.fetch_files(data_uri, listed_images(root, data_uri, data), cache_dir)
    return root


def photo_listing_names(options: PredictOptions) -> list[str]:
    """The files that list the photos of `options.input` (resolved): the features CSV, the COCO
    file, datapackage.json (its tables follow), none for a folder (the listing is the list)."""
    if options.input == "conservision":
        return [options.features_csv]
    if options.input == "coco":
        return [options.annotations or "annotations.json"]
    return [DATAPACKAGE_JSON] if options.input == "camtrap-dp" else []


def fetch_photos(data_uri: str, cache_dir: str | Path, options: PredictOptions) -> Path:
    """The local root of the photos to label at `data_uri`: what lists them, then the photos
    (for a folder: every image under it, hidden ones left out)."""
    from camtrap.dataset.folders import is_image_name

    if options.input == "conservision":
        return fetch_dataset(data_uri, cache_dir, options.features_csv, labels_csv=None)
    names = photo_listing_names(options)
    report = mirror.fetch_files(data_uri, names, cache_dir)
    if report.missing:
        raise StorageNotFound(
            f"{join(data_uri, report.missing[0])} does not exist — fix: put it there, or choose "
            "the photos with --input folder|coco|camtrap-dp|conservision (and --annotations)"
        )
    root = report.root
    if options.input == "camtrap-dp":
        mirror.fetch_files(data_uri, table_names(root), cache_dir)
        media = [p for p in table_names(root) if Path(p).stem == "media"]
        photos = _csv_column(root / media[0], "filePath") if media else []
    elif options.input == "coco":
        photos = _json_list(root / names[0], "images", "file_name")
    else:
        photos = sorted(n for n in list_files(data_uri) if is_image_name(n)
                        and not any(part.startswith(".") for part in n.split("/")))  # fmt: skip
    mirror.fetch_files(data_uri, [p for p in photos if not is_uri(p)], cache_dir)
    return root


def fetch_dataset(
    data_uri: str,
    cache_dir: str | Path,
    features_csv: str = FEATURES_CSV,
    labels_csv: str | None = LABELS_CSV,
) -> Path:
    """The local root of the Conser-vision dataset at `data_uri`: `features_csv` (and
    `labels_csv`, unless None: photos to label have no labels) and every image the features
    CSV lists, fetched into `cache_dir`. StorageNotFound, with the fix, when a CSV is not
    there."""
    names = [features_csv] if labels_csv is None else [features_csv, labels_csv]
    meta = mirror.fetch_files(data_uri, names, cache_dir)
    if meta.missing:
        raise StorageNotFound(
            f"{join(data_uri, meta.missing[0])} does not exist — fix: {_fix(names, data_uri)}"
        )
    mirror.fetch_files(data_uri, image_names(meta.root / features_csv), cache_dir)
    return meta.root


def _fix(names: list[str], data_uri: str) -> str:
    if len(names) == 1:
        return (
            f"put {names[0]} (columns id, filepath, optional site) at {data_uri}, or name it "
            "with --features"
        )
    return (
        f"put {names[0]} and {names[1]} at {data_uri}, or set data.features_csv / data.labels_csv"
    )
