"""The input Camtrap DP package (ena24_mini converted by tests/fixtures/formats.py) with camtrap's
machine observations added: it validates against the TDWG schemas (frictionless, offline),
keeps the package's own rows, opens as it is (media beside the tables), and reads back through
camtrap's reader: people's labels first, the machine's where nobody labelled."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from fixtures.formats import table_rows, write_table

from camtrap.config import DataConfig
from camtrap.dataset import load_data
from camtrap.dataset.camtrapdp import resource_paths
from camtrap.dataset.dpschema import descriptor_problems, schema_problems
from camtrap.outputs import Labelled, write

DP = DataConfig(format="camtrap-dp")
WHEN = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def _labelled(root: Path, predicted: dict[str, str], fail: str | None = None,
              with_events: bool = False) -> Labelled:  # fmt: skip
    """Each media predicted as `predicted[mediaID]` at 0.9 (the other classes share the rest)."""
    media = table_rows(root, "media")
    classes = sorted(set(predicted.values()) | {"blank", "Other"})
    photos = pd.DataFrame({
        "id": [m["mediaID"] for m in media], "filepath": [m["filePath"] for m in media],
        "site": [m["deploymentID"] for m in media], "event": "",
        "timestamp": [m["timestamp"] for m in media],
    })  # fmt: skip
    rest = 0.1 / (len(classes) - 1)
    probs = np.array([[0.9 if c == predicted[i] else rest for c in classes] for i in photos["id"]])
    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "id", photos["id"])
    result = Labelled(frame, photos, classes, "m.pth", "c0ffee" * 11, when=WHEN)
    if fail is not None:
        keep = photos["id"] != fail
        gone = photos[~keep].assign(failure="is truncated")
        result.probs, result.photos = frame[keep].reset_index(drop=True), photos[keep]
        result.failed = gone[result.failed.columns].reset_index(drop=True)
    if with_events:
        first = photos.iloc[0]
        result.events = pd.DataFrame([{
            "event": "e-1", "site": first["site"], "frames": 2, "start": first["timestamp"],
            "end": first["timestamp"], **dict(zip(classes, probs[0], strict=True))}])  # fmt: skip
    return result


def _problems(root: Path) -> list:
    paths = resource_paths(root, [])
    return descriptor_problems(json.loads((root / "datapackage.json").read_text())) + \
        schema_problems(root, paths)  # fmt: skip


def test_the_package_with_machine_observations_validates_and_keeps_its_own(package, tmp_path):
    before = table_rows(package, "observations")
    media = table_rows(package, "media")
    predicted = {m["mediaID"]: "Vulpes vulpes" for m in media}
    out = tmp_path / "out"
    taxonomy = {"Vulpes vulpes": "Vulpes vulpes"}
    write(_labelled(package, predicted, fail=media[3]["mediaID"], with_events=True), str(out),
          "camtrap-dp", package_root=package, taxonomy=taxonomy)  # fmt: skip
    assert _problems(out) == []
    for name in ("datapackage.json", "deployments.csv", "media.csv"):  # copied unchanged
        assert (out / name).read_bytes() == (package / name).read_bytes()
    for row in media:  # opens as it is: every media file at its filePath
        assert (out / row["filePath"]).read_bytes() == (package / row["filePath"]).read_bytes()
    rows = table_rows(out, "observations")
    assert [{k: v for k, v in r.items() if v} for r in rows[: len(before)]] == [
        {k: v for k, v in r.items() if v} for r in before
    ]
    machine = rows[len(before) :]
    assert len(machine) == len(media) + 1  # one per media (one of them failed) + one event
    first = machine[0]
    assert first == {**first, "observationID": f"camtrap-{media[0]['mediaID']}",
                     "mediaID": media[0]["mediaID"], "deploymentID": media[0]["deploymentID"],
                     "eventStart": media[0]["timestamp"], "eventEnd": media[0]["timestamp"],
                     "observationLevel": "media", "observationType": "animal",
                     "scientificName": "Vulpes vulpes", "classificationMethod": "machine",
                     "classifiedBy": "camtrap 0.1.0 c0ffeec0ffee",
                     "classificationTimestamp": "2026-12-03T12:00:00+00:00",
                     "classificationProbability": "0.9000"}  # fmt: skip
    failed = [r for r in machine if r["observationType"] == "unclassified"]
    assert [(r["mediaID"], r["observationComments"]) for r in failed] == [
        (media[3]["mediaID"], "camtrap could not read the image: is truncated")
    ]
    (event,) = [r for r in machine if r["observationLevel"] == "event"]
    assert (event["eventID"], event["mediaID"], event["observationType"]) == ("e-1", "", "animal")


def test_people_s_labels_win_on_read_back_and_the_machine_fills_the_rest(package, tmp_path):
    human = {r["mediaID"]: r["scientificName"] for r in table_rows(package, "observations")}
    media = [m["mediaID"] for m in table_rows(package, "media")]
    unreviewed = media[:5]  # nobody labelled these: their people's rows are removed
    kept = [r for r in table_rows(package, "observations") if r["mediaID"] not in unreviewed]
    write_table(package / "observations.csv", "observations", kept)
    predicted = {m: "Canis lupus" for m in media}  # the machine says wolf everywhere
    out = tmp_path / "out"
    write(_labelled(package, predicted), str(out), "camtrap-dp", package_root=package)
    data = load_data(out, DP)
    label = dict(zip(data.frame["id"], data.frame["label"], strict=True))
    assert {m: label[m] for m in unreviewed} == dict.fromkeys(unreviewed, "Canis lupus")
    assert {m: label[m] for m in media[5:]} == {m: human[m] for m in media[5:]}


def test_blank_predictions_are_blank_observations_without_a_name(package, tmp_path):
    media = table_rows(package, "media")
    out = tmp_path / "out"
    write(_labelled(package, {m["mediaID"]: "blank" for m in media}), str(out), "camtrap-dp",
          package_root=package)  # fmt: skip
    machine = [r for r in table_rows(out, "observations") if r["classificationMethod"] == "machine"]
    assert {(r["observationType"], r["scientificName"]) for r in machine} == {("blank", "")}
    assert _problems(out) == []


def test_a_rerun_replaces_the_package_whole(package, tmp_path):
    media = table_rows(package, "media")
    out = tmp_path / "out"
    for name in ("Vulpes vulpes", "Canis lupus"):
        write(_labelled(package, {m["mediaID"]: name for m in media}), str(out), "camtrap-dp",
              package_root=package)  # fmt: skip
    names = {r["scientificName"] for r in table_rows(out, "observations")
             if r["classificationMethod"] == "machine"}  # fmt: skip
    assert names == {"Canis lupus"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "package"]  # no temp folders
