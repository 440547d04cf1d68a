"""The input Camtrap DP package with camtrap's observations added (Camtrap DP 1.0, the package
Agouti, GBIF and camtrapdp read).

The descriptor, deployments and media are copied unchanged, and so are the package's own
observations; after them come camtrap's, one per photo (`observationLevel` media) and one per
event (`observationLevel` event, when the photos have events), each `classificationMethod`
machine, `classifiedBy` "camtrap <version> <model sha256[:12]>", `classificationTimestamp` and
`classificationProbability` (the top class's). `observationType` is blank, human or vehicle for
those classes and animal otherwise, with `scientificName` from --taxonomy (class ->
scientificName) or the class name. A photo that could not be read gets an `unclassified`
observation saying why. The media files are linked (or copied) beside the tables at their
`filePath`s, so the package opens as it is.

camtrap's own reader takes people's observations first (camtrap.dataset.camtrapdp), so a package
with predictions added still trains on its reviewed labels."""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from camtrap import storage
from camtrap.dataset.camtrapdp import resource_paths
from camtrap.dataset.csvtable import read_table
from camtrap.dataset.media import is_uri
from camtrap.errors import DataError
from camtrap.outputs.labelled import Labelled, kind_of

OBSERVATION_FIELDS = (
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd",
    "observationLevel", "observationType", "cameraSetupType", "scientificName", "count",
    "lifeStage", "sex", "behavior", "individualID", "individualPositionRadius",
    "individualPositionAngle", "individualSpeed", "bboxX", "bboxY", "bboxWidth", "bboxHeight",
    "classificationMethod", "classifiedBy", "classificationTimestamp",
    "classificationProbability", "observationTags", "observationComments",
)  # fmt: skip
PROBABILITY_DIGITS = 4


def observations(labelled: Labelled, taxonomy: dict[str, str], taken: set[str]) -> list[dict]:
    """camtrap's observation rows (every field of OBSERVATION_FIELDS), ids unused in `taken`."""
    common = {
        "classificationMethod": "machine",
        "classifiedBy": labelled.classified_by,
        "classificationTimestamp": labelled.when.isoformat(timespec="seconds"),
    }
    rows = []
    probs = labelled.probs[labelled.classes].to_numpy(dtype=np.float64)
    for photo, row in zip(labelled.photos.itertuples(), probs, strict=True):
        rows.append({
            "observationID": _unused(f"camtrap-{photo.id}", taken),
            "deploymentID": photo.site, "mediaID": photo.id, "eventID": photo.event,
            "eventStart": photo.timestamp, "eventEnd": photo.timestamp,
            "observationLevel": "media", **_classified(row, labelled.classes, taxonomy), **common,
        })  # fmt: skip
    for photo in labelled.failed.itertuples():
        rows.append({
            "observationID": _unused(f"camtrap-{photo.id}", taken),
            "deploymentID": photo.site, "mediaID": photo.id, "eventID": photo.event,
            "eventStart": photo.timestamp, "eventEnd": photo.timestamp,
            "observationLevel": "media", "observationType": "unclassified", **common,
            "observationComments": f"camtrap could not read the image: {photo.failure}",
        })  # fmt: skip
    if labelled.events is not None:
        for event, row in zip(labelled.events.itertuples(),
                              labelled.events[labelled.classes].to_numpy(dtype=np.float64),
                              strict=True):  # fmt: skip
            rows.append({
                "observationID": _unused(f"camtrap-event-{event.event}", taken),
                "deploymentID": event.site, "eventID": event.event,
                "eventStart": event.start, "eventEnd": event.end, "observationLevel": "event",
                **_classified(row, labelled.classes, taxonomy), **common,
            })  # fmt: skip
    return [{name: row.get(name, "") for name in OBSERVATION_FIELDS} for row in rows]


def _classified(probs: np.ndarray, classes: list[str], taxonomy: dict[str, str]) -> dict:
    top = int(probs.argmax())
    kind = kind_of(classes[top])
    return {
        "observationType": kind,
        "scientificName": taxonomy.get(classes[top], classes[top]) if kind == "animal" else "",
        "classificationProbability": f"{probs[top]:.{PROBABILITY_DIGITS}f}",
    }


def _unused(wanted: str, taken: set[str]) -> str:
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted}-{n}"
    taken.add(name)
    return name


def package_files(labelled: Labelled, root: Path, taxonomy: dict[str, str]) -> dict[str, bytes]:
    """The package's files (path in the package -> bytes): the input's, observations extended."""
    problems: list = []
    paths = resource_paths(root, problems)
    table = read_table(root, paths["observations"], problems) if paths else None
    if paths is None or table is None:
        raise DataError(problems, root=str(root))
    files = {"datapackage.json": (root / "datapackage.json").read_bytes()}
    files.update({paths[name]: (root / paths[name]).read_bytes()
                  for name in ("deployments", "media")})  # fmt: skip
    header = [*OBSERVATION_FIELDS, *(c for c in table.header if c not in OBSERVATION_FIELDS)]
    own = [row for _, row in table.rows]
    taken = {row.get("observationID", "") for row in own}
    text = io.StringIO()
    writer = csv.DictWriter(text, header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({name: row.get(name, "") for name in header} for row in own)
    writer.writerows(observations(labelled, taxonomy, taken))
    files[paths["observations"]] = text.getvalue().encode()
    return files


def media_paths(root: Path) -> list[str]:
    """Every filePath inside the package (videos too: the package keeps them); media named by
    URI stay where their URI says."""
    paths = resource_paths(root, [])
    media = pd.read_csv(root / paths["media"], dtype=str, keep_default_na=False) if paths else None
    return [] if media is None else [p for p in media["filePath"] if p and not is_uri(p)]


def write_package(
    labelled: Labelled, root: Path, output_uri: str, taxonomy: dict[str, str]
) -> None:
    """The package at `output_uri` (a folder): locally built beside it and renamed into place
    (a reader sees the old package or the new one); on S3 the media and tables go first and
    datapackage.json last, so a package with a descriptor is whole."""
    files = package_files(labelled, root, taxonomy)
    write_folder(files, root, [p for p in media_paths(root) if (root / p).is_file()], output_uri)


def write_folder(files: dict[str, bytes], root: Path, media: list[str], output_uri: str) -> None:
    """A package's `files` (path -> bytes) and its `media` (paths inside `root`, placed at the
    same paths) at `output_uri`, whole: see write_package."""
    if storage.is_remote(output_uri):
        for path in media:
            storage.upload_file(root / path, storage.join(output_uri, path))
        for name in sorted(files, key=lambda n: n == "datapackage.json"):
            storage.write_bytes(storage.join(output_uri, name), files[name])
        return
    _replace_folder(Path(output_uri), lambda tmp: _fill(tmp, files, root, media))


def _fill(folder: Path, files: dict[str, bytes], root: Path, media: list[str]) -> None:
    for name, data in files.items():
        storage.files.atomic_write_bytes(storage.files.inside(folder, name), data)
    for path in media:
        target = storage.files.inside(folder, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / path, target)  # same disk: no copy of the photos
        except OSError:
            shutil.copyfile(root / path, target)


def _replace_folder(target: Path, fill) -> None:  # noqa: ANN001 - a callable of one Path
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
