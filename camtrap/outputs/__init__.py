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
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from camtrap import storage
from camtrap.config import IMAGE_SUFFIXES
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


# `--out dir/`: the output goes inside dir, named as the format's
DEFAULT_NAMES = {"csv": "predictions.csv", "megadetector": "predictions.json",
                 "camtrap-dp": "predictions-camtrap-dp"}  # fmt: skip


def check_output(
    output_uri: str,
    fmt: str,
    inputs: Mapping[str, str] | None = None,
    data_root: str | None = None,
    inside_data: bool = False,
) -> str:
    """The URI to write `fmt` to, checked before minutes of work (ConfigError with the fix).

    `output_uri` ending in `/` is a folder: the output goes inside it (DEFAULT_NAMES). Refused:
    a file format at a folder, a package at a file; a path that is one of `inputs` (URI -> what
    it is: the features CSV, the model file, ...) or an image; a package folder holding an input
    or other files (writing a package replaces the whole folder); anywhere inside `data_root`
    unless `inside_data` (--out-inside-data); a local path whose folder cannot be written."""
    target = _in_folder(output_uri, fmt)
    _check_kind(output_uri, target, fmt)
    protected = dict(inputs or {})
    if fmt == "camtrap-dp":
        folder = {data_root: "the data folder"} if data_root is not None else {}
        _check_package_folder(output_uri, target, {**folder, **protected})
    else:
        written = [target, events_uri(target)]
        _check_not_an_input(output_uri, written, protected, DEFAULT_NAMES[fmt])
    if data_root is not None and not inside_data and _inside(target, data_root):
        raise ConfigError(
            f"--out {output_uri} is inside the data folder {data_root}: files written there can "
            "overwrite or be taken for the photos' own — fix: write it outside (e.g. --out "
            f"{DEFAULT_NAMES[fmt]}), or give --out-inside-data to write there on purpose"
        )
    if not storage.is_remote(target):
        _check_writable(output_uri, storage.local_path(target))
    return target


def _in_folder(output_uri: str, fmt: str) -> str:
    if not output_uri.endswith("/"):
        return output_uri
    return storage.join(output_uri, DEFAULT_NAMES[fmt])


def _check_kind(output_uri: str, target: str, fmt: str) -> None:
    """A file for csv and megadetector, a folder (not a file) for a Camtrap DP package."""
    if storage.is_remote(target):
        return
    local, folder = storage.local_path(target), storage.local_path(output_uri)
    if output_uri.endswith("/") and folder.is_file():
        raise ConfigError(
            f"--out {output_uri} ends in / (a folder), but {folder} is a file — fix: name a "
            "folder, or drop the / to name the file"
        )
    if fmt == "camtrap-dp" and local.is_file():
        raise ConfigError(
            f"--out {output_uri} is a file — fix: name the folder the Camtrap DP package "
            f"goes to, e.g. {local.with_suffix('')}-package"
        )
    if fmt != "camtrap-dp" and local.is_dir():
        example = DEFAULT_NAMES[fmt]
        raise ConfigError(
            f"--out {output_uri} is a folder — fix: name the file to write, e.g. "
            f"{local / example}, or end it with / to write {example} inside it"
        )


def _check_not_an_input(output_uri: str, written: list[str], inputs: Mapping[str, str],
                        example: str) -> None:  # fmt: skip
    """Refuse writing over an input, or over an image (a photo of this predict, or another)."""
    for uri in written:
        what = next((w for i, w in inputs.items() if _key(i) == _key(uri)), None)
        if what is None and _is_image(uri):
            what = "an image"
        if what is not None:
            raise ConfigError(
                f"--out {output_uri} would overwrite {what}, an input of this predict — fix: "
                f"write the predictions to a new file outside --data, e.g. --out {example}"
            )


def _check_package_folder(output_uri: str, target: str, inputs: Mapping[str, str]) -> None:
    """Writing a package replaces its whole folder (camtrap.outputs.camtrapdp): that folder must
    hold no input, and be new or a package already (a rerun replaces it)."""
    held = next((w for i, w in inputs.items() if _inside(i, target)), None)
    if held is not None:
        raise ConfigError(
            f"--out {output_uri}: writing a Camtrap DP package replaces the whole folder, and "
            f"{held} is in it — fix: name a new folder outside --data, e.g. --out "
            f"{DEFAULT_NAMES['camtrap-dp']}"
        )
    if not storage.is_remote(target) and _holds_other_files(storage.local_path(target)):
        raise ConfigError(
            f"--out {output_uri} is a folder of other files, not a Camtrap DP package: "
            "writing the package replaces the whole folder — fix: name a new folder, or "
            f"end --out with / to write {DEFAULT_NAMES['camtrap-dp']} inside it"
        )


def _holds_other_files(folder: Path) -> bool:
    """A folder with files in it that is not a package (no datapackage.json)."""
    if not folder.is_dir() or (folder / "datapackage.json").exists():
        return False
    return any(folder.iterdir())


def _check_writable(output_uri: str, path: Path) -> None:
    """The folder `path` goes in exists and may be written, or its nearest existing folder
    (where the missing ones will be made) may: checked now, not after the predictions."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(
            f"--out {output_uri} cannot be written: {folder} is a file, not a folder — fix: "
            "name a path whose folders are folders, or move that file away"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out {output_uri} cannot be written: {folder} is not writable — fix: choose a "
            "folder you may write to, or change its permissions"
        )


def _key(uri: str) -> str:
    """`uri` comparable with another: an S3 URI without its trailing /, a local path absolute
    with its links and `..` resolved."""
    if storage.is_remote(uri):
        return str(uri).rstrip("/")
    return os.path.realpath(storage.local_path(uri))


def _inside(uri: str, folder: str) -> bool:
    """Whether `uri` is `folder` or under it (a sibling `folder-2` is not)."""
    child, parent = _key(uri), _key(folder)
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _is_image(uri: str) -> bool:
    return Path(uri).suffix.lower() in IMAGE_SUFFIXES and storage.exists(uri)


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
