"""camtrap.outputs: the submission CSV (unchanged without failures; failed photos listed, not
dropped), the events sidecar, the --out checks and the --taxonomy file."""

from __future__ import annotations

import pandas as pd
import pytest

from camtrap.errors import ConfigError
from camtrap.outputs import (
    FAILED_COLUMNS,
    Labelled,
    animal_confidence,
    check_output,
    events_uri,
    kind_of,
    read_taxonomy,
    write,
)

CLASSES = ["empty", "deer"]


def _labelled(**extra) -> Labelled:
    probs = pd.DataFrame({"id": ["a", "b"], "empty": [0.25, 0.5], "deer": [0.75, 0.5]})
    photos = pd.DataFrame({"id": ["a", "b"], "filepath": ["a.jpg", "b.jpg"], "site": "",
                           "event": "", "timestamp": ""})  # fmt: skip
    return Labelled(probs, photos, CLASSES, "m.pth", "0" * 64, **extra)


def test_without_failures_or_events_the_csv_is_the_submission_format(tmp_path):
    out = tmp_path / "p.csv"
    assert write(_labelled(), str(out), "csv") == [str(out)]
    assert out.read_text() == "id,empty,deer\na,0.25,0.75\nb,0.5,0.5\n"


def test_failed_photos_are_rows_with_a_failure_and_events_go_to_a_sidecar(tmp_path):
    failed = pd.DataFrame([["c", "c.jpg", "", "", "", "is not an image"]], columns=FAILED_COLUMNS)
    events = pd.DataFrame({"event": ["e1"], "site": [""], "frames": [2], "start": [""],
                           "end": [""], "empty": [0.375], "deer": [0.625]})  # fmt: skip
    out = tmp_path / "p.csv"
    written = write(_labelled(failed=failed, events=events), str(out), "csv")
    assert written == [str(out), str(tmp_path / "p.events.csv")]
    assert out.read_text() == (
        "id,empty,deer,failure\na,0.25,0.75,\nb,0.5,0.5,\nc,,,is not an image\n"
    )
    assert (tmp_path / "p.events.csv").read_text() == (
        "event,site,frames,start,end,empty,deer\ne1,,2,,,0.375,0.625\n"
    )


def test_events_sidecar_names():
    assert events_uri("s3://b/p/predictions.csv") == "s3://b/p/predictions.events.csv"
    assert events_uri("out/md.json") == "out/md.events.csv"
    assert events_uri("noext") == "noext.events.csv"


def test_the_fields_words_for_classes():
    assert [kind_of(c) for c in ["Empty", "blank", "Human", "person", "vehicle", "fox"]] == [
        "blank", "blank", "human", "human", "vehicle", "animal"]  # fmt: skip
    probs = _labelled().probs[CLASSES].to_numpy()
    assert animal_confidence(probs, CLASSES).tolist() == [0.75, 0.5]
    assert animal_confidence(probs, ["deer", "fox"]).tolist() == [1.0, 1.0]  # no blank class


def test_out_must_suit_the_format(tmp_path):
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(ConfigError, match="is a folder — fix: name the file"):
        check_output(str(tmp_path), "megadetector")
    with pytest.raises(ConfigError, match="is a file — fix: name the folder"):
        check_output(str(tmp_path / "file.csv"), "camtrap-dp")
    check_output(str(tmp_path / "new-package"), "camtrap-dp")
    check_output("s3://bucket/p.json", "megadetector")


def test_camtrap_dp_output_needs_a_package_or_deployments(tmp_path):
    with pytest.raises(ConfigError, match="not a Camtrap DP package.*--deployments"):
        write(_labelled(), str(tmp_path / "pkg"), "camtrap-dp", package_root=None)
    assert not (tmp_path / "pkg").exists()


def test_taxonomy_maps_classes_to_scientific_names(tmp_path):
    path = tmp_path / "taxa.csv"
    path.write_text("class,scientificName\ndeer, Odocoileus virginianus\n")
    assert read_taxonomy(str(path)) == {"deer": "Odocoileus virginianus"}
    assert read_taxonomy(None) == {}
    path.write_text("name,latin\ndeer,x\n")
    with pytest.raises(ConfigError, match="no column 'class'.*class,scientificName"):
        read_taxonomy(str(path))
