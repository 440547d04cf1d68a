"""Camtrap DP (the TDWG Camera Trap Data Package): `datapackage.json` naming the `deployments`,
`media` and `observations` tables (CSV). A media file is an image; its site is its
`deploymentID`; its label comes from its observations:
- media-level observations (`mediaID` set) label their media: `scientificName` for an animal,
  else the `observationType` (blank, human, vehicle);
- event-level observations label every media of their deployment whose timestamp lies within
  `eventStart`..`eventEnd`, unless the media has media-level observations of its own (those are
  the finer annotation);
- `unknown` and `unclassified` observations (and an animal without a scientificName) are not
  labels: media with nothing else are left out and counted, as are videos;
- people's observations first: a machine's (classificationMethod=machine) label only media no
  person labelled.
A filePath is relative to the package, or a URI (s3://, a local file, https:// with
data.allow_http: camtrap.dataset.media), fetched here. The package is also checked against the
Camtrap DP table schemas (camtrap.dataset.dpschema)."""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from camtrap.config import DATAPACKAGE_JSON, DEFAULT_MAX_IMAGE_BYTES
from camtrap.dataset.contract import ImageCheck, ImageLimits, LabelledData
from camtrap.dataset.csvtable import Row, Table, has_columns, read_table
from camtrap.dataset.media import fetch_problems, is_uri
from camtrap.dataset.records import Item, Sources, labelled_data, read_json
from camtrap.errors import Problem

TABLES = ("deployments", "media", "observations")
NOT_LABELS = ("unknown", "unclassified")
MEDIA_COLUMNS = ("mediaID", "deploymentID", "timestamp", "filePath", "fileMediatype")
OBSERVATION_COLUMNS = ("observationID", "deploymentID", "mediaID", "eventStart", "eventEnd",
                       "observationLevel", "observationType", "scientificName")  # fmt: skip


def read_package(
    root: Path,
    multi_label: str,
    check: ImageCheck | None,
    workers: int,
    limits: ImageLimits,
    allow_http: bool = False,
) -> tuple[LabelledData | None, list[Problem]]:
    """(data, []) for a valid Camtrap DP package and its images, else (None, every problem)."""
    from camtrap.dataset.dpschema import descriptor_problems, schema_problems

    problems: list[Problem] = []
    paths = resource_paths(root, problems)
    if paths is None:
        return None, problems
    problems += descriptor_problems(json.loads((root / DATAPACKAGE_JSON).read_bytes()))
    tables = {name: read_table(root, paths[name], problems) for name in TABLES}
    problems += schema_problems(root, paths)
    media, observations = tables["media"], tables["observations"]
    if media is None or not has_columns(media, MEDIA_COLUMNS, problems):
        return None, problems
    if observations is None or not has_columns(observations, OBSERVATION_COLUMNS, problems):
        return None, problems
    deployments = _deployment_ids(tables["deployments"])
    left_out: Counter[str] = Counter()
    items = _media_items(media, deployments, left_out, problems)
    _fetch_uri_media(media.name, items, allow_http, limits.max_bytes, problems)
    _label(observations, items, problems)
    kept = _with_labels(items, left_out)
    classes = sorted({label for item in kept for label in item.labels})
    raw = {DATAPACKAGE_JSON: (root / DATAPACKAGE_JSON).read_bytes()}
    raw.update({paths[name]: table.raw for name, table in tables.items() if table is not None})
    data = labelled_data(root, media.name, kept, classes, Sources(raw, left_out), multi_label,
                         check, workers, limits, problems)  # fmt: skip
    return (None, problems) if problems else (data, [])


def package_media(
    root: Path,
    problems: list[Problem],
    allow_http: bool = False,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> tuple[str, list[Item], dict[str, bytes]]:
    """(the media table's name, its images, the package's files' bytes) for labelling: the
    descriptor and the tables checked as for training, observations (if any) giving events."""
    from camtrap.dataset.dpschema import descriptor_problems, schema_problems

    paths = resource_paths(root, problems)
    if paths is None:
        return DATAPACKAGE_JSON, [], {}
    problems += descriptor_problems(json.loads((root / DATAPACKAGE_JSON).read_bytes()))
    problems += schema_problems(root, paths)
    tables = {
        name: read_table(root, paths[name], problems) for name in TABLES if name != "observations"
    }
    media = tables["media"]
    if media is None or not has_columns(media, MEDIA_COLUMNS, problems):
        return paths["media"], [], {}
    items = _media_items(media, _deployment_ids(tables["deployments"]), Counter(), problems)
    _fetch_uri_media(media.name, items, allow_http, max_bytes, problems)
    observations = read_table(root, paths["observations"], problems)
    if observations is not None and has_columns(observations, OBSERVATION_COLUMNS, problems):
        _label(observations, items, problems)  # for the events: the labels are not used
    raw = {DATAPACKAGE_JSON: (root / DATAPACKAGE_JSON).read_bytes(), paths["media"]: media.raw}
    return media.name, list(items.values()), raw


def _deployment_ids(deployments: Table | None) -> set[str] | None:
    """The deployments' ids (None when the table cannot be read: reported already)."""
    if deployments is None or "deploymentID" not in deployments.header:
        return None
    return {row["deploymentID"] for _, row in deployments.rows}


def resource_paths(root: Path, problems: list[Problem]) -> dict[str, str] | None:
    """deployments/media/observations -> the CSV path datapackage.json gives each."""
    parsed = read_json(root, DATAPACKAGE_JSON, problems)
    if parsed is None:
        return None
    resources = parsed[1].get("resources") if isinstance(parsed[1], dict) else None
    paths = {}
    for resource in resources if isinstance(resources, list) else []:
        name = resource.get("name") if isinstance(resource, dict) else None
        if name in TABLES and isinstance(resource.get("path"), str):
            paths[name] = resource["path"]
    for name in (n for n in TABLES if n not in paths):
        message = f"has no '{name}' resource with a 'path'"
        fix = f'list the {name} table in resources: {{"name": "{name}", "path": "{name}.csv"}}'
        problems.append(Problem(DATAPACKAGE_JSON, message, fix))
    return paths if len(paths) == len(TABLES) else None


def _media_items(
    media: Table,
    deployments: set[str] | None,
    left_out: Counter[str],
    problems: list[Problem],
) -> dict[str, Item]:
    """mediaID -> Item for each image (videos left out), timestamps checked."""
    items: dict[str, Item] = {}
    for line, row in media.rows:
        media_id = row["mediaID"]
        if not row["fileMediatype"].startswith("image/"):
            left_out[f"not an image ({row['fileMediatype'] or 'no fileMediatype'})"] += 1
            continue
        if deployments is not None and row["deploymentID"] not in deployments:
            message = f"deploymentID {row['deploymentID']!r} is not in the deployments table"
            fix = "add the deployment, or correct the media's deploymentID"
            problems.append(Problem(media.name, message, fix, line, media_id or None))
        if _timestamp(row["timestamp"]) is None:
            message = f"timestamp {row['timestamp']!r} is not an ISO 8601 date and time"
            fix = "write it as 2021-04-11T20:43:09+01:00"
            problems.append(Problem(media.name, message, fix, line, media_id or None))
        items[media_id] = Item(
            file=media.name,
            line=line,
            id=media_id,
            filepath=row["filePath"],
            site=row["deploymentID"],
            timestamp=row["timestamp"],
        )
    return items


def _fetch_uri_media(
    file: str, items: dict[str, Item], allow_http: bool, max_bytes: int, problems: list[Problem]
) -> None:
    """Media named by URI fetched to this machine (camtrap.dataset.media); those that cannot
    be are problems (with their line) and leave the table, so no second problem names them."""
    named = [(i.line or 0, i.id, i.filepath) for i in items.values() if is_uri(i.filepath)]
    if not named:
        return
    failed = fetch_problems(file, named, allow_http, max_bytes)
    problems += failed
    for problem in failed:
        items.pop(problem.id or "", None)


def _timestamp(text: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


def observation_label(row: dict[str, str]) -> str | None:
    """The class an observation gives, or None (unknown, unclassified, an unnamed animal)."""
    kind = row["observationType"]
    if kind in NOT_LABELS:
        return None
    if kind == "animal":
        return row["scientificName"] or None
    return kind


def _label(observations: Table, items: dict[str, Item], problems: list[Problem]) -> None:
    """People's observations first; a machine's (classificationMethod=machine: camtrap's own
    output, say) only for media no person labelled, so predictions added to a package never
    outvote or mix with its reviewed labels."""
    human = [(n, r) for n, r in observations.rows if r.get("classificationMethod") != "machine"]
    machine = [(n, r) for n, r in observations.rows if r.get("classificationMethod") == "machine"]
    _label_rows(observations.name, human, items, problems)
    if machine:
        unlabelled = {key: item for key, item in items.items() if not item.labels}
        _label_rows(observations.name, machine, unlabelled, problems)


def _label_rows(
    file: str, rows: list[Row], items: dict[str, Item], problems: list[Problem]
) -> None:
    """Media-level labels first, then event-level ones for media without their own."""
    own: dict[str, set[str]] = defaultdict(set)
    seen: set[str] = set()  # media with a media-level observation (even unknown)
    events: list[Row] = []
    for line, row in rows:
        if row["observationLevel"] == "event":
            events.append((line, row))
            continue
        media_id = row["mediaID"]
        if media_id not in items:
            if media_id:
                continue  # a video's observation, or a problem the media table reports
            message = "a media-level observation has no mediaID"
            fix = "give it the mediaID it is about, or make it observationLevel=event"
            problems.append(Problem(file, message, fix, line, row["observationID"]))
            continue
        seen.add(media_id)
        label = observation_label(row)
        if label is not None:
            own[media_id].add(label)
        items[media_id].event = items[media_id].event or row.get("eventID", "")
    for media_id, labels in own.items():
        items[media_id].labels |= labels
    _label_events(file, events, items, seen, problems)


def _label_events(
    file: str, events: list[Row], items: dict[str, Item], seen: set[str], problems: list[Problem]
) -> None:
    by_site: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for item in items.values():
        stamp = _timestamp(item.timestamp)
        if stamp is not None:
            by_site[item.site].append((stamp, item.id))
    for frames in by_site.values():
        frames.sort()
    for line, row in events:
        start, end = _timestamp(row["eventStart"]), _timestamp(row["eventEnd"])
        if start is None or end is None or end < start:
            span = f"{row['eventStart']!r}..{row['eventEnd']!r}"
            message = f"eventStart/eventEnd {span} is not a time span"
            fix = "give both as ISO 8601 date and time, eventStart <= eventEnd"
            problems.append(Problem(file, message, fix, line, row["observationID"]))
            continue
        frames = by_site.get(row["deploymentID"], [])
        stamps = [stamp for stamp, _ in frames]
        first, last = bisect.bisect_left(stamps, start), bisect.bisect_right(stamps, end)
        label = observation_label(row)
        for _, media_id in frames[first:last]:
            items[media_id].event = items[media_id].event or row.get("eventID", "")
            if media_id not in seen and label is not None:
                items[media_id].labels.add(label)


def _with_labels(items: dict[str, Item], left_out: Counter[str]) -> list[Item]:
    kept = [item for item in items.values() if item.labels]
    if len(kept) < len(items):
        left_out["no species, blank, human or vehicle observation"] += len(items) - len(kept)
    return kept
