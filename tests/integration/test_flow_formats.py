"""The train-swin flow on each format a user keeps photos in (COCO Camera Traps, Camtrap DP,
class folders: ena24_mini converted by tests/fixtures/formats.py), from moto's S3 over real
HTTP: fetched, validated, trained, the same 21 photos and classes as from the Conser-vision
CSVs; a second run on unchanged data is served from the caches."""

from __future__ import annotations

import json

import pytest
from fixtures.formats import to_camtrap_dp, to_coco, to_folders

from camtrap import storage
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


def test_the_flow_trains_on_megadetector_crops_from_s3(
    ena24_root, s3_server, cache_dir, tiny, read_run
):
    """ena24_mini with its real MegaDetector v5 output (annotations/megadetector.json) on S3:
    the detections are fetched with the CSVs, and the run trains on each image's best box."""
    data_uri = s3_server.upload_tree(ena24_root, s3_server.new_bucket("data"), "ena24")
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    config = {**tiny, "train.epochs": 1, "data.split": "stratified",
              "data.detections": "annotations/megadetector.json", "data.crop": "best"}  # fmt: skip
    state = train_swin(data_uri, output_uri, "smoke", config, return_state=True)
    assert state.is_completed(), state.message
    split = storage.read_text(f"{state.result()}/split.csv").splitlines()
    assert split[0].endswith("crop_x,crop_y,crop_w,crop_h")
    info = json.loads(storage.read_text(f"{state.result()}/run.json"))
    assert info["config"]["data"]["crop"] == "best"
    again = train_swin(data_uri, output_uri, "smoke", config, return_state=True)
    assert read_run(again.state_details.flow_run_id).tasks["fetch-metadata"] == ["Cached"]
