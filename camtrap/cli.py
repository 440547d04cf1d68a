"""`camtrap` command line: demo-data, validate, train, predict, demo, runs verify.

User errors (bad data, config, paths) print a plain report and exit 2 — never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from camtrap.config import PRESETS, build_config
from camtrap.errors import CamtrapError, ConfigError

if TYPE_CHECKING:
    from camtrap.pipeline import RunSummary

log = logging.getLogger("camtrap")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from camtrap.demo import write_demo_dataset

    root = write_demo_dataset(args.dir, per_class=args.per_class, seed=args.seed)
    print(f"wrote a demo dataset to {root}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from camtrap.labels import validate_dataset

    root = args.data
    if "://" in root:  # s3://bucket/prefix: fetch (ETag-cached) and check the local copy
        from camtrap import storage

        cache = storage.cache_path_for(root, storage.default_cache_root() / "data")
        root = storage.fetch_dataset(root, cache, args.features_csv, args.labels_csv)
    data, problems = validate_dataset(root, args.features_csv, args.labels_csv)
    if problems:
        from camtrap.errors import DataError

        print(DataError(problems, root=str(args.data)), file=sys.stderr)
        return EXIT_USER_ERROR
    counts = data.frame["label"].value_counts().reindex(data.classes, fill_value=0)
    print(f"{args.data}: {len(data.frame)} images, {len(data.classes)} classes, no problems")
    for name, count in counts.items():
        print(f"  {name:<24} {count}")
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


def _run_library(
    data: Path, out: Path, preset: str, config_file, overrides, run_id, force
) -> RunSummary:
    from camtrap.pipeline import run_all

    config = build_config(preset, config_file, overrides)
    return run_all(config, data, out, run_id=run_id, force=force)


def _cmd_train(args: argparse.Namespace) -> int:
    _refuse_uris(data=args.data, out=args.out)
    overrides = [*args.set, *([f"train.nproc={args.nproc}"] if args.nproc else [])]
    summary = _run_library(
        Path(args.data), Path(args.out), args.preset, args.config, overrides, args.run_id,
        args.force,
    )  # fmt: skip
    val = "  ".join(f"{k} {v:.4f}" for k, v in summary.val.items())
    print(f"{summary.status}: {summary.run_dir}\n  best epoch {summary.best_epoch}: {val}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from camtrap.predict import predict

    result = predict(
        args.model,
        args.data,
        args.out,
        features_csv=args.features,
        tta=args.tta,
        calibration=not args.no_calibration,
        batch_size=args.batch_size,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    print(f"{args.out}: {len(result.frame)} rows\n  {result.describe()}")
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from camtrap.demo import write_demo_dataset
    from camtrap.report import run_summary

    data, runs = Path(args.dir) / "data", Path(args.dir) / "runs"
    if not (data / "train_labels.csv").exists():
        write_demo_dataset(data, per_class=args.per_class, seed=0)
        log.info("wrote demo data to %s", data)
    if args.no_prefect:
        summary = _run_library(data, runs, "smoke", None, args.set, None, False)
        print(run_summary(summary.run_dir))
        return 0
    code, run_dir = _run_flow_module(data, runs, args.set)
    if code == 0 and run_dir is not None:
        print(run_summary(run_dir, _prefect_command(), os.environ.get("PREFECT_API_URL")))
    return code


def _run_flow_module(data: Path, runs: Path, overrides: list[str]) -> tuple[int, Path | None]:
    """The flow `train-swin` (preset smoke) in a child process: the library itself never imports
    Prefect. With no server configured, the child starts a temporary one. Returns the child's
    exit status and the run folder it printed last (None when it failed)."""
    command = [sys.executable, "-m", "flows.train_swin", "--data", str(data), "--out", str(runs),
               "--preset", "smoke", *[arg for s in overrides for arg in ("--set", s)]]  # fmt: skip
    # A laptop demo sends nothing anywhere: no analytics from the temporary server.
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **os.environ}
    # stdout through a file, not a pipe: the temporary server inherits it, and a pipe it held
    # open after the child's end would keep us waiting.
    with tempfile.TemporaryFile("w+") as out:
        code = subprocess.run(command, check=False, env=env, stdout=out).returncode
        out.seek(0)
        printed = out.read()
    lines = printed.rstrip().splitlines(keepends=True)
    if code != 0 or not lines:
        sys.stdout.write(printed)
        return code, None
    sys.stdout.write("".join(lines[:-1]))  # its last line, the run folder, heads the summary
    return code, Path(lines[-1].strip())


def _prefect_command() -> str:
    """The `prefect` executable beside this Python, relative to the current folder if inside."""
    path = Path(sys.executable).parent / "prefect"
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=2 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camtrap", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write a synthetic dataset in the Conser-vision layout")
    p.add_argument("dir")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("validate", help="check a dataset against the data contract")
    p.add_argument("--data", required=True, help="dataset root or s3://bucket/prefix")
    p.add_argument("--features-csv", default="train_features.csv")
    p.add_argument("--labels-csv", default="train_labels.csv")
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
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="label photos: class probabilities in submission format")
    p.add_argument(
        "--model",
        required=True,
        help="a model file, a run folder (its best model) or OUT/STAGE/latest.json (local or s3://)",
    )
    p.add_argument("--data", required=True, help="folder or s3://bucket/prefix with the photos")
    p.add_argument(
        "--features",
        default="test_features.csv",
        help="CSV in --data listing the photos: id, filepath, optional site",
    )
    p.add_argument("--out", required=True, help="the CSV to write (local path or s3:// URI)")
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

    p = sub.add_parser("demo", help="write demo data and run the flow train-swin on it (CPU)")
    p.add_argument("--dir", default="camtrap-demo", help="where demo data and runs go")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--no-prefect", action="store_true", help="train with the library alone")
    _add_train_options(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
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
