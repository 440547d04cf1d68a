"""A new Camtrap DP package (1.0.2) from photos that are not one: a card's folder, a COCO file's
images, a features CSV's. What the photos do not hold comes from the user:

- `--deployments deployments.csv`: a Camtrap DP deployments table (deploymentID, latitude,
  longitude, and any other of its columns); each photo belongs to the deployment named like its
  site (its folder, its COCO `location`, its `site`), or to the one deployment the file has.
  deploymentStart / deploymentEnd left blank are the first / last photo's time.
- `--utc-offset +02:00` for capture times written without one (EXIF's usually are): Camtrap DP
  times carry their offset.

media.csv lists every photo (`filePath` its path inside the data root, copied there),
observations.csv camtrap's observations (camtrap.outputs.camtrapdp), datapackage.json the
profile's required metadata (project, spatial from the deployments, temporal from the photos,
taxonomic from the predicted species), for the user to complete. A photo without a capture time
cannot be a Camtrap DP media: the package is refused, naming them, rather than made up."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

import pandas as pd

from camtrap import __version__, storage
from camtrap.dataset.dpschema import table_schema
from camtrap.errors import ConfigError
from camtrap.outputs.camtrapdp import observations, write_folder
from camtrap.outputs.labelled import Labelled, kind_of

VERSION_URL = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2"
TABLES = ("deployments", "media", "observations")
DEPLOYMENT_COLUMNS = ("deploymentID", "latitude", "longitude")
MEDIATYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
OFFSET = re.compile(r"(Z|[+-]\d\d:\d\d)$")
SHOWN = 5  # examples in an error


def read_deployments(uri: str) -> pd.DataFrame:
    """The --deployments table (every column as text); ConfigError with the fix."""
    try:
        table = pd.read_csv(io.StringIO(storage.read_text(uri)), dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--deployments {uri} cannot be read ({err}) — fix: give a CSV") from err
    missing = [c for c in DEPLOYMENT_COLUMNS if c not in table.columns]
    repeated = sorted(set(table["deploymentID"][table["deploymentID"].duplicated()])) if not \
        missing else []  # fmt: skip
    if missing or repeated or table.empty:
        what = f"no column {missing[0]!r}" if missing else (
            f"deploymentID {repeated[0]!r} twice" if repeated else "no rows")  # fmt: skip
        raise ConfigError(
            f"--deployments {uri} has {what} — fix: one row per camera deployment with at least "
            "deploymentID (each photo's site), latitude and longitude (Camtrap DP's deployments "
            "table)"
        )
    return table


def with_offset(stamp: str, utc_offset: str | None) -> str | None:
    """`stamp` as Camtrap DP writes times (ISO 8601 with its UTC offset, `utc_offset` when it
    has none; COCO's `YYYY-MM-DD HH:MM:SS` with the T), or None without a time or an offset."""
    if not stamp:
        return None
    if len(stamp) >= 19 and stamp[10] == " ":
        stamp = f"{stamp[:10]}T{stamp[11:]}"
    if OFFSET.search(stamp):
        return stamp
    return f"{stamp}{utc_offset}" if utc_offset else None


def placed(labelled: Labelled, deployments: pd.DataFrame, utc_offset: str | None) -> Labelled:
    """`labelled` with each photo's site its deploymentID and each time with its offset; a
    ConfigError for photos no deployment or time can be given. Failed photos without a time are
    left out (the csv and megadetector outputs still list them)."""
    site_of = _site_mapping(labelled, list(deployments["deploymentID"]))
    photos = _place(labelled.photos, site_of, utc_offset, ["timestamp"])
    _refuse_untimed(photos, labelled.photos, utc_offset)
    failed = _place(labelled.failed, site_of, utc_offset, ["timestamp"])
    failed = failed[failed["timestamp"].notna()].reset_index(drop=True)
    events = labelled.events
    if events is not None:
        events = _place(events, site_of, utc_offset, ["start", "end"])
    return Labelled(labelled.probs, photos, labelled.classes, labelled.model_name,
                    labelled.model_sha256, failed, events, labelled.when)  # fmt: skip


def _place(frame: pd.DataFrame, site_of: dict[str, str], utc_offset: str | None,
           times: list[str]) -> pd.DataFrame:  # fmt: skip
    placed = {c: frame[c].map(lambda stamp: with_offset(stamp, utc_offset)) for c in times}
    return frame.assign(site=frame["site"].map(site_of), **placed)


def _site_mapping(labelled: Labelled, ids: list[str]) -> dict[str, str]:
    sites = sorted(set(labelled.photos["site"]) | set(labelled.failed["site"]))
    if len(ids) == 1:
        return dict.fromkeys(sites, ids[0])  # one camera: every photo is its
    unknown = [s for s in sites if s not in ids]
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:SHOWN])
        raise ConfigError(
            f"--deployments names no deployment for the photos of site {shown} — fix: add a row "
            f"with deploymentID set to each site (the deployments have {ids[:SHOWN]})"
        )
    return {s: s for s in sites}


def _refuse_untimed(photos: pd.DataFrame, raw: pd.DataFrame, utc_offset: str | None) -> None:
    untimed = photos["filepath"][photos["timestamp"].isna()].tolist()
    if not untimed:
        return
    no_offset = raw["timestamp"][photos["timestamp"].isna()].astype(bool).all()
    shown = ", ".join(untimed[:SHOWN])
    if no_offset and not utc_offset:
        raise ConfigError(
            f"{len(untimed)} photos' capture times have no UTC offset (e.g. {shown}) — fix: "
            "give the cameras' offset, e.g. --utc-offset +02:00"
        )
    raise ConfigError(
        f"{len(untimed)} photos have no capture time (no EXIF DateTimeOriginal, COCO datetime; "
        f"e.g. {shown}), and a Camtrap DP media needs one — fix: add the times, or use "
        "--format megadetector / csv"
    )


def new_package_files(labelled: Labelled, deployments: pd.DataFrame, name: str,
                      taxonomy: dict[str, str]) -> dict[str, bytes]:  # fmt: skip
    """datapackage.json and the three tables of the new package (`labelled` placed)."""
    photos = pd.concat([labelled.photos, labelled.failed], ignore_index=True)
    first = photos.groupby("site")["timestamp"].agg(lambda s: min(s, key=_instant))
    last = photos.groupby("site")["timestamp"].agg(lambda s: max(s, key=_instant))
    rows = deployments.to_dict("records")
    for row in rows:
        row["deploymentStart"] = row.get("deploymentStart") or first.get(row["deploymentID"], "")
        row["deploymentEnd"] = row.get("deploymentEnd") or last.get(row["deploymentID"], "")
    media = [{
        "mediaID": p.id, "deploymentID": p.site, "captureMethod": "activityDetection",
        "timestamp": p.timestamp, "filePath": p.filepath, "filePublic": "false",
        "fileName": PurePosixPath(p.filepath).name,
        "fileMediatype": MEDIATYPES.get(PurePosixPath(p.filepath).suffix.lower(), "image/jpeg"),
    } for p in photos.itertuples()]  # fmt: skip
    tables = {
        "deployments": _csv("deployments", rows),
        "media": _csv("media", media),
        "observations": _csv("observations", observations(labelled, taxonomy, set())),
    }
    descriptor = _descriptor(labelled, deployments, photos, name, taxonomy)
    return {"datapackage.json": json.dumps(descriptor, indent=2).encode(),
            **{f"{t}.csv": data for t, data in tables.items()}}  # fmt: skip


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _csv(table: str, rows: list[dict]) -> bytes:
    """A table with every column of its Camtrap DP schema, in order (frictionless checks it)."""
    fields = [f["name"] for f in table_schema(table)["fields"]]
    text = io.StringIO()
    writer = csv.DictWriter(text, fields, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _descriptor(labelled: Labelled, deployments: pd.DataFrame, photos: pd.DataFrame,
                name: str, taxonomy: dict[str, str]) -> dict:  # fmt: skip
    lat, lon = deployments["latitude"].astype(float), deployments["longitude"].astype(float)
    days = sorted(_instant(s).date().isoformat() for s in photos["timestamp"])
    species = sorted({taxonomy.get(c, c) for c in labelled.classes if kind_of(c) == "animal"})
    levels = ["media", "event"] if labelled.events is not None else ["media"]
    return {
        "resources": [
            {
                "name": t,
                "path": f"{t}.csv",
                "profile": "tabular-data-resource",
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "schema": f"{VERSION_URL}/{t}-table-schema.json",
            }
            for t in TABLES
        ],  # fmt: skip
        "profile": f"{VERSION_URL}/camtrap-dp-profile.json",
        "name": re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "camtrap-predictions",
        "created": labelled.when.isoformat(timespec="seconds"),
        "contributors": [{"title": f"camtrap {__version__}", "role": "contributor"}],
        "project": {
            "title": name,
            "samplingDesign": "opportunistic",
            "captureMethod": ["activityDetection"],
            "individualAnimals": False,
            "observationLevel": levels,
        },  # fmt: skip
        "spatial": _extent(lat, lon),
        "temporal": {"start": days[0], "end": days[-1]},
        "taxonomic": [{"scientificName": s} for s in species],
    }


@dataclass(frozen=True)
class NewPackage:
    """What a new package takes from the user (camtrap predict --deployments, --utc-offset)."""

    root: Path  # the local data root: the photos are copied from here
    deployments: str  # path or URI of the deployments CSV
    utc_offset: str | None = None
    name: str = "camtrap-predictions"  # the package's name and project title


def _extent(lat: pd.Series, lon: pd.Series) -> dict:
    """GeoJSON of the deployments: their point, or the box around them."""
    if lat.min() == lat.max() and lon.min() == lon.max():
        return {"type": "Point", "coordinates": [lon.min(), lat.min()]}
    west, east, south, north = lon.min(), lon.max(), lat.min(), lat.max()
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def write_new_package(
    labelled: Labelled, new: NewPackage, output_uri: str, taxonomy: dict[str, str]
) -> None:
    """The new package at `output_uri`, whole (camtrap.outputs.camtrapdp.write_folder), the
    photos copied from `new.root` at their paths."""
    deployments = read_deployments(new.deployments)
    at_sites = placed(labelled, deployments, new.utc_offset)
    files = new_package_files(at_sites, deployments, new.name, taxonomy)
    photos = pd.concat([at_sites.photos["filepath"], at_sites.failed["filepath"]])
    write_folder(files, new.root, [p for p in photos if (new.root / p).is_file()], output_uri)
