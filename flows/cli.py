"""The `camtrap` console script: the library's commands (camtrap.cli) and `demo`, which writes the
demo data and runs the flow `train-swin` on it, then prints the run's summary and where to see it
in the Prefect UI.

    camtrap demo                 the flow, with a temporary Prefect server unless one is set
    camtrap demo --no-prefect    the same training with the library alone"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from camtrap import cli
from camtrap.config import LABELS_CSV
from camtrap.report import run_summary

log = logging.getLogger("camtrap")

PREFECT_UI_URL = "http://127.0.0.1:4200"


def add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="write demo data and run the flow train-swin on it (CPU)")
    p.add_argument("--dir", default="camtrap-demo", help="where demo data and runs go")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--no-prefect", action="store_true", help="train with the library alone")
    cli.add_train_options(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from camtrap.demo import write_demo_dataset

    data, runs = Path(args.dir) / "data", Path(args.dir) / "runs"
    if not (data / LABELS_CSV).exists():
        write_demo_dataset(data, per_class=args.per_class, seed=0)
        log.info("wrote demo data to %s", data)
    if args.no_prefect:
        summary = cli.run_library(data, runs, "smoke", None, args.set)
        print(run_summary(summary.run_dir))
        return 0
    code, run_dir = _run_flow_module(data, runs, args.set)
    if code == 0 and run_dir is not None:
        ui = prefect_ui_lines(_prefect_command(), os.environ.get("PREFECT_API_URL"), run_dir.name)
        print("\n".join([run_summary(run_dir), *ui]))
    return code


def _run_flow_module(data: Path, runs: Path, overrides: list[str]) -> tuple[int, Path | None]:
    """The flow `train-swin` (preset smoke) as `python -m flows.train_swin`, in a child process
    of its own: its temporary Prefect server lives and ends with it. Returns the child's exit
    status and the run folder it printed last (None when it failed)."""
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


def prefect_ui_lines(prefect_command: str, api_url: str | None, run_id: str) -> list[str]:
    """How to see the run in the Prefect UI: the server at `api_url` (PREFECT_API_URL) when the
    run went there, else the temporary server's history. The flow run is named after the run id
    (the folder's name)."""
    if api_url:
        url = api_url.removesuffix("/api")
        return [f"In the Prefect UI: open {url} (PREFECT_API_URL), flow run {run_id}"]
    # The temporary server kept the run's history in PREFECT_HOME's database, which a
    # `prefect server start` with the same PREFECT_HOME serves.
    return [
        f"In the Prefect UI: run `{prefect_command} server start`, then open {PREFECT_UI_URL}",
        f"  (flow run {run_id}, kept in PREFECT_HOME's database: ~/.prefect unless set)",
    ]


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, add_commands=add_demo)


if __name__ == "__main__":
    sys.exit(main())
