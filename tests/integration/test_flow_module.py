"""`python -m flows.train_swin` with no Prefect server configured (Prefect starts a temporary
one) on local folders: the path `camtrap demo` and a laptop user take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = [
    "--preset", "smoke",
    "--set", "data.image_size=32",
    "--set", "data.num_workers=0",
    "--set", "train.epochs=2",
    "--set", "train.batch_size=8",
]  # fmt: skip


def _run_module(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        CAMTRAP_CACHE_DIR=str(tmp_path / "cache"),
    )
    return subprocess.run(
        [sys.executable, "-m", "flows.train_swin", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_module_runs_the_flow_on_local_folders_without_a_server(demo_dir, tmp_path):
    out = tmp_path / "runs"
    proc = _run_module(["--data", str(demo_dir), "--out", str(out), *TINY_ARGS], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir.parent == out / "smoke" and run_dir.name.startswith("smoke-")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed"
    assert all((run_dir / name).is_file() for name in info["files"])
    assert (run_dir / "final_resnet18_model_smoke_best.pth").is_file()
    # local data and outputs are used in place: the cache holds only the decoded images
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["images"]


def test_module_exits_2_naming_a_missing_data_folder(tmp_path):
    proc = _run_module(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)], tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {tmp_path / 'nowhere'} is not a folder — fix: ")


def test_camtrap_demo_runs_the_flow_end_to_end(tmp_path):
    # The README's Run command, made tiny: demo data + the flow with a temporary Prefect server.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), CAMTRAP_CACHE_DIR=str(tmp_path / "c"))
    camtrap = Path(sys.executable).parent / "camtrap"
    args = [a for a in TINY_ARGS if a not in ("--preset", "smoke")]
    proc = subprocess.run(
        [str(camtrap), "demo", "--dir", str(tmp_path / "demo"), "--per-class", "4", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "demo" / "runs" / "smoke").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("smoke-")
    info = json.loads((runs[0] / "run.json").read_text())
    assert info["status"] == "completed" and len(info["classes"]) == 8
    assert "Flow run" in proc.stderr + proc.stdout  # it went through Prefect, not the library alone
