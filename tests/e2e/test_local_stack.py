"""The product path, as a user runs it: scripts/local_stack.sh starts S3 (moto), `prefect server
start`, the process work pool `gpu-pool`, `prefect deploy` of deployments/prefect.yaml and a
worker; `prefect deployment run train-swin/part1 --watch` with tiny CPU overrides runs on that
worker and writes its run folder, artifacts and logs; the same run again hits the caches; then
the stack stops cleanly."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from camtrap.runfolder import RunFiles

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_stack.sh"
# part1 shrunk to a CPU run of seconds: a small model from scratch on 32 px images, 2 epochs.
CPU_OVERRIDES = {
    "model.arch": "mobilenet_v3_small",
    "model.weights": "none",
    "model.drop_path": 0.0,
    "data.image_size": 32,
    "data.num_workers": 0,
    "train.epochs": 2,
    "train.lr": 0.001,
    "train.progress": False,
}
# Every file of a finished run folder (the layout's one owner is camtrap.runfolder.RunFiles).
LAYOUT = RunFiles(Path(), "mobilenet_v3_small", "part1").finished_layout()
ARTIFACT_KEYS = sorted(
    f"train-swin-part1-{what}"
    for what in ("progress", "epochs", "per-class", "summary", "plots", "history",
                 "run-folder", "best-model", "epochs-csv", "plots-folder")
)  # fmt: skip
DATA_TASKS = ("fetch-metadata", "fetch-images", "validate-and-split")


def _stack(command: str, env: dict[str, str], timeout: float = 240):
    return subprocess.run(
        ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout
    )


def _pids(stack_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in stack_dir.glob("*.pid")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _two_free_ports() -> tuple[int, int]:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def _user_env(env: dict[str, str], stack_dir: Path) -> dict[str, str]:
    """The environment after `source $STACK_DIR/env.sh`, as the script tells the user."""
    user_env = dict(env)
    for line in (stack_dir / "env.sh").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        user_env[key] = value.strip('"')
    return user_env


def _run_part1(user_env: dict[str, str], cwd: Path) -> uuid.UUID:
    """`prefect deployment run train-swin/part1 --watch` with the CPU overrides: the stack's
    worker runs it; returns the flow run's id once it completed."""
    prefect = str(Path(sys.executable).parent / "prefect")
    run = subprocess.run(
        [prefect, "deployment", "run", "train-swin/part1", "--watch", "--watch-interval", "1",
         "--watch-timeout", "200", "--param", f"overrides={json.dumps(CPU_OVERRIDES)}"],
        env=user_env, capture_output=True, text=True, timeout=240, cwd=cwd,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Flow run finished successfully in 'Completed'" in run.stdout
    match = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout)
    assert match, run.stdout
    return uuid.UUID(match.group(1))


def test_local_stack_runs_part1_twice_the_second_time_from_the_caches(
    tmp_path, migrated_prefect_home, read_run_at
):
    stack_dir = tmp_path / "stack"
    # The stack's server starts from a migrated database: its first migration is the first-run
    # test's subject (tests/integration/test_flow_module.py), and 10 CPU-seconds here.
    shutil.copytree(migrated_prefect_home, stack_dir / "prefect-home")
    s3_port, prefect_port = _two_free_ports()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))},
        "STACK_DIR": str(stack_dir),
        "PYTHON": sys.executable,
        "S3_PORT": str(s3_port),
        "PREFECT_PORT": str(prefect_port),
        "DEMO_PER_CLASS": "4",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # the stack's worker polls every 2 s, not 10
    }
    pids: list[int] = []
    started = _stack("start", env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "s3://camtrap-data/train: 34 files" in started.stderr
        assert _stack("status", env).returncode == 0
        pids = _pids(stack_dir)
        assert len(pids) == 3
        user_env = _user_env(env, stack_dir)

        api_url = user_env["PREFECT_API_URL"]
        deployed = _deployments(api_url)
        assert {"train-swin/part1", "train-swin/smoke", "predict-swin/part1"} <= deployed
        first = read_run_at(api_url, _run_part1(user_env, tmp_path))
        run_id = first.name  # the flow run is named after the run folder
        assert re.fullmatch(r"part1-[0-9a-f]{12}", run_id)
        prefix = f"runs/part1/{run_id}/"
        latest = "runs/part1/latest.json"  # the stage's pointer to its newest finished run
        s3 = _s3(user_env)
        assert _keys(s3) == [latest, *[prefix + name for name in LAYOUT]]  # nothing more
        body = s3.get_object(Bucket="camtrap-runs", Key=prefix + "run.json")["Body"]
        info = json.loads(body.read())
        assert info["status"] == "completed"
        assert sorted(info["files"]) == [f for f in LAYOUT if f != "run.json"]
        assert user_env["AWS_ENDPOINT_URL"] not in json.dumps(info)

        assert sorted(a.key for a in first.artifacts) == ARTIFACT_KEYS  # stable, one card each
        progress = [a for a in first.artifacts if a.key == "train-swin-part1-progress"]
        assert [a.type for a in progress] == ["progress"] and progress[0].data == 100.0
        assert any("memory epoch 2 end" in line for line in first.logs)
        assert set(first.tasks) >= {*DATA_TASKS, "train"}

        # The same deployment again on unchanged data: fetch/validate/split come from the
        # cache, the finished run is not trained again, nothing in S3 changes.
        second = read_run_at(api_url, _run_part1(user_env, tmp_path))
        assert {name: second.tasks[name] for name in DATA_TASKS} == dict.fromkeys(
            DATA_TASKS, ["Cached"]
        ), second.tasks
        assert "train" not in second.tasks
        assert second.name == run_id
        assert _keys(s3) == [latest, *[prefix + name for name in LAYOUT]]
    finally:
        stopped = _stack("stop", env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in pids if _alive(pid)] == []
    assert _stack("status", env).returncode == 3


def _deployments(api_url: str) -> set[str]:
    """flow/deployment names on the Prefect server at api_url."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = temporary_settings(updates={PREFECT_API_URL: api_url})
    with settings, get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments()}


def _s3(user_env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=user_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=user_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=user_env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def _keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="camtrap-runs")["Contents"])
