"""camtrap.latest: a stage's latest.json pointer, written when a run finishes, and the model
URIs it resolves (a file, a run folder, a stage folder, the pointer)."""

import json
import re
from pathlib import Path

import pytest

from camtrap import latest, runfolder
from camtrap.errors import ConfigError, StorageError
from camtrap.storage import StorageNotFound


@pytest.fixture
def model_file(tmp_path) -> Path:
    """A best model file's stand-in: the pointer names it, nothing here loads it."""
    path = tmp_path / "model" / "final_resnet18_model_part1_best.pth"
    path.parent.mkdir()
    path.write_bytes(b"a model")
    return path


def test_latest_json_points_at_the_run_that_finished_last(model_file, tmp_path, make_finished_run):
    out = tmp_path / "runs"
    assert latest.read_latest(out, "part1") is None
    first = make_finished_run(out, "part1-aaa", model_file)
    second = make_finished_run(out, "part1-bbb", model_file)
    location = latest.write_latest(first, runfolder.read_run_json(first))
    assert location == str(out / "part1" / "latest.json")
    assert latest.read_latest(out, "part1") == {
        "run_id": "part1-aaa",
        "run_uri": str(first.resolve()),
        "stage": "part1",
        "finished": "2026-01-02T03:04:05Z",
        "data_fingerprint": "fp-part1-aaa",
        "best_model": "final_resnet18_model_part1_best.pth",
        "best_logloss_model": None,
    }
    info = runfolder.read_run_json(second)
    info["files"]["final_resnet18_model_part1_best_logloss.pth"] = {"bytes": 1, "sha256": "y"}
    latest.write_latest(second, info)
    pointer = latest.read_latest(out, "part1")
    assert pointer["run_id"] == "part1-bbb"
    assert pointer["best_logloss_model"] == "final_resnet18_model_part1_best_logloss.pth"
    assert [p.name for p in (out / "part1").iterdir() if p.name.startswith(".latest")] == []


def test_resolve_model_uri_maps_files_runs_stage_folders_and_pointers(
    model_file, tmp_path, make_finished_run
):
    out = tmp_path / "runs"
    run_dir = make_finished_run(out, "part1-aaa", model_file)
    best = str(run_dir / "final_resnet18_model_part1_best.pth")
    with pytest.raises(StorageNotFound, match="no run of this stage has finished there yet"):
        latest.resolve_model_uri(out / "part1" / "latest.json")
    latest.write_latest(run_dir, runfolder.read_run_json(run_dir))
    assert latest.resolve_model_uri(best) == best
    assert latest.resolve_model_uri(run_dir) == best
    assert latest.resolve_model_uri(f"{run_dir}/") == best
    assert latest.resolve_model_uri(out / "part1" / "latest.json") == best
    assert latest.resolve_model_uri(out / "part1") == best
    with pytest.raises(StorageNotFound, match="fix: pass a model file"):
        latest.resolve_model_uri(tmp_path / "nothing.pth")


def test_an_unfinished_run_or_a_broken_pointer_is_refused_with_a_fix(
    model_file, tmp_path, make_finished_run
):
    out = tmp_path / "runs"
    running = make_finished_run(out, "part1-run", model_file, status="running")
    with pytest.raises(StorageError, match="has not finished"):
        latest.resolve_model_uri(running)
    pointer = out / "part1" / "latest.json"
    for text in ["{", json.dumps({"run_id": "../../x", "best_model": "m.pth"})]:
        pointer.write_text(text)
        with pytest.raises(StorageError, match="not a latest-run pointer.*fix: delete it"):
            latest.resolve_model_uri(pointer)


def test_the_pointers_name_is_no_run_id():
    with pytest.raises(ConfigError, match="reserved"):
        runfolder.check_run_id("latest.json")


@pytest.mark.parametrize(
    "text, what",
    [
        (
            '{"run_id": "part1-run", "status": "compl',
            "is not JSON at byte 34 of 40 (unterminated string)",
        ),
        ('"completed"', "is not a JSON object (it holds a string)"),
        ('{"run_id": "part1-run", "files": {}}', 'has no "status"'),
    ],
)
def test_a_damaged_run_json_is_reported_not_a_traceback(
    model_file, tmp_path, make_finished_run, text, what
):
    run_dir = make_finished_run(tmp_path / "runs", "part1-run", model_file)
    (run_dir / "run.json").write_text(text)
    with pytest.raises(
        StorageError, match=re.escape(f"run.json is damaged: {run_dir}/run.json {what}")
    ):
        latest.resolve_model_uri(run_dir)
