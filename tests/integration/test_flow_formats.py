"""The train-swin flow on each format a user keeps photos in (COCO Camera Traps, Camtrap DP,
class folders: ena24_mini converted by tests/fixtures/formats.py), from moto's S3 over real
HTTP: fetched, validated, trained, the same 21 photos and classes as from the Conser-vision
CSVs; a second run on unchanged data is served from the caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures.formats import to_camtrap_dp, to_coco, to_folders

from camtrap import storage
from flows.predict_swin import predict_swin
from flows.train_swin import train_swin

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

CONVERTERS = {"coco": to_coco, "camtrap-dp": to_camtrap_dp, "folders": to_folders}
ENA24_CLASSES = [
    "american_black_bear", "american_crow", "chicken", "eastern_fox_squirrel", "grey_fox",
    "striped_skunk", "virginia_opossum",
]  # fmt: skip


@pytest.mark.parametrize("fmt", list(CONVERTERS))
def test_the_flow_trains_on_each_format_from_s3(
    fmt, ena24_root, s3_server, tmp_path, cache_dir, tiny, read_run
):
    local = CONVERTERS[fmt](ena24_root, tmp_path / fmt)
    data_uri = s3_server.upload_tree(local, s3_server.new_bucket("data"), "photos")
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    config = {**tiny, "train.epochs": 1, "data.split": "stratified"}  # ena24_mini: one site
    state = train_swin(data_uri, output_uri, "smoke", config, return_state=True)
    assert state.is_completed(), state.message
    info = json.loads(storage.read_text(f"{state.result()}/run.json"))
    assert info["classes"] == ENA24_CLASSES
    assert info["counts"] == {"train": 15, "val": 6}
    assert info["config"]["data"]["format"] == "auto"
    # COCO seq_id and Camtrap DP eventID: val per event too (class folders have no events)
    has_events = fmt != "folders"
    assert storage.exists(f"{state.result()}/metrics/events.csv") == has_events
    assert [r["rule"] for r in info.get("events", [])] == (["mean", "max-animal"] * has_events)

    again = train_swin(data_uri, output_uri, "smoke", config, return_state=True)
    assert again.result() == state.result()
    tasks = read_run(again.state_details.flow_run_id).tasks
    assert tasks["fetch-metadata"] == ["Cached"] and tasks["fetch-images"] == ["Cached"]


def test_the_flows_train_and_predict_on_every_megadetector_box_from_s3(
    ena24_root, s3_server, tmp_path, cache_dir, tiny, read_run
):
    """ena24_mini with its real MegaDetector v5 output on S3, one photo given a second box:
    fetch-detections brings the file (Cached while its ETag stays, fetched again and a new run
    when it changes), the run trains on every box, and predict-swin labels each box."""
    root = Path(shutil.copytree(ena24_root, tmp_path / "ena24"))
    md = "annotations/megadetector.json"
    doc = json.loads((root / md).read_text())
    two = doc["images"][0]
    two["detections"].append({"category": "1", "conf": 0.5, "bbox": [0.0, 0.5, 0.3, 0.5]})
    (root / md).write_text(json.dumps(doc))
    features = (root / "train_features.csv").read_text()
    (root / "test_features.csv").write_text(features)
    bucket = s3_server.new_bucket("data")
    data_uri = s3_server.upload_tree(root, bucket, "ena24")
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    config = {**tiny, "train.epochs": 1, "data.split": "stratified",
              "data.detections": md, "data.crop": "all"}  # fmt: skip
    state = train_swin(data_uri, output_uri, "smoke", config, return_state=True)
    assert state.is_completed(), state.message
    assert read_run(state.state_details.flow_run_id).tasks["fetch-detections"] == ["Completed"]
    split = storage.read_text(f"{state.result()}/split.csv").splitlines()
    assert split[0].endswith(",crop_boxes") and len(split) == 22  # a row per image
    info = json.loads(storage.read_text(f"{state.result()}/run.json"))
    assert info["config"]["data"]["crop"] == "all"
    again = train_swin(data_uri, output_uri, "smoke", config, return_state=True)
    tasks = read_run(again.state_details.flow_run_id).tasks
    assert tasks["fetch-detections"] == ["Cached"] and again.result() == state.result()

    predicted = predict_swin(data_uri, output_uri, stage="smoke", format="megadetector",
                             detections=md, return_state=True)  # fmt: skip
    assert predicted.is_completed(), predicted.message
    assert "fetch-detections" in read_run(predicted.state_details.flow_run_id).tasks
    (image,) = [i for i in json.loads(storage.read_text(predicted.result()))["images"]
                if i["file"] == two["file"]]  # fmt: skip
    assert [d["bbox"] for d in image["detections"]] == [[0.35, 0.35, 0.3, 0.3],
                                                        [0.0, 0.5, 0.3, 0.5]]  # fmt: skip

    two["detections"].pop()  # the detections change on S3: new data, a new run
    storage.write_text(f"{data_uri}/{md}", json.dumps(doc))
    changed = train_swin(data_uri, output_uri, "smoke", config, return_state=True)
    assert changed.is_completed(), changed.message
    assert read_run(changed.state_details.flow_run_id).tasks["fetch-detections"] == ["Completed"]
    assert changed.result() != state.result()
