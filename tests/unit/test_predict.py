"""`camtrap predict` on a competition-style features CSV (id, filepath, site; no labels), with a
small untrained model file: the submission format, the temperature, hflip TTA, bad data. The
expected probabilities are computed here independently: each photo decoded, resized, normalised
and put through the model one at a time, without the image cache, the loader or the engine.
Also the features-only loader. (The latest-run pointer: test_latest.py.)"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures.formats import to_camtrap_dp, to_coco

from camtrap import imagecache, latest, runfolder
from camtrap.cli import main
from camtrap.dataset import load_features, validate_features
from camtrap.dataset.megadetector import read_megadetector
from camtrap.demo import SEED_CLASSES
from camtrap.errors import DataError
from camtrap.modelfile import ModelMeta, model_file_dict
from camtrap.models import build_model, load_model
from camtrap.predict import prediction_name
from camtrap.report import class_counts, least_confident

TEMPERATURE = 2.5
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """resnet18, 8 classes, 32 px, random weights (fixed by a seed), temperature 2.5."""
    torch.manual_seed(0)
    model = build_model("resnet18", len(SEED_CLASSES), weights="none", image_size=32)
    meta = ModelMeta("resnet18", list(SEED_CLASSES), 32, MEAN, STD, epoch=3,
                     temperature=TEMPERATURE)  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "final_resnet18_model_part1_best.pth"
    torch.save(model_file_dict(model.eval(), meta), path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory, demo_root) -> Path:
    """The demo photos as a test set: test_features.csv (id, filepath, site, and a column
    predict ignores) in an order of its own, and no labels CSV."""
    root = tmp_path_factory.mktemp("photos")
    shutil.copytree(demo_root / "train_features", root / "test_features")
    features = pd.read_csv(demo_root / "train_features.csv", dtype=str)
    features = features.iloc[::-1].reset_index(drop=True)  # not the training order
    features["filepath"] = features["filepath"].str.replace("train_features/", "test_features/")
    features["note"] = "x"
    features.to_csv(root / "test_features.csv", index=False)
    return root


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def reference_probs(model_path: Path, root: Path, mirror: bool = False,
                    filepaths: list[str] | None = None) -> np.ndarray:  # fmt: skip
    """softmax of the model on every photo (of test_features.csv, or `filepaths`): decoded,
    resized to 32, /255, normalised here."""
    model, _ = load_model(model_path)
    if filepaths is None:
        filepaths = pd.read_csv(root / "test_features.csv", dtype=str)["filepath"].tolist()
    pixels = np.stack([imagecache.decode_resized(root / path, 32) for path in filepaths])
    if mirror:
        pixels = pixels[:, :, ::-1]  # (n, height, width, 3): left-right
    x = torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():  # eval mode: each photo's output is its own, whatever the batch
        return _softmax(model(x).double().numpy())


@pytest.fixture(scope="module")
def expected(model_file, photos) -> dict[str, np.ndarray]:
    return {
        "plain": reference_probs(model_file, photos),
        "mirrored": reference_probs(model_file, photos, mirror=True),
    }


def _predict(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--model", str(model), "--data", str(data), "--out", str(out),
                 "--batch-size", "7", *extra])  # fmt: skip


def _read(out: Path) -> pd.DataFrame:
    return pd.read_csv(out, dtype={"id": str})


# --- the submission file ---------------------------------------------------------------------


def test_predict_writes_one_row_per_listed_id_in_the_submission_format(
    model_file, photos, expected, tmp_path, capsys
):
    out = tmp_path / "out" / "submission.csv"
    assert _predict(model_file, photos, out, "--no-calibration") == 0
    frame = _read(out)
    listed = pd.read_csv(photos / "test_features.csv", dtype=str)["id"]
    assert list(frame.columns) == ["id", *SEED_CLASSES]
    assert frame["id"].tolist() == listed.tolist()  # the CSV's order, every id once
    assert len(frame) == 32
    probs = frame[list(SEED_CLASSES)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs, expected["plain"], rtol=0, atol=1e-5)
    printed = capsys.readouterr().out
    assert f"{out}: 32 rows" in printed
    assert f"model {model_file} (epoch 3, no temperature applied, tta none)" in printed


def test_latest_json_picks_the_runs_best_model_and_its_temperature_is_applied(
    model_file, photos, expected, tmp_path, capsys, make_finished_run
):
    run_dir = make_finished_run(tmp_path / "runs", "part1-abc", model_file)
    latest.write_latest(run_dir, runfolder.read_run_json(run_dir))
    out = tmp_path / "calibrated.csv"
    assert _predict(tmp_path / "runs" / "part1" / "latest.json", photos, out) == 0
    best = run_dir / "final_resnet18_model_part1_best.pth"
    assert f"model {best} (epoch 3, temperature 2.5 applied" in capsys.readouterr().out
    calibrated = _read(out)[list(SEED_CLASSES)].to_numpy()
    raw = expected["plain"]
    np.testing.assert_allclose(calibrated, _softmax(np.log(raw) / TEMPERATURE), rtol=0, atol=1e-5)
    assert np.abs(calibrated - raw).max() > 1e-3  # the temperature does change them
    assert (calibrated.argmax(axis=1) == raw.argmax(axis=1)).all()


def test_hflip_tta_is_the_mean_of_the_photo_and_its_mirror(model_file, photos, expected, tmp_path):
    out = tmp_path / "tta.csv"
    assert _predict(model_file, photos, out, "--tta", "hflip", "--no-calibration") == 0
    tta = _read(out)[list(SEED_CLASSES)].to_numpy()
    plain, mirrored = expected["plain"], expected["mirrored"]
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, rtol=0, atol=1e-5)
    assert np.abs(plain - mirrored).max() > 1e-3  # the mirror makes a difference


# --- user errors -----------------------------------------------------------------------------


def test_bad_features_and_images_exit_2_listing_every_problem_and_write_nothing(
    model_file, photos, tmp_path, capsys
):
    bad = tmp_path / "bad"
    shutil.copytree(photos / "test_features", bad / "test_features")
    (bad / "test_features" / "ZJ000003.jpg").write_bytes(b"not a jpeg at all")
    (bad / "test_features" / "ZJ000004.jpg").unlink()
    (bad / "test_features.csv").write_text(
        "id,filepath,site\n"
        "ZJ000001,test_features/ZJ000001.jpg,S1\n"
        "ZJ000001,test_features/ZJ000002.jpg,S1\n"  # line 3: the id again
        "ZJ000003,test_features/ZJ000003.jpg,S1\n"  # line 4: not an image
        "ZJ000004,test_features/ZJ000004.jpg,S1\n"  # line 5: no such file
        ",test_features/ZJ000005.jpg,S1\n"  # line 6: no id
        "ZJ000006,../outside.jpg,S1\n"  # line 7: outside the data root
    )
    out = tmp_path / "preds.csv"
    assert _predict(model_file, bad, out) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "5 problems with the dataset" in err
    for line, text in [(3, "'ZJ000001' is repeated"), (4, "ZJ000003.jpg"), (5, "does not exist"),
                       (6, "id is empty"), (7, "outside the data root")]:  # fmt: skip
        assert f"test_features.csv, line {line}" in err and text in err
    assert not out.exists()


def test_a_missing_features_csv_or_model_or_an_out_folder_is_a_user_error(
    model_file, photos, tmp_path, capsys
):
    assert _predict(model_file, photos, tmp_path / "p.csv", "--features", "nope.csv") == 2
    assert "nope.csv does not exist" in capsys.readouterr().err
    assert _predict(tmp_path / "no-model.pth", photos, tmp_path / "p.csv") == 2
    assert "no-model.pth does not exist" in capsys.readouterr().err
    assert _predict(model_file, photos, tmp_path) == 2  # a folder, not a file
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


# --- the features-only loader ----------------------------------------------------------------


def test_a_features_csv_needs_id_and_filepath_but_no_site(photos, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(photos / "test_features", root / "test_features")
    (root / "test_features.csv").write_text("filepath,id\ntest_features/ZJ000001.jpg,a\n")
    data = load_features(root)
    assert data.frame[["id", "filepath", "site"]].values.tolist() == [
        ["a", "test_features/ZJ000001.jpg", ""]
    ]
    (root / "test_features.csv").write_text("id,path\na,test_features/ZJ000001.jpg\n")
    data, problems = validate_features(root)
    assert data is None
    assert [(p.line, p.message) for p in problems] == [(1, "required column 'filepath' is missing")]


def test_the_features_fingerprint_follows_the_csv_and_every_image(photos, tmp_path):
    root = shutil.copytree(photos, tmp_path / "data")
    first = load_features(root).fingerprint
    assert load_features(root).fingerprint == first
    image = root / "test_features" / "ZJ000007.jpg"
    image.write_bytes((root / "test_features" / "ZJ000008.jpg").read_bytes())
    second = load_features(root).fingerprint
    csv = root / "test_features.csv"
    csv.write_text(csv.read_text().replace(",x\n", ",y\n"))  # even a column predict ignores
    assert len({first, second, load_features(root).fingerprint}) == 3


def test_load_features_raises_one_data_error_with_every_problem(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "test_features.csv").write_text("id,filepath\na,x.jpg\na,y.jpg\n")
    with pytest.raises(DataError) as info:
        load_features(root)
    assert [p.line for p in info.value.problems] == [2, 3, 3]  # x missing; a repeated; y missing


# --- summaries and names ---------------------------------------------------------------------


def test_class_counts_and_least_confident_from_a_hand_made_frame():
    frame = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "cat": [0.9, 0.4, 0.2, 0.5], "dog": [0.1, 0.6, 0.8, 0.5]}
    )
    assert class_counts(frame).values.tolist() == [["cat", 2], ["dog", 2]]  # d: a tie -> cat
    lowest = least_confident(frame, n=2)
    assert lowest.values.tolist() == [["d", "cat", 0.5], ["b", "dog", 0.6]]


def test_prediction_names_keep_options_and_models_apart():
    assert prediction_name("f00d") == "f00d.csv"
    assert prediction_name("f00d", model_file="final_swin_t_model_part1_best.pth") == "f00d.csv"
    assert (
        prediction_name("f00d", "hflip", False, "final_swin_t_model_part1_best_logloss.pth")
        == "f00d-final_swin_t_model_part1_best_logloss-hflip-uncalibrated.csv"
    )


# --- the field's formats in and out (ena24_mini converted by tests/fixtures/formats.py) -------


@pytest.fixture(scope="module")
def card(tmp_path_factory, ena24_root) -> Path:
    """A memory card's folder: the ena24_mini photos in two nested folders, a hidden file the
    camera wrote, a note, and one photo that is cut short (a camera's failed write)."""
    root = tmp_path_factory.mktemp("card")
    for i, path in enumerate(sorted((ena24_root / "train_features").glob("*.jpg"))):
        target = root / f"DCIM/10{i % 2}CAMERA" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (root / "DCIM/.thumb.jpg").write_bytes(b"not a photo")
    (root / "notes.txt").write_text("site 4, May")
    broken = root / "DCIM/100CAMERA/broken.jpg"
    broken.write_bytes(next(root.glob("DCIM/100CAMERA/*.jpg")).read_bytes()[:300])
    return root


def test_a_cards_folder_to_megadetector_json_lists_the_broken_photo(model_file, card, tmp_path):
    out = tmp_path / "md.json"
    assert _predict(model_file, card, out, "--input", "folder", "--format", "megadetector") == 0
    images = read_megadetector(out)
    files = [i.file for i in images]
    readable = sorted(p.relative_to(card).as_posix() for p in card.rglob("ENA24_*.jpg"))
    assert files == [*readable, "DCIM/100CAMERA/broken.jpg"]  # sorted; the hidden file left out
    assert images[-1].failure and "broken.jpg" in images[-1].failure
    expected = reference_probs(model_file, card, filepaths=readable)
    expected = _softmax(np.log(expected) / TEMPERATURE)  # the model file's temperature
    for image, probs in zip(images, expected, strict=False):
        (det,) = image.detections
        top = np.argsort(-probs)[:5]
        assert [name for name, _ in det.classifications] == [SEED_CLASSES[i] for i in top]
        np.testing.assert_allclose([p for _, p in det.classifications], probs[top], atol=2e-6)
    # one photo has EXIF (ENA24_00049, a Reconyx's): a one-frame event of its folder
    folder = next(f for f in readable if "ENA24_00049" in f).rsplit("/", 1)[0]
    events = pd.read_csv(tmp_path / "md.events.csv", dtype=str)
    assert events[["event", "site", "frames"]].values.tolist() == [
        [f"{folder}@2016-03-24T10:30:12", folder, "1"]
    ]


def test_a_cards_bursts_are_events_from_exif_times(model_file, tmp_path):
    """Five photos of one folder: three 2 s apart (one burst), then two 5 min later."""
    from PIL import Image

    card = tmp_path / "card" / "100RECNX"
    card.mkdir(parents=True)
    stamps = ["10:00:00", "10:00:02", "10:00:04", "10:05:00", "10:05:02"]
    for i, stamp in enumerate(stamps):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = f"2024:05:01 {stamp}"
        Image.new("RGB", (40, 30), (40 * i, 90, 60)).save(card / f"IMG_{i:04d}.JPG",
                                                          exif=exif.tobytes())  # fmt: skip
    out = tmp_path / "p.csv"
    assert _predict(model_file, tmp_path / "card", out, "--input", "folder") == 0
    events = pd.read_csv(tmp_path / "p.events.csv", dtype={"frames": int})
    assert events[["event", "site", "frames", "start", "end"]].values.tolist() == [
        ["100RECNX@2024-05-01T10:00:00", "100RECNX", 3, "2024-05-01T10:00:00",
         "2024-05-01T10:00:04"],
        ["100RECNX@2024-05-01T10:05:00", "100RECNX", 2, "2024-05-01T10:05:00",
         "2024-05-01T10:05:02"],
    ]  # fmt: skip
    burst = pd.read_csv(out).loc[:2, list(SEED_CLASSES)].mean().to_numpy()  # the mean rule
    np.testing.assert_allclose(events.loc[0, list(SEED_CLASSES)].to_numpy(float), burst, atol=1e-12)


def test_auto_labels_every_image_when_there_is_no_features_csv(model_file, card, tmp_path):
    out = tmp_path / "p.csv"
    assert _predict(model_file, card, out) == 0
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame["id"].tolist()[-1] == "DCIM/100CAMERA/broken.jpg"
    assert frame["failure"].tolist().count("") == len(frame) - 1


def test_a_coco_file_gives_csv_with_events_per_sequence(model_file, ena24_root, tmp_path):
    root = to_coco(ena24_root, tmp_path / "coco", name="cct.json")
    out = tmp_path / "p.csv"
    assert _predict(model_file, root, out, "--input", "coco", "--annotations", "cct.json",
                    "--event-rule", "max-animal") == 0  # fmt: skip
    frame = pd.read_csv(out, dtype={"id": str})
    doc = json.loads((root / "cct.json").read_text())
    assert frame["id"].tolist() == [str(image["id"]) for image in doc["images"]]
    events = pd.read_csv(tmp_path / "p.events.csv", dtype={"event": str})
    seq = pd.Series({str(i["id"]): i["seq_id"] for i in doc["images"]})
    assert sorted(events["event"]) == sorted(seq.unique())
    assert events["frames"].sum() == len(frame)
    # max-animal on classes without a blank one: the most confident frame of the event
    first = events.iloc[0]
    frames = frame[frame["id"].map(seq) == first["event"]][list(SEED_CLASSES)].to_numpy()
    best = frames[frames.max(axis=1).argmax()]
    np.testing.assert_allclose(first[list(SEED_CLASSES)].to_numpy(float), best, atol=1e-12)


def test_a_camtrap_dp_package_gets_machine_observations(model_file, ena24_root, tmp_path):
    from camtrap.dataset.camtrapdp import resource_paths
    from camtrap.dataset.dpschema import schema_problems

    root = to_camtrap_dp(ena24_root, tmp_path / "package")
    out = tmp_path / "labelled"
    assert _predict(model_file, root, out, "--format", "camtrap-dp") == 0  # auto: the package
    assert schema_problems(out, resource_paths(out, [])) == []
    with (out / "observations.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    machine = [r for r in rows if r["classificationMethod"] == "machine"]
    media = [r for r in machine if r["observationLevel"] == "media"]
    assert len(media) == 21
    assert {r["classifiedBy"].split()[:2][1] for r in machine} == {"0.1.0"}
    sha = __import__("hashlib").sha256(model_file.read_bytes()).hexdigest()[:12]
    assert machine[0]["classifiedBy"] == f"camtrap 0.1.0 {sha}"
    assert {r["observationLevel"] for r in machine} == {"media", "event"}  # events: eventIDs


def test_camtrap_dp_output_from_a_folder_is_refused_before_any_work(model_file, card, tmp_path):
    out = tmp_path / "pkg"
    assert _predict(model_file, card, out, "--input", "folder", "--format", "camtrap-dp") == 2
    assert not out.exists()


def test_prediction_names_follow_the_format():
    assert prediction_name("f00d", fmt="megadetector") == "f00d.json"
    assert prediction_name("f00d", "hflip", fmt="camtrap-dp") == "f00d-hflip-camtrap-dp"


def test_event_settings_come_from_the_options_else_the_models_run_else_defaults():
    from camtrap.config import PredictOptions
    from camtrap.predict import event_settings

    meta = ModelMeta("resnet18", list(SEED_CLASSES), 32, MEAN, STD, epoch=3)
    assert event_settings(PredictOptions(), meta) == (60.0, "mean")
    meta.config = {"predict": {"event_gap_s": 5.0, "event_rule": "max-animal"}}
    assert event_settings(PredictOptions(), meta) == (5.0, "max-animal")
    assert event_settings(PredictOptions(event_gap_s=1.5), meta) == (1.5, "max-animal")


def test_bad_input_in_any_format_is_exit_2_with_every_problem_and_nothing_written(
    model_file, ena24_root, tmp_path, capsys
):
    root = to_coco(ena24_root, tmp_path / "coco", name="cct.json")
    doc = json.loads((root / "cct.json").read_text())
    doc["images"][0]["file_name"] = "../outside.jpg"
    doc["images"][1]["id"] = doc["images"][2]["id"]
    (root / "cct.json").write_text(json.dumps(doc))
    out = tmp_path / "md.json"
    args = ["--input", "coco", "--annotations", "cct.json", "--format", "megadetector"]
    assert _predict(model_file, root, out, *args) == 2
    err = capsys.readouterr().err
    assert "cct.json" in err and "leads outside the data root" in err and "is repeated" in err
    assert not out.exists()

    package = to_camtrap_dp(ena24_root, tmp_path / "package")
    media = (package / "media.csv").read_text().splitlines()
    (package / "media.csv").write_text("\n".join([media[0], media[1].replace("image/jpeg", ""),
                                                  *media[2:]]) + "\n")  # fmt: skip
    out = tmp_path / "labelled"
    assert _predict(model_file, package, out, "--format", "camtrap-dp") == 2
    assert "media.csv, line 2" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_taxonomy_is_refused_before_any_photo_is_read(model_file, card, tmp_path, capsys):
    taxa = tmp_path / "taxa.csv"
    taxa.write_text("name,latin\nfox,Vulpes vulpes\n")
    out = tmp_path / "md.json"
    assert _predict(model_file, card, out, "--input", "folder", "--taxonomy", str(taxa)) == 2
    assert "has no column 'class'" in capsys.readouterr().err
    assert not out.exists()
    # a --data that is not there at all: the taxonomy is still what is reported, so it was
    # checked before anything tried to list or read a photo
    args = ["--input", "folder", "--taxonomy", str(taxa)]
    assert _predict(model_file, tmp_path / "nowhere", out, *args) == 2
    assert "has no column 'class'" in capsys.readouterr().err


def test_a_coco_files_photos_become_a_new_camtrap_dp_package(
    model_file, ena24_root, tmp_path, capsys
):
    from camtrap.config import DataConfig
    from camtrap.dataset import load_data
    from camtrap.dataset.camtrapdp import resource_paths
    from camtrap.dataset.dpschema import descriptor_problems, schema_problems

    root = to_coco(ena24_root, tmp_path / "coco", name="cct.json")
    deployments = tmp_path / "deployments.csv"
    deployments.write_text("deploymentID,latitude,longitude,locationName\nCAM1,40.1,-76.2,ridge\n")
    out = tmp_path / "package"
    args = ["--input", "coco", "--annotations", "cct.json", "--format", "camtrap-dp"]
    assert _predict(model_file, root, out, *args) == 2  # no deployments: says how to give them
    assert "--deployments deployments.csv" in capsys.readouterr().err
    args += ["--deployments", str(deployments)]
    assert _predict(model_file, root, out, *args) == 2  # COCO's datetime has no offset
    assert "--utc-offset" in capsys.readouterr().err and not out.exists()
    assert _predict(model_file, root, out, *args, "--utc-offset=-05:00") == 0  # "=": a minus

    descriptor = json.loads((out / "datapackage.json").read_text())
    assert descriptor_problems(descriptor) == []
    assert schema_problems(out, resource_paths(out, [])) == []
    assert descriptor["spatial"] == {"type": "Point", "coordinates": [-76.2, 40.1]}
    with (out / "deployments.csv").open(newline="") as fh:
        (deployment,) = list(csv.DictReader(fh))
    assert deployment["locationName"] == "ridge"  # the user's columns kept
    assert deployment["deploymentStart"].endswith("-05:00")
    data = load_data(out, DataConfig(format="camtrap-dp"))  # reads back: the machine's labels
    assert len(data.frame) == 21 and (out / data.frame["filepath"].iloc[0]).is_file()
    assert set(data.classes) <= set(SEED_CLASSES)


# --- --out: never an input, inside --data only on purpose, checked before any work ----------


@pytest.fixture
def data_copy(photos, tmp_path) -> Path:
    """A copy of the photos a test may damage (the module's `photos` are shared)."""
    return shutil.copytree(photos, tmp_path / "data")


def _one_line_error(capsys) -> str:
    """The one `error:` line on stderr (log lines may come before it), with its fix."""
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and "— fix: " in line, err
    return line


def test_an_out_that_is_an_input_is_refused_and_the_input_kept(
    model_file, data_copy, tmp_path, capsys
):
    features = data_copy / "test_features.csv"
    before = features.read_bytes()
    assert _predict(model_file, data_copy, features) == 2
    err = _one_line_error(capsys)
    assert f"--out {features} would overwrite the features CSV, an input of this predict" in err
    assert features.read_bytes() == before
    model = Path(shutil.copy(model_file, tmp_path / "model.pth"))
    assert _predict(model, data_copy, model, "--out-inside-data") == 2
    assert "would overwrite the model file" in _one_line_error(capsys)
    assert model.read_bytes() == model_file.read_bytes()
    image = data_copy / "test_features" / "ZJ000001.jpg"
    assert _predict(model_file, data_copy, image, "--out-inside-data") == 2
    assert "would overwrite an image" in _one_line_error(capsys)


def test_an_out_inside_the_data_folder_needs_out_inside_data(model_file, data_copy, capsys):
    out = data_copy / "predictions" / "p.csv"
    assert _predict(model_file, data_copy, out) == 2
    err = _one_line_error(capsys)
    assert f"--out {out} is inside the data folder {data_copy}" in err
    assert "--out-inside-data" in err and not out.exists()
    assert _predict(model_file, data_copy, out, "--out-inside-data") == 0
    assert len(_read(out)) == 32


def test_an_out_ending_in_a_slash_is_the_folder_the_output_goes_into(
    model_file, photos, tmp_path, capsys
):
    folder = tmp_path / "results"
    assert _predict(model_file, photos, f"{folder}/") == 0
    assert len(_read(folder / "predictions.csv")) == 32
    assert f"{folder / 'predictions.csv'}: 32 rows" in capsys.readouterr().out
    assert _predict(model_file, photos, f"{folder}/", "--format", "megadetector") == 0
    assert len(json.loads((folder / "predictions.json").read_text())["images"]) == 32
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.csv", "predictions.json"]


def test_an_out_that_cannot_be_written_fails_before_anything_is_read(model_file, tmp_path, capsys):
    (tmp_path / "results").write_text("a file where a folder is meant")
    out = tmp_path / "results" / "p.csv"
    # --data is not there at all: the --out problem is reported, so it was checked first
    assert _predict(model_file, tmp_path / "nowhere", out) == 2
    err = _one_line_error(capsys)
    assert f"--out {out} cannot be written: {tmp_path / 'results'} is a file, not a folder" in err


# --- the model file is checked, and so are its probabilities ----------------------------------


def _edited(model_file: Path, tmp_path: Path, **changes) -> Path:
    blob = torch.load(model_file, weights_only=True)
    path = tmp_path / "edited" / model_file.name
    path.parent.mkdir(exist_ok=True)
    torch.save({**blob, **changes}, path)
    return path


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"temperature": float("nan")}, "temperature must be a positive finite number (got nan)"),
        ({"classes": ["id", *SEED_CLASSES[1:]]}, "classes: 'id' is a column name the outputs use"),
        ({"image_size": 0}, "image_size must be a whole number from 16 to 1024 (got 0)"),
        ({"classes": list(SEED_CLASSES[:3])}, "its weights are not a resnet18 with 3 classes"),
    ],
)
def test_a_bad_model_file_is_exit_2_in_one_line_and_nothing_written(
    model_file, photos, tmp_path, capsys, changes, says
):
    edited = _edited(model_file, tmp_path, **changes)
    out = tmp_path / "p.csv"
    assert _predict(edited, photos, out) == 2
    err = _one_line_error(capsys)
    assert f"error: model file {edited}: " in err and says in err and len(err) < 500
    assert not out.exists()


def test_weights_that_give_no_numbers_are_refused_not_written(model_file, photos, tmp_path, capsys):
    blob = torch.load(model_file, weights_only=True)
    weights = {**blob["model"], "fc.bias": torch.full_like(blob["model"]["fc.bias"], float("nan"))}
    edited = _edited(model_file, tmp_path, model=weights)
    out = tmp_path / "p.csv"
    assert _predict(edited, photos, out) == 2
    err = _one_line_error(capsys)
    assert f"model file {edited} gives probabilities that are not numbers" in err
    assert "for 32 of 32 photos" in err and not out.exists()
