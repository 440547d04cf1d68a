"""camtrap.dataset.camtrapdp and dpschema: a Camtrap DP package (ena24_mini converted by
tests/fixtures/formats.py) with event-level labels, unknown observations, a deployment without
media, two labels on one media, and errors against the TDWG schemas, each reported with file,
line and fix."""

from __future__ import annotations

import json

import pytest
from fixtures.formats import table_rows, write_table

from camtrap.config import DataConfig
from camtrap.dataset import load_data, validate_data
from camtrap.dataset.dpschema import descriptor_problems
from camtrap.errors import DataError

DP = DataConfig(format="camtrap-dp")


def test_media_level_observations_label_their_media(package):
    data = load_data(package, DP)
    observations = {o["mediaID"]: o["scientificName"] for o in table_rows(package, "observations")}
    assert dict(zip(data.frame["id"], data.frame["label"], strict=True)) == observations
    assert set(data.frame["site"]) == {"ENA24"}


def test_an_event_level_observation_labels_every_media_of_its_time_span(package):
    media = table_rows(package, "media")
    frames = [m for m in media if m["timestamp"] <= "2024-05-01T06:00:04Z"]  # the first 3
    assert len(frames) == 3
    observations = [o for o in table_rows(package, "observations")
                    if o["mediaID"] not in {m["mediaID"] for m in frames}]  # fmt: skip
    # The same span in another time zone: 06:00:00Z..06:00:04Z is 08:00:00+02:00..08:00:04+02:00
    observations.append({
        "observationID": "e1", "deploymentID": "ENA24", "eventID": "burst-1",
        "eventStart": "2024-05-01T08:00:00+02:00", "eventEnd": "2024-05-01T08:00:04+02:00",
        "observationLevel": "event", "observationType": "animal", "scientificName": "Sus scrofa",
    })  # fmt: skip
    write_table(package / "observations.csv", "observations", observations)
    frame = load_data(package, DP).frame.set_index("id")
    ids = [m["mediaID"] for m in frames]
    assert frame.loc[ids, "label"].tolist() == ["Sus scrofa"] * 3
    assert frame.loc[ids, "event"].tolist() == ["burst-1"] * 3
    assert "Sus scrofa" not in frame.drop(index=ids)["label"].tolist()


def test_a_media_level_label_wins_over_its_event_and_unknowns_are_no_labels(package):
    observations = table_rows(package, "observations")
    first, second = observations[0]["mediaID"], observations[1]["mediaID"]
    observations[1].update(observationType="unknown", scientificName="")
    start = min(m["timestamp"] for m in table_rows(package, "media"))
    observations.append({
        "observationID": "e1", "deploymentID": "ENA24", "eventStart": start,
        "eventEnd": "2030-01-01T00:00:00Z", "observationLevel": "event",
        "observationType": "blank",
    })  # fmt: skip
    write_table(package / "observations.csv", "observations", observations)
    data = load_data(package, DP)
    frame = data.frame.set_index("id")
    assert frame.loc[first, "label"] == observations[0]["scientificName"]  # its own, not blank
    assert second not in frame.index  # only an unknown observation of its own
    assert data.left_out == {"no species, blank, human or vehicle observation": 1}
    assert "blank" not in set(frame["label"])  # every other media has a label of its own


def test_a_deployment_without_media_is_fine(package):
    deployments = table_rows(package, "deployments")
    deployments.append({**deployments[0], "deploymentID": "EMPTY"})
    write_table(package / "deployments.csv", "deployments", deployments)
    assert len(load_data(package, DP).frame) == 21


def test_two_different_species_on_one_media_follow_multi_label(package):
    observations = table_rows(package, "observations")
    observations.append({**observations[0], "observationID": "extra", "scientificName": "Vulpes"})
    write_table(package / "observations.csv", "observations", observations)
    with pytest.raises(DataError, match=r"media.csv, line 2 \(id .*\): image media/.* has 2 "
                                        r"different labels"):  # fmt: skip
        load_data(package, DP)
    data = load_data(package, DP.model_copy(update={"multi_label": "drop"}))
    assert len(data.frame) == 20 and observations[0]["mediaID"] not in set(data.frame["id"])


def test_schema_errors_are_problems_with_their_line(package):
    observations = table_rows(package, "observations")
    observations[2]["observationType"] = "cat"
    write_table(package / "observations.csv", "observations", observations)
    media = table_rows(package, "media")
    media[4]["deploymentID"] = "NOWHERE"
    write_table(package / "media.csv", "media", media)
    _, problems = validate_data(package, DP)
    text = [str(p) for p in problems]
    assert any(t.startswith("observations.csv, line 4: observationType: constraint \"enum\"")
               for t in text), text  # fmt: skip
    assert any(t.startswith("media.csv, line 6: for \"deploymentID\": values \"NOWHERE\" not "
                            "found") for t in text), text  # fmt: skip
    assert any(t.startswith("media.csv, line 6 (id ") and "not in the deployments table" in t
               for t in text), text  # fmt: skip


def test_the_descriptor_is_checked_against_the_profile(package):
    descriptor = json.loads((package / "datapackage.json").read_text())
    assert descriptor_problems(descriptor) == []
    del descriptor["created"]
    descriptor["resources"] = descriptor["resources"][:2]
    (package / "datapackage.json").write_text(json.dumps(descriptor))
    _, problems = validate_data(package, DP)
    messages = [p.message for p in problems if p.file == "datapackage.json"]
    assert messages[0] == "has no 'observations' resource with a 'path'"


def test_a_url_file_path_needs_allow_http_and_says_so(package):
    media = table_rows(package, "media")
    media[0]["filePath"] = "https://example.org/a.jpg"
    write_table(package / "media.csv", "media", media)
    _, problems = validate_data(package, DP)  # nothing is fetched: the setting is off
    (problem,) = problems
    assert (problem.file, problem.line, problem.id) == ("media.csv", 2, media[0]["mediaID"])
    assert problem.message == (
        "filePath 'https://example.org/a.jpg' is an http(s) URL, fetched only with "
        "data.allow_http=true"
    )
    assert problem.fix.startswith("set data.allow_http=true")
