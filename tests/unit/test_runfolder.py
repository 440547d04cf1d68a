"""The run folder's owner: run ids that can't escape, the resume rule (newest state wins), config
changes refused, verification, the finished layout. (The lease: test_lease.py.) No training
here: states are small dicts saved with torch.save."""

import os
from pathlib import Path

import pytest
import torch

from camtrap import runfolder, torchfile
from camtrap.errors import ConfigError, StorageError
from camtrap.runfolder import RunFiles
from camtrap.storage import files as storage_files
from camtrap.storage.files import inside


# --- run ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "run_id", ["smoke-0123abcd", "part1-x_y.z", "A", "2026-11-29", "a" * 200]
)  # fmt: skip
def test_plain_run_ids_are_accepted(run_id):
    assert runfolder.check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    ["../../escape", "..", ".", "/tmp/x", "a/b", ".hidden", "-x", "a..b", "", "a b", "a\\b",
     "a" * 201, "x\n"],
)  # fmt: skip
def test_run_ids_that_are_paths_are_refused(run_id):
    with pytest.raises(ConfigError, match="plain folder name"):
        runfolder.check_run_id(run_id)


def test_run_location_stays_inside_the_output_folder(tmp_path):
    assert runfolder.run_location(tmp_path, "smoke", "r1") == str(tmp_path / "smoke" / "r1")
    assert runfolder.run_location("s3://b/runs", "smoke", "r1") == "s3://b/runs/smoke/r1"
    with pytest.raises(ConfigError):
        runfolder.run_location(tmp_path, "..", "r1")
    with pytest.raises(ConfigError):
        runfolder.run_location(tmp_path, "smoke", "../../r1")


def test_inside_refuses_a_path_that_resolves_outside(tmp_path):
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path, tmp_path / "root" / "link")
    assert inside(tmp_path / "root", "a").name == "a"
    with pytest.raises(StorageError, match="outside"):
        inside(tmp_path / "root", "link/x")
    with pytest.raises(StorageError, match="outside"):
        inside(tmp_path / "root", "../x")


def test_pipeline_refuses_an_escaping_run_id_before_any_work(tmp_path, tiny_config):
    from camtrap import stages

    with pytest.raises(ConfigError, match="plain folder name"):
        stages.run_all(tiny_config(), tmp_path / "no-data", tmp_path / "out", run_id="../x")
    assert list(tmp_path.iterdir()) == []


# --- what may change on resume ----------------------------------------------------------------
def test_config_changes_ignore_speed_device_and_epochs():
    saved = {
        "data": {"num_workers": 4, "image_size": 224},
        "train": {"epochs": 3, "lr": 1e-5, "device": "cpu", "amp": True, "compile": False},
        "model": {"arch": "swin_t"},
    }
    now = {
        "data": {"num_workers": 0, "image_size": 224},
        "train": {"epochs": 5, "lr": 1e-5, "device": "cuda", "amp": False, "compile": True},
        "model": {"arch": "swin_t"},
    }
    assert runfolder.config_changes(saved, now) == []
    now["train"]["lr"] = 1e-4
    now["data"]["image_size"] = 64
    assert runfolder.config_changes(saved, now) == [
        "data.image_size: 224 -> 64",
        "train.lr: 1e-05 -> 0.0001",
    ]


def test_a_finished_run_is_up_to_date_unless_more_epochs_are_asked():
    info = {"status": "completed", "config": {"train": {"epochs": 3}}}
    assert runfolder.up_to_date(info, 3) and runfolder.up_to_date(info, 2)
    assert not runfolder.up_to_date(info, 4)
    assert not runfolder.up_to_date({**info, "status": "running"}, 3)
    assert not runfolder.up_to_date({}, 1)


# --- the resume rule: newest state wins ---------------------------------------------------------
def _save_state(run_dir: Path, epoch: int, files: dict[str, str] = {}) -> None:  # noqa: B006
    data = torchfile.torch_bytes({"epoch": epoch, "model": {"w": torch.full((2,), epoch)}})
    storage_files.atomic_write_bytes(run_dir / "state" / "last.pt", data)
    runfolder.write_state_info(run_dir, epoch, len(data))
    for name, text in files.items():
        storage_files.atomic_write_text(run_dir / name, text)


def test_epochs_done_reads_the_state(tmp_path):
    assert runfolder.epochs_done(tmp_path) == 0
    _save_state(tmp_path, 4)
    assert runfolder.epochs_done(tmp_path) == 4
    assert runfolder.remote_epochs_done(str(tmp_path)) == 4
    (tmp_path / "state" / "last.pt").write_bytes(b"torn")
    assert runfolder.epochs_done(tmp_path) == 0


def test_local_copy_ahead_is_uploaded_and_nothing_is_deleted(tmp_path):
    # An S3 outage: epochs 2 and 3 were never uploaded; the remote copy has epoch 1.
    remote, local = tmp_path / "remote", tmp_path / "local"
    _save_state(remote, 1, {"split.csv": "s", "final_best.pth": "best-1"})
    _save_state(local, 3, {"split.csv": "s", "final_best.pth": "best-3", "plots/x.png": "p"})
    assert runfolder.reconcile(str(remote), local) == "pushed"
    assert runfolder.epochs_done(local) == 3 and runfolder.epochs_done(remote) == 3
    assert (local / "final_best.pth").read_text() == "best-3"
    assert (remote / "final_best.pth").read_text() == "best-3"
    assert (remote / "plots" / "x.png").read_text() == "p"


def test_remote_copy_ahead_replaces_the_local_one(tmp_path):
    # Resumed on another machine meanwhile: the remote copy has epoch 5, this one epoch 2.
    remote, local = tmp_path / "remote", tmp_path / "local"
    _save_state(remote, 5, {"split.csv": "s", "final_best.pth": "best-5"})
    _save_state(local, 2, {"split.csv": "s", "final_best.pth": "best-2", "stale.txt": "x"})
    (local / ".lock").write_text("kept")
    assert runfolder.reconcile(str(remote), local) == "pulled"
    assert runfolder.epochs_done(local) == 5
    assert (local / "final_best.pth").read_text() == "best-5"
    assert not (local / "stale.txt").exists()  # an older attempt's output
    assert (local / ".lock").read_text() == "kept"  # bookkeeping is never mirrored


def test_fresh_machine_gets_the_remote_files(tmp_path):
    remote, local = tmp_path / "remote", tmp_path / "local"
    storage_files.atomic_write_text(remote / "split.csv", "s")
    assert runfolder.reconcile(str(remote), local) == "same"
    assert (local / "split.csv").read_text() == "s"


# --- verification -------------------------------------------------------------------------------
def _finished(run_dir: Path) -> None:
    storage_files.atomic_write_text(run_dir / "a.txt", "alpha")
    storage_files.atomic_write_text(run_dir / "m" / "b.txt", "beta")
    files = {
        rel: {"bytes": (run_dir / rel).stat().st_size,
              "sha256": storage_files.file_sha256(run_dir / rel)}
        for rel in ("a.txt", "m/b.txt")
    }  # fmt: skip
    runfolder.write_run_json(run_dir, {"status": "completed", "files": files})


def test_verify_finds_missing_and_changed_files(tmp_path):
    _finished(tmp_path)
    assert runfolder.verify(str(tmp_path)) == []
    (tmp_path / "a.txt").write_text("alphx")
    (tmp_path / "m" / "b.txt").unlink()
    assert runfolder.verify(str(tmp_path)) == [
        "a.txt: sha256 differs from run.json",
        "m/b.txt: missing",
    ]
    assert "does not exist" in runfolder.verify(str(tmp_path / "nothing"))[0]


def test_cli_runs_verify(tmp_path, capsys):
    from camtrap.cli import main

    _finished(tmp_path)
    assert main(["runs", "verify", str(tmp_path)]) == 0
    (tmp_path / "a.txt").write_text("x")
    assert main(["runs", "verify", str(tmp_path)]) == 1
    assert "a.txt: 1 bytes, run.json says 5" in capsys.readouterr().err


def test_a_finished_run_folder_holds_these_eighteen_files():
    # The layout other suites compare whole run folders with (tests/e2e, tests/integration).
    assert RunFiles(Path("/r"), "swin_t", "part1").finished_layout() == [
        "final_swin_t_model_part1.pth",
        "final_swin_t_model_part1_best.pth",
        "final_swin_t_model_part1_best_logloss.pth",
        "metrics/confusion_matrix.csv",
        "metrics/epochs.csv",
        "metrics/per_class.csv",
        "metrics/per_site.csv",
        "plots/calibration.png",
        "plots/class_f1.png",
        "plots/class_precision.png",
        "plots/class_recalls.png",
        "plots/confusion_matrix.png",
        "plots/curves.png",
        "predictions/val.csv",
        "run.json",
        "split.csv",
        "state/last.json",
        "state/last.pt",
    ]


# A run.json torn by a copy or edited by hand: verify reports it as the run's problem (exit 1),
# never a traceback.
DAMAGED_RUN_JSON = {
    "truncated": ('{"status": "completed", "files": {"a.txt": {"bytes": 5, "sha',
                  "is not JSON at byte 56 of 60 (unterminated string)"),
    "not an object": ('["a.txt", "m/b.txt"]', "is not a JSON object (it holds a list)"),
    "no files": ('{"status": "completed"}', 'has no "files" list'),
    "an entry without its sha256": ('{"status": "completed", "files": {"a.txt": {"bytes": 5}}}',
                                    "lists 'a.txt' without \"bytes\" and \"sha256\""),
}  # fmt: skip


@pytest.mark.parametrize("case", DAMAGED_RUN_JSON)
def test_verify_reports_a_damaged_run_json(tmp_path, case):
    _finished(tmp_path)
    text, what = DAMAGED_RUN_JSON[case]
    (tmp_path / "run.json").write_text(text)
    (problem,) = runfolder.verify(str(tmp_path))
    assert problem.startswith(f"run.json is damaged: {tmp_path / 'run.json'} {what}")
    assert "fix: restore it from the run's copy in output_uri" in problem


@pytest.mark.parametrize("case", DAMAGED_RUN_JSON)
def test_cli_runs_verify_lists_a_damaged_run_json_as_the_runs_problem(tmp_path, capsys, case):
    from camtrap.cli import main

    _finished(tmp_path)
    text, what = DAMAGED_RUN_JSON[case]
    (tmp_path / "run.json").write_text(text)
    assert main(["runs", "verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"1 problem(s)\n  - run.json is damaged: {tmp_path / 'run.json'} {what}" in err
    assert "Traceback" not in err


def test_verify_says_a_run_that_has_not_finished_lists_no_files_yet(tmp_path):
    runfolder.write_run_json(tmp_path, {"status": "running", "config": {}})
    (problem,) = runfolder.verify(str(tmp_path))
    assert "the run has not finished (status 'running')" in problem


@pytest.mark.parametrize("text", ['{"status": "runn', "[]", "\xff".encode("latin-1")])
def test_reading_a_damaged_run_json_names_it_and_the_fix(tmp_path, text):
    path = tmp_path / "run.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(StorageError, match=r"run\.json is damaged: .*run\.json .*fix: restore"):
        runfolder.read_run_json(tmp_path)
