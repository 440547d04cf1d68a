"""Flow `train-swin`: fetch -> validate and split -> cache images -> train -> evaluate -> publish,
data and outputs as URIs (s3://bucket/prefix or local folders).

    python -m flows.train_swin --data s3://camtrap-data/train --out s3://camtrap-runs/runs \\
        --preset smoke --set train.epochs=2

runs it in this process (with no Prefect server configured, Prefect starts a temporary one).
Deployed, it is `prefect deployment run train-swin/part1 --param data_uri=... --param ...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from camtrap.config import PRESETS, build_config, parse_override
from camtrap.runfolder import check_run_id
from camtrap.storage.mirror import check_data_folder
from flows.hooks import restart_after_crash
from flows.local_prefect import run_main
from tasks.data import (
    cache_images,
    fetch_detections,
    fetch_images,
    fetch_metadata,
    run_status,
    validate_and_split,
)
from tasks.evaluation import evaluate
from tasks.gpu import gpu_slot
from tasks.publish import publish, report_up_to_date
from tasks.runs import release_lease
from tasks.training import resolve_init_from, train


def initial_run_name() -> str:
    """Until the run id is known (after validation): preset and start time."""
    preset = flow_run.parameters.get("preset", "part1")
    return f"{preset}-starting-{datetime.now(UTC):%Y%m%dT%H%M%S}"


def _rename_flow_run(name: str) -> None:
    """Name the flow run after the run id, so the UI and the output folder agree."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run_id=context.flow_run.id, name=name)


@flow(
    name="train-swin",
    flow_run_name=initial_run_name,
    validate_parameters=True,
    on_crashed=[restart_after_crash],  # a deployment run whose process died runs again
)
def train_swin(
    data_uri: str,
    output_uri: str,
    preset: str = "part1",
    overrides: dict[str, Any] = {},  # noqa: B006 - read only; shown as {} in the UI
    run_id: str | None = None,
    force: bool = False,
) -> str:
    """Train one run of `preset` (+ `overrides`, dotted keys such as {"train.epochs": 2}) on the
    dataset at `data_uri`; outputs go to `output_uri/{stage}/{run_id}`. A finished run with the
    same config and data is reported as up to date unless `force`. Returns the run's URI."""
    logger = get_run_logger()
    config = build_config(preset, None, dict(overrides))  # ConfigError before any work
    if config.model.init_from is not None:  # part2: the part1 model file is in the run id
        config = resolve_init_from(config)
    if run_id is not None:
        check_run_id(run_id)  # it becomes a path: `../x` must not write outside output_uri
    snapshot = fetch_metadata(data_uri, config.data)
    if config.data.detections:  # data.crop: the boxes come from MegaDetector's output
        snapshot = fetch_detections(snapshot, config.data.detections)
    snapshot = fetch_images(snapshot, config.data)
    split = validate_and_split.with_options(refresh_cache=force or None)
    run = split(snapshot, config, output_uri, run_id, force)
    status = run_status(run, config)
    if status == "new":  # the cached split points at a run folder that was deleted
        run = validate_and_split.with_options(refresh_cache=True)(
            snapshot, config, output_uri, run_id, force
        )
        status = run_status(run, config)
    _rename_flow_run(run.run_id)
    logger.info("run %s (%s) -> %s", run.run_id, status, run.run_uri)
    if status == "up-to-date":
        report_up_to_date(run)
        return run.run_uri
    try:
        cache = cache_images(snapshot, config, run, output_uri)
        logger.info("image cache: %d images (%d decoded now)", cache.images, cache.decoded)
        with gpu_slot():  # one run per GPU, whichever deployment it comes from
            summary = train(config, snapshot, run)
            logger.info("best epoch %d (%.4f)", summary.best_epoch, summary.best_value)
            val = evaluate(config, snapshot, run)
        publish(run, val)
    finally:
        release_lease(run)  # a failed run frees its folder for the next attempt at once
    return run.run_uri


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.train_swin", description=__doc__)
    parser.add_argument("--data", required=True, help="data URI: s3://bucket/prefix or a folder")
    parser.add_argument("--out", required=True, help="output URI: runs go to OUT/STAGE/RUN_ID")
    parser.add_argument("--preset", default="part1", choices=sorted(PRESETS))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=2 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--run-id", help="name the run folder instead of deriving it")
    parser.add_argument("--force", action="store_true", help="train again even if finished")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def prepare() -> Callable[[], Any]:
        overrides = dict(parse_override(text) for text in args.set)
        if args.run_id is not None:
            check_run_id(args.run_id)  # before a server starts: one line, no flow run
        check_data_folder(args.data)  # a mistyped local folder: one line, at once
        return lambda: train_swin(args.data, args.out, args.preset, overrides, args.run_id,
                                  args.force, return_state=True)  # fmt: skip

    return run_main(prepare)


if __name__ == "__main__":
    sys.exit(main())
