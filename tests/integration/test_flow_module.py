"""`python -m flows.train_swin` with no Prefect server configured (Prefect starts a temporary
one) on local folders: the path `camtrap demo` and a laptop user take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = [
    "--preset", "smoke",
    "--set", "model.arch=mobilenet_v3_small",
    "--set", "data.image_size=32",
    "--set", "data.num_workers=0",
    "--set", "train.epochs=2",
    "--set", "train.batch_size=8",
]  # fmt: skip


def _run_module(
    args: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        CAMTRAP_CACHE_DIR=str(tmp_path / "cache"),
    )
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "flows.train_swin", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_module_exits_2_naming_a_missing_data_folder(tmp_path):
    proc = _run_module(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)], tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {tmp_path / 'nowhere'} is not a folder — fix: ")


# --- a brand-new machine: Prefect's temporary server creates its database on its first start ---

# Put on PYTHONPATH, it runs at the start of every Python process of the test (the flow, the
# temporary server, `prefect server database upgrade`) and slows what the environment asks for.
SLOW_SITECUSTOMIZE = """
import os, sqlite3, sys, time

def _migrated(db):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            query = "select 1 from sqlite_master where name = 'alembic_version'"
            return conn.execute(query).fetchone() is not None
    except sqlite3.Error:
        return False

if os.environ.get("SLOW_FIRST_MIGRATION_DB"):  # the first migration takes 25 s longer, anywhere
    import alembic.command

    _upgrade = alembic.command.upgrade

    def upgrade(*args, **kwargs):
        if not _migrated(os.environ["SLOW_FIRST_MIGRATION_DB"]):
            with open(os.environ["SLOW_FIRST_MIGRATION_DB"] + ".slowed", "a") as log:
                print(sys.argv, file=log)  # the test checks that the slowdown did happen
            time.sleep(25)
        return _upgrade(*args, **kwargs)

    alembic.command.upgrade = upgrade

# Only in Prefect's temporary server: Prefect sets PREFECT__SERVER_EPHEMERAL for it.
if os.environ.get("SLOW_SERVER_START") and os.environ.get("PREFECT__SERVER_EPHEMERAL") == "1":
    with open(os.environ["SLOW_SERVER_START"], "a") as log:
        print(sys.argv, file=log)
    time.sleep(60)
"""


def _slow(tmp_path: Path, **env: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_SITECUSTOMIZE)
    return {"PYTHONPATH": str(site), **env}


@pytest.mark.slow
def test_camtrap_demo_on_a_fresh_machine_waits_for_a_slow_first_migration(tmp_path):
    # The README's Run command, made tiny, where Prefect never ran: no PREFECT_* settings, a new
    # PREFECT_HOME. Seen: on 2 busy cores the temporary server migrated its new database for
    # longer than Prefect's 20 s startup deadline; the run died with "Timed out ...".
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(PREFECT_HOME=str(home), CAMTRAP_CACHE_DIR=str(tmp_path / "cache"))
    env.update(_slow(tmp_path, SLOW_FIRST_MIGRATION_DB=str(home / "prefect.db")))
    camtrap = Path(sys.executable).parent / "camtrap"
    args = [a for a in TINY_ARGS if a not in ("--preset", "smoke")]
    proc = subprocess.run(
        [str(camtrap), "demo", "--dir", str(tmp_path / "demo"), "--per-class", "4", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Timed out" not in proc.stdout + proc.stderr
    assert (home / "prefect.db.slowed").is_file()  # it was slow
    assert "Flow run" in proc.stderr + proc.stdout  # it went through Prefect, not the library alone
    # ... and ran the flow (`python -m flows.train_swin`) on the local folders, complete
    stage = tmp_path / "demo" / "runs" / "smoke"
    runs = [p for p in stage.iterdir() if p.is_dir() and p.name[0] != "."]  # not .leases
    assert len(runs) == 1 and runs[0].name.startswith("smoke-")
    assert list((stage / ".leases").iterdir()) == []  # released when the flow ended
    info = json.loads((runs[0] / "run.json").read_text())
    assert info["status"] == "completed" and len(info["classes"]) == 8
    assert all((runs[0] / name).is_file() for name in info["files"])
    # local data and outputs are used in place: the cache holds only the decoded images
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["images"]
    # The summary a first-time user reads: where the run is, how good, what to open, the UI.
    summary = proc.stdout.splitlines()
    assert f"Run folder: {runs[0]}" in summary
    val = info["val"]
    best = f"val accuracy {val['accuracy']:.4f}, val log loss {val['log_loss']:.4f}"
    assert f"Best epoch {info['best_epoch']} of 2: {best}" in summary
    for name in (
        "metrics/epochs.csv",
        "plots/curves.png",
        "final_mobilenet_v3_small_model_smoke_best.pth",
    ):
        assert any(line.startswith(f"  {name}  ") for line in summary), name
    assert any("server start`, then open http://127.0.0.1:4200" in line for line in summary)


@pytest.mark.slow
def test_a_prefect_home_that_cannot_hold_a_database_is_one_error_line(demo_dir, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    home = tmp_path / "a-file" / "prefect-home"
    proc = _run_module(
        ["--data", str(demo_dir), "--out", str(tmp_path / "runs"), *TINY_ARGS],
        tmp_path, {"PREFECT_HOME": str(home)},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: could not create or migrate Prefect's database in {home}")
    assert "fix: check that PREFECT_HOME" in errors[0] and "PREFECT_API_URL" in errors[0]


@pytest.mark.slow
def test_the_users_startup_timeout_wins_and_a_late_server_is_one_error_line(demo_dir, tmp_path):
    env = _slow(
        tmp_path,
        SLOW_SERVER_START=str(tmp_path / "server.slowed"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="3",
        PREFECT_SERVER_DATABASE_MIGRATE_ON_START="false",  # no database needed to time out
    )
    args = ["--data", str(demo_dir), "--out", str(tmp_path / "runs"), *TINY_ARGS]
    proc = _run_module(args, tmp_path, env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("error: Prefect's temporary server did not start within 3 s")
    assert "PREFECT_API_URL" in errors[0]
    assert (tmp_path / "server.slowed").is_file()  # it was the server that was late
    assert not (tmp_path / "runs").exists()  # nothing ran


def _settings(monkeypatch, tmp_path: Path, **env: str):
    """Prefect's settings as a process with only these PREFECT_* variables would read them."""
    from prefect.settings import Settings

    for key in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_startup_timeout_is_long_unless_the_user_set_one(monkeypatch, tmp_path):
    from flows.local_prefect import STARTUP_TIMEOUT_S, startup_timeout_s

    assert startup_timeout_s(_settings(monkeypatch, tmp_path)) == STARTUP_TIMEOUT_S == 600
    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "20"}  # even Prefect's default
    assert startup_timeout_s(_settings(monkeypatch, tmp_path, **env)) == 20
    (tmp_path / "home").mkdir()
    profile = '[profiles.mine]\nPREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "45"\n'
    (tmp_path / "home" / "profiles.toml").write_text(f'active = "mine"\n{profile}')
    assert startup_timeout_s(_settings(monkeypatch, tmp_path)) == 45


def test_nothing_is_prepared_when_an_api_url_is_configured(monkeypatch, tmp_path):
    import flows.local_prefect as local_prefect

    def fail(*args, **kwargs):
        raise AssertionError("a configured API needs no temporary server")

    monkeypatch.setattr(local_prefect, "migrate_database", fail)
    monkeypatch.setattr(local_prefect, "start_temporary_server", fail)
    settings = _settings(monkeypatch, tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api")
    local_prefect.prepare_temporary_server(settings)
