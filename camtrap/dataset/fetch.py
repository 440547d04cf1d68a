"""A dataset at a URI made local: its CSVs, then every image its features CSV lists, through the
fetch cache (camtrap.storage.mirror: only files whose ETag changed are downloaded; a local folder
is used in place). Images missing at the URI are left for validation to report, with their CSV
line."""

from __future__ import annotations

import csv
from pathlib import Path

from camtrap.config import FEATURES_CSV, LABELS_CSV
from camtrap.storage import StorageNotFound, join
from camtrap.storage.mirror import fetch_files


def image_names(features_csv: Path) -> list[str]:
    """The `filepath` column of a features CSV (empty when the column is absent: validation
    reports that with the line and the fix)."""
    with Path(features_csv).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        return [row["filepath"].strip() for row in reader if (row.get("filepath") or "").strip()]


def fetch_dataset(
    data_uri: str,
    cache_dir: str | Path,
    features_csv: str = FEATURES_CSV,
    labels_csv: str | None = LABELS_CSV,
) -> Path:
    """The local root of the dataset at `data_uri`: `features_csv` (and `labels_csv`, unless
    None: photos to label have no labels) and every image the features CSV lists, fetched into
    `cache_dir`. StorageNotFound, with the fix, when a CSV is not there."""
    names = [features_csv] if labels_csv is None else [features_csv, labels_csv]
    meta = fetch_files(data_uri, names, cache_dir)
    if meta.missing:
        raise StorageNotFound(
            f"{join(data_uri, meta.missing[0])} does not exist — fix: {_fix(names, data_uri)}"
        )
    fetch_files(data_uri, image_names(meta.root / features_csv), cache_dir)
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
