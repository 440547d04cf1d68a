"""Retrain when the data changes: watch-data's fingerprint and state file, and the whole path
against moto and the session's Prefect server: a first check records, an unchanged check sends
nothing, added images send one `camtrap.dataset.changed`, and train-swin/part1's deployment
trigger turns that event into one part1 flow run."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tasks.watch import DatasetCheck, read_previous, resource_id, state_uri

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
# The dataset part1's trigger watches (deployments/prefect.yaml): the moto test writes there.
WATCHED_BUCKET, WATCHED_PREFIX = "camtrap-data", "train"
DEADLINE_S = 60


def _deployment(flow_file: str, name: str) -> dict:
    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    (found,) = [
        d for d in deployments if d["entrypoint"].startswith(flow_file) and d["name"] == name
    ]
    return found


def test_state_file_is_one_per_dataset_whatever_the_trailing_slash():
    # sha256("s3://camtrap-data/train")[:16], computed by hand once
    expected = "s3://runs/r/watch/568dabac613331ee.json"
    assert state_uri("s3://runs/r", "s3://camtrap-data/train") == expected
    assert state_uri("s3://runs/r", "s3://camtrap-data/train/") == expected
    assert resource_id("s3://camtrap-data/train/") == "camtrap.dataset.s3://camtrap-data/train"


def test_previous_fingerprint_absent_unreadable_or_recorded(tmp_path):
    assert read_previous(str(tmp_path / "none.json")) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_previous(str(tmp_path / "bad.json")) == ""  # counts as a change
    (tmp_path / "ok.json").write_text('{"fingerprint": "abc", "files": 3}')
    assert read_previous(str(tmp_path / "ok.json")) == "abc"


@pytest.mark.parametrize(
    ("previous", "changed"), [(None, True), ("", True), ("f1", False), ("f0", True)]
)
def test_a_check_is_a_change_unless_it_saw_the_recorded_fingerprint(previous, changed):
    check = DatasetCheck(data_uri="d", fingerprint="f1", files=1, previous=previous, state_uri="s")
    assert check.changed is changed


def test_part1_trigger_watches_what_watch_data_watches_and_passes_the_event_on():
    watch = _deployment("flows/watch_data.py", "hourly")
    (trigger,) = _deployment("flows/train_swin.py", "part1")["triggers"]
    assert trigger["expect"] == ["camtrap.dataset.changed"]
    assert trigger["match"] == {"prefect.resource.id": resource_id(watch["parameters"]["data_uri"])}
    assert trigger["parameters"] == {
        "data_uri": "{{ event.payload.data_uri }}",
        "output_uri": "{{ event.payload.output_uri }}",
    }
    assert watch["schedules"] == [{"interval": 3600, "active": True}]
    assert "camtrap" not in watch["tags"]  # the heartbeat restart (train-swin parameters) skips it


def _fresh_watched_dataset(s3_server) -> str:
    """s3://camtrap-data/train holding two small files (a bucket of this test session only)."""
    client = s3_server.client()
    if WATCHED_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=WATCHED_BUCKET)
    for key in s3_server.keys(WATCHED_BUCKET, WATCHED_PREFIX + "/"):
        client.delete_object(Bucket=WATCHED_BUCKET, Key=key)
    for name, body in [("train_features.csv", b"id,filepath\n"), ("images/a.jpg", b"a")]:
        client.put_object(Bucket=WATCHED_BUCKET, Key=f"{WATCHED_PREFIX}/{name}", Body=body)
    return f"s3://{WATCHED_BUCKET}/{WATCHED_PREFIX}"


def _deploy_part1(prefect_server) -> uuid.UUID:
    """train-swin/part1 of deployments/prefect.yaml, with its trigger, on a pool of its own (a
    `gpu-pool` made here would break a later `prefect work-pool create gpu-pool`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"watch-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    prefect_server.cli("deploy", "--name", "train-swin/part1", "--prefect-file",
                       str(PREFECT_YAML), "-p", pool)  # fmt: skip
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name("train-swin/part1").id


def _changed_events(since: datetime, data_uri: str, want: int) -> list:
    """The camtrap.dataset.changed events of `data_uri` since `since`, once `want` are there
    (or the deadline passed)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    deadline = time.monotonic() + DEADLINE_S
    with get_client(sync_client=True) as client:
        while True:
            query = EventFilter(  # `until` defaults to the filter's creation: one per query
                occurred=EventOccurredFilter(since=since, until=datetime.now(UTC)),
                event=EventNameFilter(name=["camtrap.dataset.changed"]),
                resource=EventResourceFilter(id=[resource_id(data_uri)]),
            )
            events = client.read_events(query, limit=50).events
            if len(events) >= want or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def _triggered_runs(deployment_id: uuid.UUID, output_uri: str, want: int) -> list:
    """Flow runs of the deployment made for `output_uri` (not its schedule's), once `want`
    are there (or the deadline passed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    deadline = time.monotonic() + DEADLINE_S
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                run
                for run in client.read_flow_runs(deployment_filter=only, limit=200)
                if run.parameters.get("output_uri") == output_uri
            ]
            if len(runs) >= want or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


@pytest.mark.slow  # a Prefect server, `prefect deploy` in another process, four flow runs
def test_added_images_send_one_event_and_start_one_part1_run(prefect_api, s3_server):
    from camtrap import storage
    from flows.watch_data import watch_data

    deployment_id = _deploy_part1(prefect_api)
    data_uri = _fresh_watched_dataset(s3_server)
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    since = datetime.now(UTC) - timedelta(seconds=5)

    assert watch_data(data_uri, output_uri) == "recorded"  # first check: no event
    first = storage.etags_digest(storage.list_files(data_uri))
    state = state_uri(output_uri, data_uri)
    assert read_previous(state) == first
    assert watch_data(data_uri, output_uri) == "unchanged"

    s3_server.client().put_object(Bucket=WATCHED_BUCKET, Key="train/images/b.jpg", Body=b"b")
    assert watch_data(data_uri, output_uri) == "changed"
    second = storage.etags_digest(storage.list_files(data_uri))
    assert second != first and read_previous(state) == second
    assert watch_data(data_uri, output_uri) == "unchanged"

    (run,) = _triggered_runs(deployment_id, output_uri, want=1)
    assert run.parameters["data_uri"] == data_uri
    assert run.parameters["preset"] == "part1"  # the deployment's default
    assert run.state.name == "Scheduled"

    (event,) = _changed_events(since, data_uri, want=1)  # sent by the third check alone
    assert event.payload == {
        "data_uri": data_uri,
        "output_uri": output_uri,
        "fingerprint": second,
        "previous_fingerprint": first,
        "files": 3,
    }
    assert event.resource.id == "camtrap.dataset.s3://camtrap-data/train"
    assert "prefect.flow-run" in {r.id.rsplit(".", 1)[0] for r in event.related}
    assert len(_triggered_runs(deployment_id, output_uri, want=1)) == 1  # still one
