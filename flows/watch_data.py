"""Flow `watch-data`: announce a changed dataset, so that train-swin/part1 retrains on it.

    list the files under data_uri -> fingerprint them (path, size and, on S3, the ETag; in a
    local folder the sha256, read only for files changed since the last check) -> compare with
    the fingerprint of the last check ({output_uri}/watch/<key>.json) -> on a change: send the
    Prefect event `camtrap.dataset.changed` (resource camtrap.dataset.<data_uri>; payload
    data_uri, output_uri, fingerprint, previous_fingerprint, files), then record the fingerprint

Files under output_uri, where it lies inside data_uri (/data and /data/runs), are no data: the
runs and the watcher's own state are left out of the fingerprint.

The first check of a dataset (nothing recorded yet) records its fingerprint and sends nothing,
unless `emit_first`: the data a watch starts on is the data the last training used, or the
weekly schedule trains on it; a retrain of many GPU hours should follow a change, not the act of
setting up a watch (or of moving output_uri). Deployed as `watch-data/hourly`
(deployments/prefect.yaml), whose event starts train-swin/part1 through a deployment trigger.

    python -m flows.watch_data --data s3://camtrap-data/train --out s3://camtrap-runs/runs

checks once in this process and prints `changed`, `unchanged` or `recorded`; the event goes to
the Prefect server of PREFECT_API_URL (a temporary server, without it, has no trigger)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Literal

from prefect import flow, get_run_logger

from camtrap.storage.mirror import check_data_folder
from flows.local_prefect import run_main
from tasks.watch import check_dataset, emit_changed, record_check

Outcome = Literal["changed", "unchanged", "recorded"]


@flow(name="watch-data", validate_parameters=True)
def watch_data(data_uri: str, output_uri: str, emit_first: bool = False) -> Outcome:
    """Compare the objects under `data_uri` with the last check (kept under `output_uri`) and send
    `camtrap.dataset.changed` when they differ. Returns "changed" (event sent, fingerprint
    recorded), "unchanged" (nothing sent, no fingerprint written; a local folder's hash index
    may be refreshed) or "recorded" (a first check: recorded, nothing sent)."""
    logger = get_run_logger()
    check = check_dataset(data_uri, output_uri)
    if not check.changed:
        logger.info("%s unchanged (%d files)", check.data_uri, check.files)
        return "unchanged"
    if check.previous is None and not emit_first:
        record_check(check)
        logger.info("first check of %s: recorded, no event (emit_first=False)", check.data_uri)
        return "recorded"
    emit_changed(check, output_uri)  # before recording: a change is announced at least once
    record_check(check)
    return "changed"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.watch_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="data URI: s3://bucket/prefix or a folder")
    parser.add_argument("--out", required=True, help="output URI: the last check is kept there")
    parser.add_argument("--emit-first", action="store_true",
                        help="send the event on the first check of a dataset too")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def prepare() -> Callable[[], Any]:
        check_data_folder(args.data)  # a mistyped local folder: one line, at once
        return lambda: watch_data(args.data, args.out, args.emit_first, return_state=True)

    return run_main(prepare)


if __name__ == "__main__":
    sys.exit(main())
