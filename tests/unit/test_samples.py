"""Samples (camtrap.samples): an image, its best box or each of its boxes; an image's
probabilities from its boxes' (the most confident non-blank one), checked by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from camtrap.engine import EpochOutputs
from camtrap.samples import cache_entries, image_outputs, image_probabilities, sample_table

CLASSES = ["blank", "bird", "hog"]


def _images() -> pd.DataFrame:
    return pd.DataFrame({
        "id": ["a", "b", "c"],
        "sha256": ["1" * 64, "2" * 64, "3" * 64],
        "crop_boxes": ["0.1 0.1 0.2 0.2;0.5 0.5 0.3 0.3", "", "0.0 0.0 1.0 0.5"],
    })  # fmt: skip


def test_each_box_is_a_sample_and_an_image_without_one_its_whole_frame():
    table = sample_table(_images())
    assert table["sample"].tolist() == ["a#0", "a#1", "b", "c"]
    assert table["image"].tolist() == [0, 0, 1, 2]
    assert table["box"].tolist() == [(0.1, 0.1, 0.2, 0.2), (0.5, 0.5, 0.3, 0.3), None,
                                     (0.0, 0.0, 1.0, 0.5)]  # fmt: skip
    entries = cache_entries(table, ["A", "A", "B", "C"], margin=0.15)
    assert [e.id for e in entries] == ["a#0", "a#1", "b", "c"]
    assert entries[2].sha256 == "2" * 64 and entries[2].crop is None  # the frame: its own key
    assert len({e.sha256 for e in entries}) == 4  # two boxes of one image: two cache rows
    assert entries[0].crop == (0.1, 0.1, 0.2, 0.2, 0.15)


def test_best_and_whole_frames_are_one_sample_per_image_with_its_own_id():
    images = pd.DataFrame({"id": ["a", "b"], "crop_x": ["0.1", ""], "crop_y": ["0.2", ""],
                           "crop_w": ["0.3", ""], "crop_h": ["0.4", ""]})  # fmt: skip
    table = sample_table(images)
    assert table["sample"].tolist() == ["a", "b"]
    assert table["box"].tolist() == [(0.1, 0.2, 0.3, 0.4), None]


def test_an_image_is_its_most_confident_non_blank_box_blank_only_when_every_box_is():
    probs = np.array([
        [0.2, 0.5, 0.3],  # a#0: bird 0.5
        [0.1, 0.1, 0.8],  # a#1: hog 0.8 -> a
        [0.9, 0.05, 0.05],  # b#0: blank
        [0.6, 0.3, 0.1],  # b#1: blank, less sure -> b is b#0
        [0.3, 0.4, 0.3],  # c, one sample: itself
    ])  # fmt: skip
    image = np.array([0, 0, 1, 1, 2])
    expected = np.array([[0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.3, 0.4, 0.3]])
    np.testing.assert_array_equal(image_probabilities(probs, image, CLASSES), expected)
    out = EpochOutputs(np.array([2, 2, 0, 0, 1]), probs.astype(np.float32), 9.9, 2.0)
    folded = image_outputs(out, image, CLASSES)
    assert folded.targets.tolist() == [2, 0, 1]
    assert folded.loss == pytest.approx(-(np.log(0.8) + np.log(0.9) + np.log(0.4)) / 3, rel=1e-6)
    assert folded.images_per_second == pytest.approx(1.5)  # 3 images in 2 s


def test_one_sample_per_image_is_left_as_it_is():
    probs = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]], dtype=np.float32)
    out = EpochOutputs(np.array([1, 2]), probs, 0.7, 1.0)
    assert image_outputs(out, np.array([4, 7]), CLASSES) is out  # val rows of a larger split
    assert image_probabilities(probs, np.array([0, 1]), CLASSES) is probs


@pytest.mark.slow
def test_ena24_mini_trains_on_every_box_and_is_measured_and_predicted_per_image(
    tmp_path, ena24_root, tiny_config
):
    """data.crop=all on the real photos, two of them given a second box: training sees each
    box, val and predict answer per photo (its most confident non-blank box), and the
    MegaDetector output gives each box its own classification."""
    from camtrap import imagecache, stages
    from camtrap.cli import main
    from camtrap.models import load_model

    root = Path(shutil.copytree(ena24_root, tmp_path / "ena24"))
    md = "annotations/megadetector.json"
    doc = json.loads((root / md).read_text())
    for image in doc["images"][:2]:
        image["detections"].append({"category": "1", "conf": 0.5, "bbox": [0.0, 0.5, 0.3, 0.5]})
    (root / md).write_text(json.dumps(doc))
    config = tiny_config(**{"train.epochs": 1, "data.split": "stratified",
                            "data.detections": md, "data.crop": "all"})  # fmt: skip
    summary = stages.run_all(config, root, tmp_path / "runs")
    run = summary.run_dir
    split = pd.read_csv(run / "split.csv", dtype=str, keep_default_na=False)
    assert len(split) == 21 and (split["crop_boxes"].str.count(";") == 1).sum() == 2
    info = json.loads((run / "run.json").read_text())
    two_box_train = int(((split["crop_boxes"].str.count(";") == 1) & (split["split"] == "train"))
                        .sum())  # fmt: skip
    assert sum(info["balance"]["train_counts"].values()) == info["counts"]["train"] + two_box_train
    assert info["crops"]["train"]["samples"] == info["counts"]["train"] + two_box_train
    assert info["crops"]["val"]["samples"] == info["counts"]["val"] + 2 - two_box_train
    val = pd.read_csv(run / "predictions" / "val.csv", dtype={"id": str})
    assert val["id"].tolist() == split.loc[split["split"] == "val", "id"].tolist()  # per image
    epochs = pd.read_csv(run / "metrics" / "epochs.csv")
    val_accuracy = epochs.loc[epochs["split"] == "val", "accuracy"].iloc[-1]
    picked = val[info["classes"]].to_numpy().argmax(axis=1)
    labels = val["label"].map({c: i for i, c in enumerate(info["classes"])}).to_numpy()
    assert val_accuracy == pytest.approx((picked == labels).mean())  # the epoch's is per image

    features = pd.read_csv(root / "train_features.csv", dtype=str)
    features.to_csv(root / "test_features.csv", index=False)
    out = tmp_path / "md.json"
    args = ["predict", "--model", str(run), "--data", str(root), "--detections", md,
            "--no-calibration"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "p.csv")]) == 0
    assert main([*args, "--out", str(out), "--format", "megadetector"]) == 0
    model, meta = load_model(next(run.glob("*_best.pth")))
    two = doc["images"][0]["file"]
    boxes = [tuple(d["bbox"]) for d in sorted(doc["images"][0]["detections"],
                                              key=lambda d: -d["conf"])]  # fmt: skip
    pixels = np.stack([imagecache.decode_resized(root / two, 32, crop=(*b, 0.15)) for b in boxes])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        per_box = torch.softmax(model(x).double(), dim=1).numpy()
    (image,) = [i for i in json.loads(out.read_text())["images"] if i["file"] == two]
    assert [d["bbox"] for d in image["detections"]] == [list(b) for b in boxes]
    for detection, probs in zip(image["detections"], per_box, strict=True):
        top = [int(c) for c, _ in detection["classifications"]]
        assert top == np.argsort(-probs, kind="stable")[:5].tolist()
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"id": str}).set_index("id")
    photo_id = features.set_index("filepath").loc[two, "id"]
    expected = image_probabilities(per_box, np.array([0, 0]), list(meta.classes))[0]
    np.testing.assert_allclose(predicted.loc[photo_id, meta.classes].to_numpy(float), expected,
                               atol=1e-5)  # fmt: skip
