"""Alerts: deployments/alerts.yaml applied (python -m flows.alerts) to the session's Prefect
server notifies a webhook on 127.0.0.1 of train-swin runs that end Failed or Crashed, and of no
other flow's failures."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from flows.alerts import DEFAULT_FILE, AlertsError, load_automations, with_block_ids

DEADLINE_S = 60


def test_apply_puts_the_named_block_id_in_every_notification_action():
    (raw,) = load_automations(DEFAULT_FILE)
    resolved = with_block_ids(raw, {"camtrap-alerts": "id-1", "other": "id-2"}.__getitem__)
    (action,) = resolved["actions"]
    assert action["block_document_id"] == "id-1" and "block" not in action
    assert raw["actions"][0]["block"] == "camtrap-alerts"  # the file's copy is left as it was
    assert with_block_ids(raw, {"other": "id-2"}.__getitem__, block="other")["actions"][0][
        "block_document_id"
    ] == "id-2"  # fmt: skip
    assert raw["trigger"]["expect"] == ["prefect.flow-run.Failed", "prefect.flow-run.Crashed"]
    assert raw["trigger"]["match_related"]["prefect.resource.name"] == "train-swin"


def test_a_notification_action_without_a_block_is_refused():
    bare = {"name": "a", "actions": [{"type": "send-notification", "body": "x"}]}
    with pytest.raises(AlertsError, match="names no block"):
        with_block_ids(bare, lambda ref: ref)


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps the JSON body of every POST."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> list[dict]:
        deadline = time.monotonic() + DEADLINE_S
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.25)
        return list(self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _ended_run(client, flow_name: str, state) -> str:
    """A flow run of `flow_name` taken to Running, then to `state`; returns its name."""
    from prefect import flow
    from prefect.states import Running

    @flow(name=flow_name)
    def stand_in() -> None: ...

    name = f"alert-test-{uuid.uuid4().hex[:8]}"
    parameters = {"data_uri": "s3://data/train", "output_uri": "s3://runs/runs"}
    run = client.create_flow_run(stand_in, name=name, parameters=parameters)
    client.set_flow_run_state(run.id, Running(), force=True)
    client.set_flow_run_state(run.id, state, force=True)
    return name


@pytest.mark.slow  # the session's Prefect server: its automations send the notification
def test_failed_and_crashed_train_swin_runs_notify_the_webhook(prefect_api, receiver):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Failed

    from flows.alerts import apply

    block = f"alerts-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name="camtrap",
        url=receiver.url,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save(block)
    (created,) = apply(block=f"custom-webhook/{block}")
    assert created[0] == "camtrap-train-failed"
    assert apply(block=block)[0][0] == "camtrap-train-failed"  # again: replaced, not doubled
    try:
        with get_client(sync_client=True) as client:
            assert len(client.read_automations_by_name("camtrap-train-failed")) == 1
            other = _ended_run(client, "predict-swin", Failed(message="not ours"))
            failed = _ended_run(client, "train-swin", Failed(message="DataError: bad row 3"))
            crashed = _ended_run(client, "train-swin", Crashed(message="process killed"))
        bodies = receiver.wait_for(2)
    finally:
        with get_client(sync_client=True) as client:
            for automation in client.read_automations_by_name("camtrap-train-failed"):
                client.delete_automation(automation.id)

    by_run = {name: [b for b in bodies if name in b["subject"]] for name in (failed, crashed)}
    assert [len(found) for found in by_run.values()] == [1, 1], bodies
    (failure,), (crash,) = by_run.values()
    assert failure["subject"] == f"camtrap: train-swin run {failed} Failed"
    assert "Message: DataError: bad row 3" in failure["body"]
    assert "Data: s3://data/train" in failure["body"]
    assert "/runs/flow-run/" in failure["body"]  # the link to the run
    assert crash["subject"] == f"camtrap: train-swin run {crashed} Crashed"
    assert "on_crashed hook runs it again" in crash["body"]
    assert not [b for b in bodies if other in b["subject"]]  # predict-swin: not alerted
