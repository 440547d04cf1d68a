"""scripts/local_stack.sh as a new user runs it: start, a deployment run with CPU overrides that
the stack's worker picks up, outputs in the stack's S3, then a clean stop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_stack.sh"
CPU_OVERRIDES = {
    "model.arch": "resnet18",
    "model.weights": "none",
    "model.drop_path": 0.0,
    "data.image_size": 32,
    "data.num_workers": 0,
    "train.epochs": 2,
    "train.lr": 0.001,
}


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


def test_local_stack_runs_part1_with_cpu_overrides_and_stops_cleanly(tmp_path):
    stack_dir = tmp_path / "stack"
    s3_port, prefect_port = _two_free_ports()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))},
        "STACK_DIR": str(stack_dir),
        "PYTHON": sys.executable,
        "S3_PORT": str(s3_port),
        "PREFECT_PORT": str(prefect_port),
        "DEMO_PER_CLASS": "4",
    }
    pids: list[int] = []
    started = _stack("start", env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "s3://camtrap-data/train: 34 files" in started.stderr
        assert _stack("status", env).returncode == 0
        pids = _pids(stack_dir)
        assert len(pids) == 3

        user_env = dict(env)
        for line in (stack_dir / "env.sh").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            user_env[key] = value.strip('"')
        prefect = str(Path(sys.executable).parent / "prefect")
        run = subprocess.run(
            [prefect, "deployment", "run", "train-swin/part1", "--watch", "--watch-timeout",
             "200", "--param", f"overrides={json.dumps(CPU_OVERRIDES)}"],
            env=user_env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Flow run finished successfully in 'Completed'" in run.stdout

        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=user_env["AWS_ENDPOINT_URL"],
            aws_access_key_id=user_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=user_env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="camtrap-runs")["Contents"]]
        assert any(k.startswith("runs/part1/part1-") and k.endswith("/run.json") for k in keys)
        assert "runs/part1/latest.json" in keys  # and the run layout (test_deployment.py LAYOUT):
        assert len(keys) == 18 + 1
    finally:
        stopped = _stack("stop", env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in pids if _alive(pid)] == []
    assert _stack("status", env).returncode == 3
