"""Model history in the Prefect UI, against the session's Prefect server, without training: the
train task's epoch publisher and the publish task's artifacts run on hand-written run folders.
Each flow run has one card per stage key, updated in place every epoch; every retrain is a new
version of the same keys; the history table is read from the run folders."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from camtrap.fit import EpochRecord
from camtrap.runfolder import RunFiles
from tasks import artifacts, training
from tasks.refs import RunRef

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

EPOCHS = 3
CLASSES = ("bird", "hog")
# val accuracy per epoch; log loss falls by 0.1 an epoch from 1.0 (hand-made, not trained)
VAL_ACCURACY = {1: 0.5, 2: 0.75, 3: 0.625}
KEYS = (
    "progress", "epochs", "per-class", "summary", "plots", "history",
    "run-folder", "best-model", "epochs-csv", "plots-folder",
)  # fmt: skip


def _metrics_rows(epoch: int) -> list[dict]:
    val = {"accuracy": VAL_ACCURACY[epoch], "loss": 1.0 - 0.1 * epoch}
    train = {"accuracy": 0.25 * epoch, "loss": 1.2 - 0.1 * epoch}
    return [
        {"epoch": epoch, "split": split, **m, "log_loss": m["loss"], "top3_accuracy": 1.0}
        for split, m in (("train", train), ("val", val))
    ]


def _per_class_rows(epoch: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"epoch": epoch, "split": "val", "class": name, "precision": 0.5, "recall": 0.5,
             "f1": 0.5, "support": 4}
            for name in CLASSES
        ]
    )  # fmt: skip


def _run(stage_dir: Path, run_id: str) -> RunRef:
    run_dir = stage_dir / run_id
    (run_dir / "metrics").mkdir(parents=True)
    return RunRef(
        run_id=run_id,
        run_uri=str(run_dir),
        local_dir=str(run_dir),
        lease_uri=str(stage_dir / ".leases" / f"{run_id}.json"),
    )


def _finished_info(run: RunRef, stage: str, finished: str, fingerprint: str) -> dict:
    return {
        "run_id": run.run_id, "status": "completed", "started": finished, "finished": finished,
        "data_fingerprint": fingerprint, "counts": {"train": 24, "val": 8},
        "config": {"model": {"arch": "resnet18"}, "output": {"stage": stage},
                   "train": {"epochs": EPOCHS}},
        "best_epoch": 2, "best_value": 0.75, "best_logloss_epoch": 3, "best_logloss_value": 0.7,
        "val": {"accuracy": 0.75, "log_loss": 0.8, "calibrated_log_loss": 0.65},
        "files": {},
    }  # fmt: skip


@task(name="train")
def fake_train(run: RunRef, stage: str) -> None:
    """What the train task does around stages.train: a progress bar, then the epoch publisher
    after each epoch, with metrics/epochs.csv growing by an epoch each time."""
    run_artifacts = artifacts.RunArtifacts(stage)
    artifacts.progress(run_artifacts, run, 0, EPOCHS)
    publisher = training.EpochPublisher(run, run_artifacts)
    files = RunFiles(Path(run.local_dir), "resnet18", stage)
    rows: list[dict] = []
    for epoch in range(1, EPOCHS + 1):
        rows += _metrics_rows(epoch)
        pd.DataFrame(rows).to_csv(files.epochs_csv, index=False)
        per_class = _per_class_rows(epoch)
        per_class.to_csv(files.per_class_csv, index=False)
        publisher(
            EpochRecord(
                epoch=epoch,
                epochs=EPOCHS,
                train={},
                val={"accuracy": VAL_ACCURACY[epoch]},
                per_class=per_class,
                is_best=epoch == 2,
                best_epoch=min(epoch, 2),
                seconds=1.0,
                memory={},
                files=files,
            )  # fmt: skip
        )


@task(name="publish")
def fake_publish(run: RunRef, info: dict) -> None:
    Path(run.local_dir, "run.json").write_text(json.dumps(info))
    per_class = pd.concat([_per_class_rows(e) for e in range(1, EPOCHS + 1)])
    per_class.to_csv(Path(run.local_dir, "metrics", "per_class.csv"), index=False)
    artifacts.publish_summary(run, info, Path(run.local_dir))


@flow(name="train-swin-history-test")
def retrain(run: RunRef, stage: str, info: dict | None) -> None:
    fake_train(run, stage)
    if info is not None:
        fake_publish(run, info)
        fake_publish(run, info)  # as a retried publish task: no new cards


def _by_key(record, stage: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for artifact in record.artifacts:
        found.setdefault(artifact.key, []).append(artifact)
    return {key.removeprefix(f"train-swin-{stage}-"): arts for key, arts in found.items()}


def _versions(key: str) -> list:
    """Every version of `key` on the server, newest first (what the Artifacts page lists)."""
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
        )


@pytest.fixture(name="stage")
def stage_fixture() -> str:
    """A stage name of this test alone: the session's server is shared with other tests."""
    return f"hist{uuid.uuid4().hex[:8]}"


def test_the_train_task_updates_three_cards_in_place_every_epoch(tmp_path, stage, read_run):
    run = _run(tmp_path / stage, f"{stage}-aaaa")
    state = retrain(run, stage, None, return_state=True)
    assert state.is_completed(), state.message
    by_key = _by_key(read_run(state.state_details.flow_run_id), stage)

    assert {k: len(v) for k, v in by_key.items()} == {"progress": 1, "epochs": 1, "per-class": 1}
    assert by_key["progress"][0].data == 100.0
    assert (
        by_key["progress"][0].description
        == f"{run.run_id}: epoch 3/3 | val acc 0.6250 | best epoch 2"
    )
    rows = json.loads(by_key["epochs"][0].data)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # the last epoch's table, in the first card
    assert [r["val_accuracy"] for r in rows] == [0.5, 0.75, 0.625]
    assert by_key["per-class"][0].description == f"{run.run_id}: per-class metrics on val, epoch 3"


def test_retrains_are_versions_of_the_stage_keys_and_the_history_lists_them(
    tmp_path, stage, read_run
):
    stage_dir = tmp_path / stage
    first = _run(stage_dir, f"{stage}-aaaa")
    first_info = _finished_info(first, stage, "2026-01-01T00:00:00Z", "a" * 64)
    state = retrain(first, stage, first_info, return_state=True)
    assert state.is_completed(), state.message
    by_key = _by_key(read_run(state.state_details.flow_run_id), stage)
    assert {k: len(v) for k, v in by_key.items()} == dict.fromkeys(KEYS, 1)  # 10 cards
    assert by_key["progress"][0].data == 100.0
    assert [r["epoch"] for r in json.loads(by_key["epochs"][0].data)] == [1, 2, 3]
    assert by_key["per-class"][0].description.endswith("epoch 2")  # the best epoch's, at the end
    assert by_key["summary"][0].description == (
        f"{first.run_id}: val accuracy 0.7500, val log loss 0.7000, calibrated log loss 0.6500"
    )
    assert "- data fingerprint: `aaaaaaaaaaaa`" in by_key["summary"][0].data
    best = f"final_resnet18_model_{stage}_best.pth"
    assert by_key["best-model"][0].data == (
        f"[{first.run_uri}/{best}]({Path(first.run_uri, best).as_uri()})"
    )
    assert by_key["run-folder"][0].data == f"[{first.run_uri}]({Path(first.run_uri).as_uri()})"
    assert [r["run_id"] for r in json.loads(by_key["history"][0].data)] == [first.run_id]

    # A run folder the Prefect database knows nothing of (another server, a lost database):
    # the next history still lists it, since it is read from the folders.
    orphan = _run(stage_dir, f"{stage}-cccc")
    orphan_info = _finished_info(orphan, stage, "2026-01-02T00:00:00Z", "c" * 64)
    Path(orphan.local_dir, "run.json").write_text(json.dumps(orphan_info))

    second = _run(stage_dir, f"{stage}-bbbb")
    second_info = {
        **_finished_info(second, stage, "2026-01-03T00:00:00Z", "b" * 64),
        "val": {"accuracy": 0.875, "log_loss": 0.5, "calibrated_log_loss": 0.45},
        "best_logloss_value": 0.5,
    }
    state = retrain(second, stage, second_info, return_state=True)
    assert state.is_completed(), state.message
    by_key = _by_key(read_run(state.state_details.flow_run_id), stage)
    assert {k: len(v) for k, v in by_key.items()} == dict.fromkeys(KEYS, 1)

    summaries = _versions(f"train-swin-{stage}-summary")
    assert [a.description for a in summaries] == [
        f"{second.run_id}: val accuracy 0.8750, val log loss 0.5000, calibrated log loss 0.4500",
        f"{first.run_id}: val accuracy 0.7500, val log loss 0.7000, calibrated log loss 0.6500",
    ]
    assert len(_versions(f"train-swin-{stage}-epochs")) == 2  # one per retrain, not per epoch
    history = json.loads(_versions(f"train-swin-{stage}-history")[0].data)
    assert [(r["run_id"], r["data_fingerprint"], r["val_accuracy"], r["val_log_loss"],
             r["calibrated_log_loss"], r["epochs"], r["run_uri"]) for r in history] == [
        (second.run_id, "bbbbbbbbbbbb", 0.875, 0.5, 0.45, 3, second.run_uri),
        (orphan.run_id, "cccccccccccc", 0.75, 0.7, 0.65, 3, orphan.run_uri),
        (first.run_id, "aaaaaaaaaaaa", 0.75, 0.7, 0.65, 3, first.run_uri),
    ]  # fmt: skip
