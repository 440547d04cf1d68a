"""camtrap.outputs: the submission CSV (unchanged without failures; failed photos listed, not
dropped), the events sidecar, the --out checks and the --taxonomy file."""

from __future__ import annotations

import os
from pathlib import Path

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


# --- --out: a folder, an input, the data folder, writable ------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("csv", "predictions.csv"), ("megadetector", "predictions.json"),
     ("camtrap-dp", "predictions-camtrap-dp")],
)  # fmt: skip
def test_out_ending_in_a_slash_is_a_folder_the_output_goes_into(tmp_path, fmt, name):
    assert check_output(f"{tmp_path}/", fmt) == str(tmp_path / name)
    assert check_output(f"{tmp_path}/new/", fmt) == str(tmp_path / "new" / name)  # made later
    assert check_output("s3://bucket/out/", fmt) == f"s3://bucket/out/{name}"
    assert check_output(str(tmp_path / "p.out"), fmt) == str(tmp_path / "p.out")  # as given


def test_out_ending_in_a_slash_must_not_be_a_file(tmp_path):
    (tmp_path / "p.csv").write_text("x")
    with pytest.raises(ConfigError, match=r"p.csv/ ends in / \(a folder\), but .* is a file — fix"):
        check_output(f"{tmp_path / 'p.csv'}/", "csv")


def _data(tmp_path):
    data = tmp_path / "data"
    (data / "test_features").mkdir(parents=True)
    (data / "test_features.csv").write_text("id,filepath\n")
    (data / "test_features" / "a.jpg").write_bytes(b"jpeg")
    return data


@pytest.mark.parametrize("fmt", ["csv", "megadetector"])
def test_an_out_that_is_an_input_is_refused_even_inside_data_on_purpose(tmp_path, fmt):
    data, model = _data(tmp_path), tmp_path / "m.pth"
    inputs = {str(data / "test_features.csv"): "the features CSV", str(model): "the model file"}
    for out, what in [(data / "test_features.csv", "the features CSV"), (model, "the model file"),
                      (tmp_path / "x" / ".." / "m.pth", "the model file")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"would overwrite {what}, an input of this predict"):
            check_output(str(out), fmt, inputs, str(data), inside_data=True)
    with pytest.raises(ConfigError, match="would overwrite an image, an input of this predict"):
        check_output(str(data / "test_features" / "a.jpg"), fmt, inputs, str(data), True)


def test_an_out_inside_the_data_folder_needs_the_opt_in(tmp_path):
    data = _data(tmp_path)
    out = str(data / "predictions.csv")
    with pytest.raises(ConfigError, match="is inside the data folder .* --out-inside-data"):
        check_output(out, "csv", {}, str(data))
    assert check_output(out, "csv", {}, str(data), inside_data=True) == out
    assert check_output(str(tmp_path / "p.csv"), "csv", {}, str(data)) == str(tmp_path / "p.csv")
    with pytest.raises(ConfigError, match="inside the data folder"):  # on S3 alike
        check_output("s3://b/test/p.csv", "csv", {}, "s3://b/test")
    with pytest.raises(ConfigError, match="would overwrite the features CSV"):
        features = {"s3://b/test/test_features.csv": "the features CSV"}
        check_output("s3://b/test/test_features.csv", "csv", features, "s3://b/test", True)
    check_output("s3://b/test-2/p.csv", "csv", {}, "s3://b/test")  # a sibling prefix is fine


def test_a_camtrap_dp_out_never_replaces_a_folder_holding_inputs_or_other_files(tmp_path):
    data, model = _data(tmp_path), tmp_path / "runs" / "m.pth"
    model.parent.mkdir()
    model.write_bytes(b"model")
    inputs = {str(data / "test_features.csv"): "the features CSV", str(model): "the model file"}
    for out in (data, tmp_path, model.parent):  # the data, a folder above it, the model's
        with pytest.raises(ConfigError, match="replaces the whole folder, .* — fix"):
            check_output(str(out), "camtrap-dp", inputs, str(data), inside_data=True)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a Camtrap DP package: .* end --out with /"):
        check_output(str(notes), "camtrap-dp", inputs, str(data))
    (tmp_path / "old-package").mkdir()
    (tmp_path / "old-package" / "datapackage.json").write_text("{}")
    check_output(str(tmp_path / "old-package"), "camtrap-dp", inputs, str(data))  # replaced


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot be written: .*file is a file, not a folder"):
        check_output(str(tmp_path / "file" / "sub" / "p.csv"), "csv")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: show what any other user would get
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode)
        )
    try:
        with pytest.raises(ConfigError, match=r"cannot be written: .*locked is not writable — fix"):
            check_output(str(locked / "new" / "p.json"), "megadetector")
    finally:
        locked.chmod(0o755)
