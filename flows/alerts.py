"""Apply the alert automations of deployments/alerts.yaml to the Prefect server.

    python -m flows.alerts [--file deployments/alerts.yaml] [--block camtrap-alerts]

A `send-notification` action in the file names its notification block (`block: NAME` or
`block: TYPE-SLUG/NAME`); the block's id, which differs on every server, is put in its place.
An automation of the same name already on the server is replaced, so applying twice leaves one
copy. Prints one line per automation created."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore
from prefect.settings import get_current_settings

from camtrap.errors import CamtrapError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT / "deployments" / "alerts.yaml"


class AlertsError(CamtrapError):
    """The alerts file or its notification block is not usable."""


def load_automations(path: Path) -> list[dict[str, Any]]:
    """The `automations:` list of a YAML file (a list, or one automation, also accepted)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise AlertsError(f"{path}: {err} — fix: give a readable YAML file") from err
    if isinstance(data, dict) and "automations" in data:
        data = data["automations"]
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) and item.get("name") for item in items):
        raise AlertsError(f"{path}: no automations — fix: list them under `automations:`")
    return items


def with_block_ids(
    automation: dict[str, Any], block_id: Any, block: str | None = None
) -> dict[str, Any]:
    """A copy of `automation` whose send-notification actions name the block by id:
    `block_id(ref)` resolves each `block:` reference (`block`, when given, replaces them all)."""
    result = copy.deepcopy(automation)
    for action in result.get("actions", []):
        ref = action.pop("block", None)
        if action.get("type") != "send-notification" or "block_document_id" in action:
            continue
        ref = block or ref
        if not ref:
            raise AlertsError(
                f"automation {result['name']!r}: a send-notification action names no block — "
                "fix: add `block: <name>` to it"
            )
        action["block_document_id"] = str(block_id(ref))
    return result


def find_block_id(client: Any, ref: str) -> UUID:
    """The id of the block document `ref`: `TYPE-SLUG/NAME`, or a NAME only one block has."""
    slug, _, name = ref.rpartition("/")
    if slug:
        try:
            return client.read_block_document_by_name(name, slug, include_secrets=False).id
        except Exception as err:  # ObjectNotFound, or an unknown block type
            raise AlertsError(f"no block {ref!r} on the server — fix: {_FIX_BLOCK}") from err
    found = [
        doc.id
        for doc in client.read_block_documents(include_secrets=False)
        if doc.name == name and not doc.is_anonymous
    ]
    if len(found) != 1:
        what = "no block" if not found else f"{len(found)} blocks"
        fix = _FIX_BLOCK if not found else "name it as TYPE-SLUG/NAME (--block)"
        raise AlertsError(f"{what} named {name!r} on the server — fix: {fix}")
    return found[0]


_FIX_BLOCK = "create the notification block once (README, Alerts), or pass --block"


def apply(path: Path = DEFAULT_FILE, block: str | None = None) -> list[tuple[str, UUID]]:
    """Create the automations of `path` on the server of PREFECT_API_URL, replacing those of the
    same name; returns (name, id) of each."""
    created = []
    with get_client(sync_client=True) as client:
        for raw in load_automations(path):
            automation = AutomationCore.model_validate(
                with_block_ids(raw, lambda ref: find_block_id(client, ref), block)
            )
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created.append((automation.name, client.create_automation(automation)))
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.alerts", description=__doc__)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="automations YAML")
    parser.add_argument("--block", help="notification block for every send-notification action")
    args = parser.parse_args(argv)
    try:
        if not get_current_settings().api.url:  # a temporary server would forget it at once
            raise AlertsError("no Prefect server — fix: set PREFECT_API_URL to the server's API")
        for name, automation_id in apply(args.file, args.block):
            print(f"{name}: {automation_id}")
    except CamtrapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
