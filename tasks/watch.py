"""Watch tasks: fingerprint a dataset's objects, compare with the last check, announce a change.

The fingerprint is storage.etags_digest over every file under data_uri (camtrap.storage.contents):
on S3 (path, size, ETag), one LIST request per 1000 objects, nothing downloaded; in a local
folder (path, size, sha256), each file read only when its (inode, size, mtime) changed since the
last check (the digests are kept in {output_uri}/watch/<key>.hashes.json). Any file added,
removed or rewritten changes it, whatever its size. Files under output_uri, when it lies inside
data_uri (/data and /data/runs), are no data: the runs and this watcher's own state are left out.
The last fingerprint seen is kept in {output_uri}/watch/<key>.json (see state_uri): beside the
runs it triggers, written through camtrap.storage, so it survives machines, Prefect servers and
a temporary server of `python -m flows.watch_data`.

The event `camtrap.dataset.changed` is sent by an events client whose send raises on failure,
before the new fingerprint is recorded: a check that could not send records nothing, and the
next check announces the change again (at least once; a duplicate costs a part1 run that finds
its run finished and reports "up to date")."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.events.related import related_resources_from_run_context
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, ConfigDict

from camtrap import storage
from camtrap.storage.contents import content_listing, inner_name
from tasks.policies import IO_TASK

log = logging.getLogger("camtrap")

EVENT_CHANGED = "camtrap.dataset.changed"
RESOURCE_PREFIX = "camtrap.dataset."
STATE_FOLDER = "watch"
# How a fingerprint was made: files by (size, ETag) on S3, by (size, sha256) in a local folder.
# A record made another way (local ones before content hashes: sizes only) is not compared.
BY_ETAG, BY_SHA256 = "etag", "sha256"


class DatasetCheck(BaseModel):
    """One look at a dataset: its fingerprint now, and the one recorded by the last check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_uri: str  # without a trailing slash: the event's resource id is built from it
    fingerprint: str
    files: int
    previous: str | None  # None: never checked; "": the record was unreadable
    state_uri: str
    method: str = BY_ETAG  # how `fingerprint` was made (BY_ETAG, BY_SHA256)

    @property
    def changed(self) -> bool:
        return self.previous != self.fingerprint


def normalized(uri: str) -> str:
    """`s3://b/train/` and `s3://b/train` are one dataset: one resource id, one state file."""
    return uri.rstrip("/") or uri


def resource_id(data_uri: str) -> str:
    """The event's resource: camtrap.dataset.<data_uri> (a trigger's `match` names it)."""
    return RESOURCE_PREFIX + normalized(data_uri)


def state_uri(output_uri: str, data_uri: str) -> str:
    """{output_uri}/watch/<first 16 hex of sha256(data_uri)>.json: one file per dataset, a name
    that is safe whatever the URI holds (the URI itself is inside)."""
    return storage.join(output_uri, STATE_FOLDER, f"{_key(data_uri)}.json")


def index_uri(output_uri: str, data_uri: str) -> str:
    """{output_uri}/watch/<key>.hashes.json: the local files' sha256 by (inode, size, mtime), so
    that a check reads only what changed."""
    return storage.join(output_uri, STATE_FOLDER, f"{_key(data_uri)}.hashes.json")


def _key(data_uri: str) -> str:
    return hashlib.sha256(normalized(data_uri).encode()).hexdigest()[:16]


def read_previous(uri: str, method: str = BY_ETAG) -> str | None:
    """The fingerprint recorded at `uri`: None when nothing was recorded, or it was made another
    way than `method` (records without one: by ETag); "" when the record is unreadable (so the
    next check counts as a change: a spare event is cheap, a missed one not)."""
    try:
        text = storage.read_text(uri)
    except storage.StorageNotFound:
        return None
    try:
        record = json.loads(text)
        fingerprint = record["fingerprint"]
    except (ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; counting this check as a change", uri)
        return ""
    if record.get("method", BY_ETAG) != method:
        log.info("%s was fingerprinted another way; counting this check as the first", uri)
        return None
    return fingerprint if isinstance(fingerprint, str) else ""


def state_record(check: DatasetCheck, now: datetime) -> str:
    return json.dumps(
        {
            "data_uri": check.data_uri,
            "fingerprint": check.fingerprint,
            "files": check.files,
            "method": check.method,
            "recorded_at": now.isoformat(timespec="seconds"),
        },
        indent=1,
        sort_keys=True,
    )


def event_payload(check: DatasetCheck, output_uri: str) -> dict[str, str | int | None]:
    """What a trigger's templates read (`{{ event.payload.data_uri }}`)."""
    return {
        "data_uri": check.data_uri,
        "output_uri": output_uri,
        "fingerprint": check.fingerprint,
        "previous_fingerprint": check.previous or None,
        "files": check.files,
    }


@task(name="check-dataset", cache_policy=NO_CACHE, **IO_TASK)  # every call looks again
def check_dataset(data_uri: str, output_uri: str) -> DatasetCheck:
    """List the files under `data_uri` (less output_uri, where it lies inside), fingerprint them
    and read the last recorded check. A URI holding nothing (a typo, or the data deleted) fails:
    it must not start a training."""
    data_uri = normalized(data_uri)
    files = dataset_files(data_uri, output_uri)
    if not files:
        raise storage.StorageNotFound(
            f"{data_uri} holds no files — fix: give the dataset's folder or s3://bucket/prefix "
            "(the one train-swin reads)"
        )
    where = state_uri(output_uri, data_uri)
    method = BY_ETAG if storage.is_remote(data_uri) else BY_SHA256
    check = DatasetCheck(
        data_uri=data_uri,
        fingerprint=storage.etags_digest(files),
        files=len(files),
        previous=read_previous(where, method),
        state_uri=where,
        method=method,
    )
    log.info("%s: %d files, fingerprint %s (last check: %s)", data_uri, check.files,
             check.fingerprint[:12], (check.previous or "none")[:12])  # fmt: skip
    return check


def dataset_files(data_uri: str, output_uri: str) -> dict[str, storage.RemoteFile]:
    """The files under `data_uri` with a tag of their content, less those under output_uri (runs,
    this watcher's state) when it lies inside. An output_uri that is data_uri itself leaves out
    only the watcher's state: runs written there look like new data (warned)."""
    if inner_name(data_uri, output_uri) == "":
        log.warning(
            "output_uri %s is data_uri itself: each run written there counts as a change of the "
            "data — fix: give an output_uri outside %s or in a folder of it (%s)",
            output_uri, data_uri, storage.join(data_uri, "runs"),
        )  # fmt: skip
    skip = (output_uri, storage.join(output_uri, STATE_FOLDER))
    return content_listing(data_uri, index_uri(output_uri, data_uri), skip)


@task(name="record-dataset-check", cache_policy=NO_CACHE, **IO_TASK)  # writes every time
def record_check(check: DatasetCheck) -> str:
    """Write the check's fingerprint to its state file (atomically); returns the file's URI."""
    storage.write_text(check.state_uri, state_record(check, datetime.now(UTC)))
    return check.state_uri


@task(name="emit-dataset-changed", cache_policy=NO_CACHE, **IO_TASK)  # sends every time
def emit_changed(check: DatasetCheck, output_uri: str) -> str:
    """Send `camtrap.dataset.changed` for the check and wait until it is sent (an error raises,
    and the task retries); returns the event's id."""
    event = Event(
        event=EVENT_CHANGED,
        resource={
            "prefect.resource.id": resource_id(check.data_uri),
            "prefect.resource.name": check.data_uri,
        },
        payload=event_payload(check, output_uri),
    )
    run_coro_as_sync(_send(event))
    log.info("%s changed: sent %s (event %s)", check.data_uri, EVENT_CHANGED, event.id)
    return str(event.id)


async def _send(event: Event) -> None:
    """Through an events client of our own, not the background events worker: its send raises
    when the server cannot be reached, so the check is not recorded as announced."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        event.related += await related_resources_from_run_context(
            client, exclude={event.resource.id}
        )  # the flow run, its flow and deployment: the event links to them in the UI
    async with get_events_client() as events:
        await events.emit(event)
