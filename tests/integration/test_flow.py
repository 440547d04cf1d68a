"""The tasks and the flow, run in this process against moto's S3 server (real HTTP) and a real
Prefect server: outputs, artifacts, caching, resume on another machine, retries and errors."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow

from camtrap import imagecache, storage
from camtrap.config import build_config
from camtrap.errors import ConfigError, DataError, StorageError
from camtrap.runfolder import RunFiles
from camtrap.storage import mirror as storage_mirror
from camtrap.storage import uris as storage_uris
from flows.train_swin import train_swin
from tasks import training
from tasks.data import (
    cache_images,
    fetch_images,
    fetch_metadata,
    mirror_uri,
    validate_and_split,
)
from tasks.refs import RunRef, TrainSummary
from tasks.runs import release_lease

# Every test here starts Prefect's server, and most train.
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

# Every file of a finished run folder (the layout's one owner is camtrap.runfolder.RunFiles).
LAYOUT = RunFiles(Path(), "mobilenet_v3_small", "smoke").finished_layout()
DATA_TASKS = ("fetch-metadata", "fetch-images", "validate-and-split")


def _run_files(s3_server, run_uri: str) -> list[str]:
    bucket, key = storage_uris.split_s3(run_uri)
    return sorted(k.removeprefix(key + "/") for k in s3_server.keys(bucket, key + "/"))


def _no_secrets(texts: list[str], s3_server) -> None:
    port = s3_server.endpoint.rsplit(":", 1)[1]
    for text in texts:
        assert s3_server.endpoint not in text
        assert f"127.0.0.1:{port}" not in text
        assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in text
        assert s3_server.env["AWS_ACCESS_KEY_ID"] not in text


def test_flow_on_s3_writes_the_layout_and_artifacts_hits_the_cache_then_fetches_a_changed_image(
    s3_server, demo_uri, cache_dir, tiny, read_run
):
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    state = train_swin(demo_uri, output_uri, "smoke", tiny, return_state=True)
    assert state.is_completed(), state.message
    run_uri = state.result()
    run_id = run_uri.rsplit("/", 1)[1]
    assert run_uri == f"{output_uri}/smoke/{run_id}" and run_id.startswith("smoke-")
    assert _run_files(s3_server, run_uri) == LAYOUT

    info = json.loads(storage.read_text(f"{run_uri}/run.json"))
    assert info["status"] == "completed" and info["run_id"] == run_id
    assert sorted(info["files"]) == [f for f in LAYOUT if f != "run.json"]
    assert 1 <= info["best_epoch"] <= 2
    assert set(info["val"]) >= {"accuracy", "log_loss", "loss", "top3_accuracy"}
    epochs = pd.read_csv(io.BytesIO(storage.read_bytes(f"{run_uri}/metrics/epochs.csv")))
    assert sorted(epochs["epoch"].unique()) == [1, 2]

    record = read_run(state.state_details.flow_run_id)
    assert record.state == "Completed"
    assert record.name == run_id  # the UI and the output folder agree
    assert record.tasks == {
        "fetch-metadata": ["Completed"],
        "fetch-images": ["Completed"],
        "validate-and-split": ["Completed"],
        "run-status": ["Completed"],
        "cache-images": ["Completed"],
        "train": ["Completed"],
        "evaluate": ["Completed"],
        "publish": ["Completed"],
    }
    by_key: dict[str, list] = {}
    for artifact in record.artifacts:  # keys stable per stage: train-swin-smoke-...
        by_key.setdefault(artifact.key.removeprefix("train-swin-smoke-"), []).append(artifact)
    # One card per key, updated in place every epoch (not 1 + 2 per epoch + 4)
    assert {key: len(found) for key, found in by_key.items()} == dict.fromkeys(
        ("progress", "epochs", "per-class", "summary", "plots", "history", "run-folder",
         "best-model", "epochs-csv", "plots-folder"), 1
    ), sorted(by_key)  # fmt: skip
    assert [a.data for a in by_key["progress"]] == [100.0]
    epoch_rows = json.loads(by_key["epochs"][0].data)
    assert [row["epoch"] for row in epoch_rows] == [1, 2]
    assert {"train_accuracy", "val_accuracy", "val_log_loss"} <= set(epoch_rows[0])
    per_class = json.loads(by_key["per-class"][0].data)
    assert len(per_class) == 8 and {"class", "precision", "recall", "f1"} <= set(per_class[0])
    (history,) = json.loads(by_key["history"][0].data)  # the only run in this output_uri
    assert (history["run_id"], history["run_uri"]) == (run_id, run_uri)
    assert history["val_accuracy"] == round(info["val"]["accuracy"], 4)
    best_model = f"{run_uri}/final_mobilenet_v3_small_model_smoke_best.pth"
    assert by_key["best-model"][0].data == f"[{best_model}]({best_model})"
    summary = by_key["summary"][0].data
    assert f"best epoch: **{info['best_epoch']}**" in summary
    assert "Generalisation gap" in summary
    assert f"{run_uri}/final_mobilenet_v3_small_model_smoke_best.pth" in summary
    logloss_best = "| `final_mobilenet_v3_small_model_smoke_best_logloss.pth` | val_log_loss | "
    assert f"{logloss_best}{info['best_logloss_epoch']} |" in summary
    for section in ("## Calibration on val", "## Test-time augmentation", "## Val by site"):
        assert section in summary
    plots = by_key["plots"][0].data
    assert plots.count("data:image/png;base64,") == 6
    assert any("memory epoch 1 end" in line for line in record.logs)
    assert any(line.startswith("Epoch 2/2 |") for line in record.logs)
    _no_secrets(
        [storage.read_text(f"{run_uri}/run.json"), *[str(a.data) for a in record.artifacts]]
        + record.logs,
        s3_server,
    )

    # Unchanged data: the data tasks are Cached and the finished run is reported up to date.
    again = train_swin(demo_uri, output_uri, "smoke", tiny, return_state=True)
    assert again.is_completed() and again.result() == run_uri
    second = read_run(again.state_details.flow_run_id)
    for name in DATA_TASKS:
        assert second.tasks[name] == ["Cached"], second.tasks
    assert "train" not in second.tasks and second.tasks["report-up-to-date"] == ["Completed"]
    assert _run_files(s3_server, run_uri) == LAYOUT

    # One image changed: only it is fetched again, and it is new data, so a new run.
    bucket, prefix = storage_uris.split_s3(demo_uri)
    images = s3_server.keys(bucket, prefix + "/train_features/")
    body = s3_server.client().get_object(Bucket=bucket, Key=images[1])["Body"].read()
    s3_server.client().put_object(Bucket=bucket, Key=images[0], Body=body)
    changed = train_swin(demo_uri, output_uri, "smoke", tiny, return_state=True)
    assert changed.is_completed(), changed.message
    third = read_run(changed.state_details.flow_run_id)
    assert third.tasks["fetch-metadata"] == ["Cached"]
    assert third.tasks["fetch-images"] == ["Completed"]
    assert third.tasks["validate-and-split"] == ["Completed"]
    assert any("1 downloaded, 31 unchanged" in line for line in third.logs), third.logs
    assert changed.result() != run_uri  # new data: a new run folder
    assert third.tasks["train"] == ["Completed"]


def test_a_train_retry_on_another_machine_resumes_from_output_uri(
    s3_server, demo_uri, tmp_path, monkeypatch, tiny
):
    config = build_config("smoke", overrides={**tiny, "train.epochs": 3})
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"

    @flow
    def prepare_and_train(retries: int) -> tuple[RunRef, object]:
        snapshot = fetch_images(fetch_metadata(demo_uri, config.data), config.data)
        run = validate_and_split(snapshot, config, output_uri)
        state = training.train.with_options(retries=retries)(
            config, snapshot, run, return_state=True
        )
        return run, state

    publish_epoch = training.EpochPublisher.__call__

    def crash_after_epoch_1(self, record) -> None:
        publish_epoch(self, record)
        if record.epoch == 1:
            raise RuntimeError("the machine died after epoch 1")

    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "machine-a"))
    monkeypatch.setattr(training.EpochPublisher, "__call__", crash_after_epoch_1)
    run, state = prepare_and_train(retries=0)
    assert state.is_failed()
    saved = storage.list_files(run.run_uri)
    assert "state/last.pt" in saved
    assert "final_mobilenet_v3_small_model_smoke.pth" not in saved

    monkeypatch.setattr(training.EpochPublisher, "__call__", publish_epoch)
    shutil.rmtree(tmp_path / "machine-a")
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "machine-b"))
    run_b, state = prepare_and_train(retries=0)
    assert run_b == run.model_copy(update={"local_dir": run_b.local_dir})
    summary = state.result()
    assert isinstance(summary, TrainSummary)
    assert (summary.resumed_from, summary.epochs_run) == (1, 2)
    epochs = pd.read_csv(io.BytesIO(storage.read_bytes(f"{run.run_uri}/metrics/epochs.csv")))
    assert sorted(epochs["epoch"].unique()) == [1, 2, 3]


def test_bad_data_fails_at_validation_without_retries(
    s3_server, demo_dir, tmp_path, cache_dir, tiny, read_run
):
    broken = shutil.copytree(demo_dir, tmp_path / "broken")
    features = pd.read_csv(broken / "train_features.csv")
    (broken / features["filepath"][3]).unlink()
    data_uri = s3_server.upload_tree(broken, s3_server.new_bucket("data"), "train")
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"

    state = train_swin(data_uri, output_uri, "smoke", tiny, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataError) as info:
        state.result()
    assert "train_features.csv, line 5" in str(info.value)
    record = read_run(state.state_details.flow_run_id)
    assert record.tasks["validate-and-split"] == ["Failed"]
    assert record.run_counts["validate-and-split"] == 1  # bad data is not retried
    assert "train" not in record.tasks
    assert s3_server.keys(storage_uris.split_s3(output_uri)[0]) == []


def test_a_wrong_bucket_fails_fast_naming_the_uri_not_the_endpoint(
    s3_server, cache_dir, tiny, read_run
):
    state = train_swin("s3://no-such-bucket-camtrap/train", "s3://x-out/runs", "smoke", tiny,
                       return_state=True)  # fmt: skip
    assert state.is_failed()
    assert "s3://no-such-bucket-camtrap/train" in state.message and "fix:" in state.message
    record = read_run(state.state_details.flow_run_id)
    assert record.run_counts["fetch-metadata"] == 1
    _no_secrets([state.message, *record.logs], s3_server)


def test_an_invalid_override_fails_before_any_task(s3_server, demo_uri, cache_dir, read_run):
    state = train_swin(demo_uri, "s3://x/runs", "smoke", {"train.epochs": 0}, return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="train.epochs"):
        state.result()
    assert read_run(state.state_details.flow_run_id).tasks == {}


def test_a_storage_error_is_retried_and_a_deleted_run_folder_is_started_again(
    s3_server, demo_uri, cache_dir, tiny, read_run, monkeypatch
):
    """Two subjects, one first run (each flow run here costs about 12 CPU-seconds)."""
    fetch_files = storage_mirror.fetch_files
    calls = []

    def fail_once(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise StorageError(f"cannot read {args[0]}: ReadTimeoutError after 3 tries")
        return fetch_files(*args, **kwargs)

    monkeypatch.setattr(storage_mirror, "fetch_files", fail_once)
    out_bucket = s3_server.new_bucket("runs")
    output_uri = f"s3://{out_bucket}/runs"
    first = train_swin(demo_uri, output_uri, "smoke", tiny, return_state=True)
    assert first.is_completed(), first.message
    record = read_run(first.state_details.flow_run_id)
    assert record.run_counts["fetch-metadata"] == 2  # the storage error was retried
    assert record.tasks["fetch-metadata"] == ["Completed"]
    monkeypatch.setattr(storage_mirror, "fetch_files", fetch_files)

    # The run folder deleted: the data tasks' cache still says done; the run starts again.
    client = s3_server.client()
    for key in s3_server.keys(out_bucket):
        client.delete_object(Bucket=out_bucket, Key=key)

    again = train_swin(demo_uri, output_uri, "smoke", tiny, return_state=True)
    assert again.is_completed(), again.message
    record = read_run(again.state_details.flow_run_id)
    assert record.tasks["validate-and-split"] == ["Cached", "Completed"]
    assert record.tasks["train"] == ["Completed"]
    assert again.result() == first.result()
    assert _run_files(s3_server, again.result()) == LAYOUT


def test_a_mirrored_image_cache_spares_another_machine_every_decode(
    s3_server, demo_uri, tmp_path, monkeypatch, tiny
):
    config = build_config("smoke", overrides={**tiny, "data.cache_mirror": True})
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"

    @flow
    def prepare_and_cache():
        snapshot = fetch_images(fetch_metadata(demo_uri, config.data), config.data)
        run = validate_and_split(snapshot, config, output_uri)
        try:
            return cache_images(snapshot, config, run, output_uri)
        finally:
            release_lease(run)  # as train-swin does when it ends: machine b takes the run next

    decodes: list[str] = []
    decode = imagecache.decode_resized

    def counting(source, size, name=None):
        decodes.append(str(name))
        return decode(source, size, name)

    monkeypatch.setattr(imagecache, "decode_resized", counting)
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "machine-a"))
    first = prepare_and_cache()
    assert (len(decodes), first.decoded, first.copied) == (32, 0, 32)  # in validation, once each
    bucket, prefix = storage_uris.split_s3(mirror_uri(config, output_uri))
    key = storage.read_text(f"{mirror_uri(config, output_uri)}/latest").strip()
    assert s3_server.keys(bucket, prefix) == sorted(
        [f"{prefix}/latest", f"{prefix}/{key}.json", f"{prefix}/{key}.u8"]
    )

    decodes.clear()
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "machine-b"))
    second = prepare_and_cache.with_options(name="on-machine-b")()
    assert decodes == [] and second.reused  # downloaded, checked, used as it is
    a, b = (Path(ref.manifest).with_suffix(".u8").read_bytes() for ref in (first, second))
    assert a == b and Path(second.manifest).is_relative_to(tmp_path / "machine-b")
