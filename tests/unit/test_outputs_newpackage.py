"""A new Camtrap DP package from photos that are not one: times given their offset, photos
placed at the deployments the user names, refusals that say what is missing."""

from __future__ import annotations

import pandas as pd
import pytest

from camtrap.errors import ConfigError
from camtrap.outputs import FAILED_COLUMNS, Labelled
from camtrap.outputs.newpackage import placed, read_deployments, with_offset

CLASSES = ["blank", "deer"]


def _labelled(sites: list[str], stamps: list[str]) -> Labelled:
    ids = [f"p{i}" for i in range(len(sites))]
    probs = pd.DataFrame({"id": ids, "blank": 0.2, "deer": 0.8})
    paths = [f"{site}/{i}.jpg" for site, i in zip(sites, ids, strict=True)]
    photos = pd.DataFrame({"id": ids, "filepath": paths, "site": sites, "event": "",
                           "timestamp": stamps})  # fmt: skip
    return Labelled(probs, photos, CLASSES, "m.pth", "0" * 64,
                    failed=pd.DataFrame(columns=FAILED_COLUMNS))  # fmt: skip


def test_times_are_written_with_their_offset():
    assert with_offset("2024-05-01T10:00:00+01:00", "+02:00") == "2024-05-01T10:00:00+01:00"
    assert with_offset("2024-05-01T10:00:00Z", None) == "2024-05-01T10:00:00Z"
    assert with_offset("2024-05-01T10:00:00", "+02:00") == "2024-05-01T10:00:00+02:00"
    assert with_offset("2024-05-01 10:00:00", "-05:00") == "2024-05-01T10:00:00-05:00"  # COCO
    assert with_offset("2024-05-01T10:00:00", None) is None
    assert with_offset("", "+02:00") is None


def test_photos_go_to_the_deployment_of_their_site_or_the_only_one():
    deployments = pd.DataFrame({"deploymentID": ["A", "B"], "latitude": "1", "longitude": "2"})
    out = placed(_labelled(["A", "B"], ["2024-05-01T10:00:00"] * 2), deployments, "+01:00")
    assert out.photos[["site", "timestamp"]].values.tolist() == [
        ["A", "2024-05-01T10:00:00+01:00"], ["B", "2024-05-01T10:00:00+01:00"]]  # fmt: skip
    one = deployments.iloc[:1]
    out = placed(_labelled(["", "x"], ["2024-05-01T10:00:00Z"] * 2), one, None)
    assert out.photos["site"].tolist() == ["A", "A"]
    with pytest.raises(ConfigError, match="no deployment for the photos of site 'C'"):
        placed(_labelled(["A", "C"], ["2024-05-01T10:00:00Z"] * 2), deployments, None)


def test_photos_without_a_time_or_offset_are_refused_by_name():
    deployments = pd.DataFrame({"deploymentID": ["A"], "latitude": "1", "longitude": "2"})
    with pytest.raises(ConfigError, match=r"2 photos' capture times have no UTC offset .*"
                                          r"A/p0.jpg, A/p1.jpg.*--utc-offset"):  # fmt: skip
        placed(_labelled(["A", "A"], ["2024-05-01T10:00:00"] * 2), deployments, None)
    with pytest.raises(ConfigError, match=r"1 photos have no capture time .*A/p1.jpg"):
        placed(_labelled(["A", "A"], ["2024-05-01T10:00:00", ""]), deployments, "+01:00")


def test_the_deployments_file_is_checked(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("deploymentID,latitude\nA,1\n")
    with pytest.raises(ConfigError, match="no column 'longitude'"):
        read_deployments(str(path))
    path.write_text("deploymentID,latitude,longitude\nA,1,2\nA,3,4\n")
    with pytest.raises(ConfigError, match="deploymentID 'A' twice"):
        read_deployments(str(path))
