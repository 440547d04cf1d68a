"""Predictions written in the formats the field reviews photos with:

- `csv`: the competition's submission format (id, one probability per class), unchanged; photos
  that could not be read follow as rows with empty probabilities and a `failure` column (only
  when there are any, so a Conser-vision submission stays exactly that);
- `megadetector`: a MegaDetector batch output file (camtrap.outputs.megadetector), the file
  Timelapse and AddaxAI open;
- `camtrap-dp`: the input Camtrap DP package with camtrap's machine observations added
  (camtrap.outputs.camtrapdp), the package Agouti and GBIF take.

Where the photos have events (camtrap.events), the csv and megadetector outputs get a sidecar
`<name>.events.csv` (one row per event: its frames, first and last timestamp, probabilities);
the Camtrap DP package gets event-level observations instead. Every file is written whole or
not at all (camtrap.storage)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from camtrap import storage
from camtrap.errors import ConfigError
from camtrap.outputs.labelled import FAILED_COLUMNS, Labelled, animal_confidence, kind_of
from camtrap.outputs.newpackage import NewPackage

__all__ = ["FAILED_COLUMNS", "Labelled", "animal_confidence", "check_output", "kind_of", "write"]
EVENTS_SUFFIX = ".events.csv"


def csv_table(labelled: Labelled) -> pd.DataFrame:
    """The submission table; failed photos appended with a `failure` column."""
    if labelled.failed.empty:
        return labelled.probs
    failed = labelled.failed[["id", "failure"]]
    table = pd.concat([labelled.probs.assign(failure=""), failed], ignore_index=True)
    return table[["id", *labelled.classes, "failure"]]


def events_uri(output_uri: str) -> str:
    """`predictions.csv` -> `predictions.events.csv` (and `md.json` -> `md.events.csv`)."""
    head, _, name = str(output_uri).rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}{EVENTS_SUFFIX}" if head else f"{stem}{EVENTS_SUFFIX}"


def check_output(output_uri: str, fmt: str) -> None:
    """ConfigError for an --out that cannot take `fmt`, before minutes of work: a file for
    csv and megadetector, a folder (not a file) for a Camtrap DP package."""
    local = None if storage.is_remote(output_uri) else Path(output_uri)
    if fmt == "camtrap-dp":
        if local is not None and local.is_file():
            raise ConfigError(
                f"--out {output_uri} is a file — fix: name the folder the Camtrap DP package "
                f"goes to, e.g. {local.with_suffix('')}-package"
            )
        return
    if local is not None and local.is_dir():
        example = "predictions.json" if fmt == "megadetector" else "predictions.csv"
        raise ConfigError(
            f"--out {output_uri} is a folder — fix: name the file to write, e.g. {local / example}"
        )


def write(
    labelled: Labelled,
    output_uri: str,
    fmt: str,
    package_root: Path | None = None,
    taxonomy: dict[str, str] | None = None,
    new_package: NewPackage | None = None,
) -> list[str]:
    """Write `labelled` to `output_uri` as `fmt`; returns the URIs written (the events sidecar
    too). camtrap-dp: the input package at `package_root` with camtrap's observations, or else
    a `new_package` (camtrap.outputs.newpackage)."""
    if fmt == "camtrap-dp":
        from camtrap.outputs.camtrapdp import write_package
        from camtrap.outputs.newpackage import write_new_package

        if package_root is not None:
            write_package(labelled, package_root, output_uri, taxonomy or {})
        elif new_package is not None:
            write_new_package(labelled, new_package, output_uri, taxonomy or {})
        else:
            raise not_a_package("these photos")
        return [output_uri]
    if fmt == "megadetector":
        from camtrap.outputs.megadetector import megadetector_json

        storage.write_text(output_uri, megadetector_json(labelled))
    elif fmt == "csv":
        storage.write_text(output_uri, csv_table(labelled).to_csv(index=False))
    else:
        raise ConfigError(f"format {fmt!r} is not one of csv, megadetector, camtrap-dp")
    if labelled.events is None:
        return [output_uri]
    sidecar = events_uri(output_uri)
    storage.write_text(sidecar, labelled.events.to_csv(index=False))
    return [output_uri, sidecar]


def not_a_package(photos: str) -> ConfigError:
    """--format camtrap-dp for photos that are not a Camtrap DP package."""
    return ConfigError(
        f"--format camtrap-dp for {photos}, which are not a Camtrap DP package: a new package "
        "needs each camera deployment's coordinates, which a folder, a features CSV or a COCO "
        "file does not hold — fix: give them with --deployments deployments.csv (deploymentID "
        "= each photo's site, latitude, longitude), use --input camtrap-dp with a package, or "
        "--format megadetector / csv"
    )


def read_taxonomy(uri: str | None) -> dict[str, str]:
    """class -> scientificName from a CSV with those two columns (None: no mapping)."""
    if uri is None:
        return {}
    try:
        table = pd.read_csv(io.StringIO(storage.read_text(uri)), dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--taxonomy {uri} cannot be read ({err}) — fix: give a CSV") from err
    missing = [c for c in ("class", "scientificName") if c not in table.columns]
    if missing:
        raise ConfigError(
            f"--taxonomy {uri} has no column {missing[0]!r} (it has {list(table.columns)}) — fix: "
            "write a header 'class,scientificName' and one row per class"
        )
    return dict(zip(table["class"].str.strip(), table["scientificName"].str.strip(), strict=True))
