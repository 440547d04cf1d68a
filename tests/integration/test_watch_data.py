"""Retrain when the data changes: watch-data's fingerprint and state file, and the whole path
against moto and the session's Prefect server: a first check records, an unchanged check sends
nothing, added images send one `camtrap.dataset.changed`, and train-swin/part1's deployment
trigger turns that event into one part1 flow run."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from camtrap import storage
from tasks.watch import (
    DatasetCheck,
    check_dataset,
    read_previous,
    record_check,
    resource_id,
    state_uri,
)

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


# --- local data: fingerprinted by content -------------------------------------------------------

OLD_NS = 1_600_000_000 * 10**9  # 2020: long before the check, so a hash may be cached


def _local_dataset(root: Path) -> Path:
    """A small local dataset whose files were last modified long ago."""
    rows = "id,filepath,label\nimg0,images/a.jpg,cat\nimg1,images/b.jpg,dog\n"
    for rel, data in [("train_features.csv", rows.encode()), ("images/a.jpg", b"\xff" * 64),
                      ("images/b.jpg", b"\x01" * 64)]:  # fmt: skip
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return root


def _check_and_record(data: Path, out: Path) -> DatasetCheck:
    """One watch-data check without a Prefect server: look, then record what was seen."""
    check = check_dataset.fn(str(data), str(out))
    record_check.fn(check)
    return check


@pytest.fixture
def data_reads(monkeypatch) -> Callable[[Path], list[str]]:
    """The files under a folder opened for reading from now on (every open goes through
    io.open: Path.open, open(), shutil)."""
    import builtins
    import io

    opened: list[Path] = []
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, str | Path):
            opened.append(Path(file).absolute())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    return lambda folder: [
        p.relative_to(folder).as_posix() for p in opened if p.is_relative_to(folder)
    ]  # in the order opened


def test_a_same_size_edit_of_a_label_row_in_place_is_a_change(tmp_path):
    data, out = _local_dataset(tmp_path / "data"), tmp_path / "out"
    first = _check_and_record(data, out)
    csv = data / "train_features.csv"
    with csv.open("r+b") as fh:  # the user fixes a label: cat -> cow, same size, same file
        text = fh.read()
        fh.seek(0)
        fh.write(text.replace(b"img0,images/a.jpg,cat", b"img0,images/a.jpg,cow"))
    assert csv.stat().st_size == len(text)
    second = check_dataset.fn(str(data), str(out))
    assert second.changed and second.previous == first.fingerprint


def test_an_image_replaced_by_one_of_the_same_size_is_a_change(tmp_path):
    data, out = _local_dataset(tmp_path / "data"), tmp_path / "out"
    _check_and_record(data, out)
    new = tmp_path / "new.jpg"
    new.write_bytes(b"\xfe" * 64)
    os.utime(new, ns=(OLD_NS, OLD_NS))  # even with the old one's modification time
    os.replace(new, data / "images" / "a.jpg")
    assert check_dataset.fn(str(data), str(out)).changed


def test_an_edit_within_the_clock_tick_of_the_last_hash_is_a_change(tmp_path):
    # Hashed right after it was written, a file may change again within one tick of the
    # filesystem's clock: same size, same mtime. Such a hash is not reused.
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    labels = data / "labels.csv"
    labels.write_bytes(b"id,label\nimg0,cat\n")
    _check_and_record(data, out)
    stamp = labels.stat().st_mtime_ns
    with labels.open("r+b") as fh:
        fh.seek(len(b"id,label\nimg0,"))
        fh.write(b"cow")
    os.utime(labels, ns=(stamp, stamp))
    assert check_dataset.fn(str(data), str(out)).changed


def test_an_untouched_folder_is_unchanged_and_not_read_again(tmp_path, data_reads):
    data, out = _local_dataset(tmp_path / "data"), tmp_path / "out"
    _check_and_record(data, out)
    reads_before = len(data_reads(data))
    again = check_dataset.fn(str(data), str(out))
    assert not again.changed
    assert data_reads(data)[reads_before:] == []  # hashes reused: (inode, size, mtime) unchanged
    for path in data.rglob("*"):
        os.utime(path, ns=(OLD_NS + 10**9, OLD_NS + 10**9))  # touched, same bytes
    assert not check_dataset.fn(str(data), str(out)).changed
    assert sorted(data_reads(data)[reads_before:]) == [
        "images/a.jpg", "images/b.jpg", "train_features.csv",
    ]  # fmt: skip


def test_the_watchers_own_writes_under_the_data_folder_are_no_change(tmp_path):
    data = _local_dataset(tmp_path / "data")
    out = data / "runs"  # outputs inside the data folder: /data and /data/runs
    first = _check_and_record(data, out)
    assert first.files == 3
    state = json.loads(Path(state_uri(str(out), str(data))).read_text())
    assert state["fingerprint"] == first.fingerprint  # written inside the data folder
    (out / "part1" / "r1").mkdir(parents=True)
    (out / "part1" / "r1" / "run.json").write_text("{}")  # a run, also under output_uri
    again = check_dataset.fn(str(data), str(out))
    assert not again.changed and again.files == 3


def test_an_output_that_is_the_data_folder_leaves_out_the_watchers_state(tmp_path, caplog):
    data = _local_dataset(tmp_path / "data")
    with caplog.at_level("WARNING", logger="camtrap"):
        first = _check_and_record(data, data)
    assert first.files == 3 and not check_dataset.fn(str(data), str(data)).changed
    assert f"output_uri {data} is data_uri itself" in caplog.text


def test_the_watchers_own_writes_under_an_s3_data_prefix_are_no_change(s3_server, bucket):
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="data/train_features.csv", Body=b"id,filepath\n")
    data_uri, output_uri = f"s3://{bucket}/data", f"s3://{bucket}/data/runs"
    check_dataset.fn(data_uri, output_uri)
    record_check.fn(check_dataset.fn(data_uri, output_uri))
    again = check_dataset.fn(data_uri, output_uri)
    assert not again.changed and again.files == 1


def test_a_size_only_fingerprint_of_old_is_recorded_again_without_an_event(tmp_path):
    # A state file written before local data was fingerprinted by content holds a fingerprint
    # of sizes: not comparable, so the check counts as a first one (no retrain).
    data, out = _local_dataset(tmp_path / "data"), tmp_path / "out"
    old = storage.etags_digest(storage.list_files(str(data)))
    state = Path(state_uri(str(out), str(data)))
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"fingerprint": old, "files": 3}))
    assert check_dataset.fn(str(data), str(out)).previous is None


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
