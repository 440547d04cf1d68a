"""The library's command line: demo-data, validate, train, predict, runs verify.

The `camtrap` console script is flows.cli: these commands plus `demo`, which runs the Prefect
flow (the library never imports Prefect). User errors (bad data, config, paths) print a plain
report and exit 2 — never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from camtrap.config import (
    DEFAULT_EVENT_GAP_S,
    EVENT_RULES,
    FEATURES_CSV,
    LABELS_CSV,
    PREDICT_FORMATS,
    PREDICT_INPUTS,
    PRESETS,
    TEST_FEATURES_CSV,
    build_config,
    predict_options,
)
from camtrap.errors import CamtrapError, ConfigError

if TYPE_CHECKING:
    from camtrap.stages import RunSummary

# Adds commands to the parser's subcommands (flows.cli adds `demo`).
AddCommands = Callable[[argparse._SubParsersAction], None]

log = logging.getLogger("camtrap")

DESCRIPTION = "Train camera-trap species classifiers and label new photos with them."
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _cmd_demo_data(args: argparse.Namespace) -> int:
    if args.small_animals:
        from camtrap.demo_small import DETECTIONS_JSON, write_small_animals_dataset

        root = write_small_animals_dataset(args.dir, per_class=args.per_class, seed=args.seed)
        print(f"wrote a demo dataset with small animals and {DETECTIONS_JSON} to {root}")
        return 0
    from camtrap.demo import write_demo_dataset

    root = write_demo_dataset(args.dir, per_class=args.per_class, seed=args.seed)
    print(f"wrote a demo dataset to {root}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from camtrap.dataset import fetch_data, validate_data
    from camtrap.dataset.detections import crop_summary

    overrides = [f"data.features_csv={args.features_csv}", f"data.labels_csv={args.labels_csv}"]
    data_config = build_config("part1", overrides=[*overrides, *args.set]).data
    root = args.data
    if "://" in root:  # s3://bucket/prefix: fetch (ETag-cached) and check the local copy
        from camtrap.storage.uris import local_copy

        root = fetch_data(root, local_copy(root, "data"), data_config)
    data, problems = validate_data(root, data_config)
    if problems:
        from camtrap.errors import DataError

        print(DataError(problems, root=str(args.data)), file=sys.stderr)
        return EXIT_USER_ERROR
    counts = data.frame["label"].value_counts().reindex(data.classes, fill_value=0)
    print(f"{args.data}: {len(data.frame)} images, {len(data.classes)} classes, no problems")
    for name, count in counts.items():
        print(f"  {name:<24} {count}")
    for reason, count in data.left_out.items():
        print(f"  left out: {count} image(s) with {reason}")
    if (crops := crop_summary(data.frame)) is not None:
        print(f"  crops ({data_config.detections}): {crops}")
    return 0


def _refuse_uris(**locations: str) -> None:
    """`camtrap train` works on local folders; the flow handles s3:// (and resumes from it)."""
    for option, location in locations.items():
        if "://" in location:
            raise ConfigError(
                f"--{option} {location}: camtrap train reads and writes local folders; for "
                "s3:// URIs run the flow: python -m flows.train_swin --data URI --out URI "
                "(same --preset/--set options)"
            )


def run_library(
    data: Path, out: Path, preset: str, config_file, overrides, run_id=None, force=False
) -> RunSummary:
    """Validate, split, train, evaluate and finalize one run with the library alone."""
    from camtrap.stages import run_all

    config = build_config(preset, config_file, overrides)
    return run_all(config, data, out, run_id=run_id, force=force)


def _cmd_train(args: argparse.Namespace) -> int:
    _refuse_uris(data=args.data, out=args.out)
    overrides = [*args.set, *([f"train.nproc={args.nproc}"] if args.nproc else [])]
    summary = run_library(
        Path(args.data), Path(args.out), args.preset, args.config, overrides, args.run_id,
        args.force,
    )  # fmt: skip
    val = "  ".join(f"{k} {v:.4f}" for k, v in summary.val.items())
    print(f"{summary.status}: {summary.run_dir}\n  best epoch {summary.best_epoch}: {val}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from camtrap.predict import predict

    # --features named: today's features-CSV path, even where --input auto would find another
    chosen = "conservision" if args.input == "auto" and args.features else args.input
    options = predict_options(
        input=chosen, features_csv=args.features or TEST_FEATURES_CSV,
        annotations=args.annotations,
        format=args.format, taxonomy=args.taxonomy, event_gap_s=args.event_gap_s,
        event_rule=args.event_rule, allow_http=args.allow_http, deployments=args.deployments,
        utc_offset=args.utc_offset, detections=args.detections,
    )  # fmt: skip
    result = predict(
        args.model,
        args.data,
        args.out,
        options=options,
        tta=args.tta,
        calibration=not args.no_calibration,
        batch_size=args.batch_size,
        device=args.device,
        progress=sys.stderr.isatty(),
        out_inside_data=args.out_inside_data,
    )
    out = result.written[0]  # --out, or the file it names inside a folder (--out dir/)
    print(f"{out}: {len(result.frame)} rows ({args.format})\n  {result.describe()}")
    return 0


def _cmd_runs_verify(args: argparse.Namespace) -> int:
    from camtrap.runfolder import verify

    problems = verify(args.run_uri)
    if problems:
        print(f"{args.run_uri}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{args.run_uri}: every file run.json lists is there with its sha256")
    return 0


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=2 (repeatable)",
    )


def build_parser(add_commands: AddCommands | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camtrap", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write a synthetic dataset in the Conser-vision layout")
    p.add_argument("dir")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--small-animals",
        action="store_true",
        help="960x540 frames whose animal covers ~2%% of the frame, and detections.json (a "
        "MegaDetector batch output file) for them: train with --set data.detections="
        "detections.json --set data.crop=best",
    )
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("validate", help="check a dataset against the data contract")
    p.add_argument("--data", required=True, help="dataset root or s3://bucket/prefix")
    p.add_argument("--features-csv", default=FEATURES_CSV)
    p.add_argument("--labels-csv", default=LABELS_CSV)
    add_train_options(p)  # --set data.format=coco --set data.annotations=FILE.json, ...
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", help="validate, split, train, evaluate; resumes an interrupted run")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--out", required=True, help="output root; the run goes to OUT/STAGE/RUN_ID")
    p.add_argument("--preset", default="part1", choices=sorted(PRESETS))
    p.add_argument("--config", help="YAML file applied on top of the preset")
    p.add_argument("--run-id", help="name the run folder instead of deriving it")
    p.add_argument("--force", action="store_true", help="train again even if the run finished")
    p.add_argument(
        "--nproc",
        metavar="N|auto",
        help="training processes (DDP through torchrun; auto: one per GPU); batch_size is per "
        "process. Same as --set train.nproc=N; a run may resume with another N",
    )
    add_train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "predict", help="label photos: a submission CSV, MegaDetector JSON or Camtrap DP package"
    )
    p.add_argument(
        "--model",
        required=True,
        help="a model file, a run folder (its best model) or OUT/STAGE/latest.json (local or s3://)",
    )
    p.add_argument("--data", required=True, help="folder or s3://bucket/prefix with the photos")
    p.add_argument(
        "--input",
        default="auto",
        choices=PREDICT_INPUTS,
        help="what lists the photos: the --features CSV (conservision), every image under --data "
        "(folder), a COCO Camera Traps file (coco, with --annotations) or a Camtrap DP package; "
        "auto: the features CSV if there is one, else a package, else the folder",
    )
    p.add_argument(
        "--features",
        help=f"CSV in --data listing the photos: id, filepath, optional site (default "
        f"{TEST_FEATURES_CSV}; naming it means --input conservision)",
    )
    p.add_argument("--annotations", help="the COCO Camera Traps JSON in --data (--input coco)")
    p.add_argument(
        "--detections",
        help="the MegaDetector output for the photos, in --data: needed by a model trained on "
        "crops (data.crop=best)",
    )
    p.add_argument(
        "--format",
        default="csv",
        choices=PREDICT_FORMATS,
        help="csv: the submission format; megadetector: a MegaDetector batch file (Timelapse, "
        "AddaxAI); camtrap-dp: the input package with camtrap's observations (--out a folder)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="the file (a folder for camtrap-dp) to write, local or s3://; ending in /: the "
        "folder to write predictions.csv, predictions.json or predictions-camtrap-dp into. Never "
        "an input, nor inside --data (see --out-inside-data)",
    )
    p.add_argument(
        "--out-inside-data",
        action="store_true",
        help="allow --out inside the --data folder (it still may not overwrite an input)",
    )
    p.add_argument("--taxonomy", help="CSV class,scientificName for Camtrap DP's scientificName")
    p.add_argument(
        "--deployments",
        help="--format camtrap-dp from photos that are not a package: a Camtrap DP deployments "
        "CSV (deploymentID = each photo's site, latitude, longitude, ...)",
    )
    p.add_argument(
        "--utc-offset",
        help="the cameras' UTC offset for capture times written without one (EXIF), e.g. "
        "--utc-offset=-05:00 (with '=': a leading minus is not an option)",
    )
    p.add_argument(
        "--allow-http",
        action="store_true",
        help="fetch Camtrap DP media whose filePath is an http(s) URL (Agouti, GBIF exports)",
    )
    p.add_argument(
        "--event-gap-s",
        type=float,
        help="photos of one site this close (seconds) are one event, where the data has no "
        f"event ids (default: the model's run's predict.event_gap_s, {DEFAULT_EVENT_GAP_S:g})",
    )
    p.add_argument(
        "--event-rule",
        choices=EVENT_RULES,
        help="an event's prediction: the mean of its photos', or the most confident non-blank "
        "photo's (max-animal); default: the model's run's predict.event_rule (mean)",
    )
    p.add_argument(
        "--tta",
        default="none",
        choices=["none", "hflip"],
        help="hflip: average each photo with its mirror image",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="do not apply the temperature stored in the model file",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("runs", help="inspect finished runs")
    runs = p.add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("verify", help="check every file run.json lists (sizes and sha256)")
    p.add_argument("run_uri", help="a run folder: OUT/STAGE/RUN_ID or s3://bucket/prefix/...")
    p.set_defaults(func=_cmd_runs_verify)

    if add_commands is not None:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None, add_commands: AddCommands | None = None) -> int:
    args = build_parser(add_commands).parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except CamtrapError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last epoch", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
