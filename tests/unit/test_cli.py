"""The command line as a user meets it: exit codes and plain error reports (kill -9 and rerun:
tests/faults/test_kill.py)."""

import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from camtrap import cli
from camtrap.cli import main

TINY_SET = [
    "data.image_size=32",
    "data.num_workers=0",
    "train.batch_size=8",
    "train.progress=false",
]


def _sets(*extra):
    return [arg for s in [*TINY_SET, *extra] for arg in ("--set", s)]


def test_validate_clean_dataset_exits_0(demo_root, capsys):
    assert main(["validate", "--data", str(demo_root)]) == 0
    assert "32 images, 8 classes, no problems" in capsys.readouterr().out


def test_validate_with_detections_says_what_the_model_will_see(ena24_root, capsys):
    """ena24_mini's real MegaDetector output: 13 of its 21 boxes are above 0.9."""
    md = ["--set", "data.detections=annotations/megadetector.json"]
    assert main(["validate", "--data", str(ena24_root), *md, "--set", "data.crop=best",
                 "--set", "data.detection_threshold=0.9"]) == 0  # fmt: skip
    assert ("crops (annotations/megadetector.json): 13 animal boxes on 13 images; 8 keep their "
            "whole frame") in capsys.readouterr().out  # fmt: skip
    assert main(["validate", "--data", str(ena24_root), *md, "--set", "data.crop=all"]) == 0
    assert "21 animal boxes on 21 images; 0 keep" in capsys.readouterr().out


@pytest.mark.slow  # a second Python process: several seconds
def test_train_on_bad_data_prints_a_report_not_a_traceback(tmp_path, demo_root):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train_features.csv").write_text("id,filepath,site\nx1,img/x1.jpg,S1\n")
    (bad / "train_labels.csv").write_text("id,cat,dog\nx1,1.0,1.0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "camtrap.cli", "train", "--data", str(bad), "--out",
         str(tmp_path / "out"), "--preset", "smoke"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "train_features.csv" in proc.stderr or "train_labels.csv" in proc.stderr
    assert "x1" in proc.stderr  # the id of the bad row is named
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_bad_override_is_a_one_line_error(capsys, demo_root, tmp_path):
    code = main(
        ["train", "--data", str(demo_root), "--out", str(tmp_path), "--set", "train.epoch=2"]
    )
    assert code == 2
    assert "train.epoch" in capsys.readouterr().err


def test_train_with_an_s3_uri_points_to_the_flow(capsys, tmp_path):
    code = main(["train", "--data", "s3://bucket/data", "--out", str(tmp_path)])
    assert code == 2
    assert "python -m flows.train_swin" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no local folder named "s3:" was made


@pytest.mark.slow
def test_smoke_preset_clearly_learns_the_demo_data(tmp_path):
    from camtrap.demo import write_demo_dataset

    # The smoke recipe (resnet18 from scratch, AdamW 5e-4, batch 32) on `camtrap demo`'s data,
    # at 32 px instead of 64 and for its first 8 epochs of 15: about a seventh of the compute
    # (3 CPU-minutes at 64 px), and the recipe, not the resolution, is what this checks.
    data = write_demo_dataset(tmp_path / "data", per_class=40, seed=0)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--preset", "smoke",
                 "--set", "data.image_size=32", "--set", "train.epochs=8",
                 "--set", "train.progress=false"])  # fmt: skip
    assert code == 0
    epochs = pd.read_csv(next(tmp_path.glob("runs/smoke/*/metrics/epochs.csv")))
    val = epochs[epochs.split == "val"]
    # 8 classes: chance is 0.125. Measured here at 32 px: 0.16 after epoch 1, then 0.19, 0.21,
    # 0.30, 0.39, 0.51, 0.64, 0.53 (15 epochs: best 0.71; `camtrap demo` at 64 px: 0.84).
    assert val.accuracy.max() >= 0.5
    assert val.loss.min() < val.loss.iloc[0]


@pytest.mark.slow
def test_a_diverging_run_stops_with_a_fix_not_a_traceback(tmp_path, demo_root, capsys):
    # Reproduced before: `--set train.lr=1e30` ended in "ValueError: probs must be finite".
    code = main(
        ["train", "--data", str(demo_root), "--out", str(tmp_path), "--preset", "smoke",
         "--set", "train.lr=1e30", "--set", "train.epochs=2", "--set", "data.image_size=32",
         "--set", "train.batch_size=8", "--set", "train.progress=false"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "not finite" in err or "diverged" in err
    assert "fix: lower train.lr" in err or "lower train.lr" in err
    assert "Traceback" not in err


def test_an_escaping_run_id_is_refused_and_nothing_is_written(tmp_path, demo_root, capsys):
    out = tmp_path / "a" / "b" / "out"
    for run_id in ("../../escape", str(tmp_path / "abs")):
        assert main(["train", "--data", str(demo_root), "--out", str(out), "--run-id", run_id]) == 2
        assert "plain folder name" in capsys.readouterr().err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing, anywhere


def test_cli_nproc_becomes_the_train_nproc_override(monkeypatch, tmp_path):
    seen = {}

    def fake_run(data, out, preset, config_file, overrides, run_id, force):
        seen["overrides"] = overrides
        return SimpleNamespace(val={}, status="completed", run_dir=out, best_epoch=1)

    monkeypatch.setattr(cli, "run_library", fake_run)
    monkeypatch.setattr(cli, "setup_logging", lambda verbose: None)  # the logger stays as is
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path), "--nproc", "auto"]
    assert cli.main([*argv, "--set", "train.epochs=2"]) == 0
    assert seen["overrides"] == ["train.epochs=2", "train.nproc=auto"]
    assert cli.main(argv[:-2]) == 0
    assert seen["overrides"] == []


@pytest.mark.parametrize(
    "text, what",
    [
        (
            '{"run_id": "part1-run", "status": "compl',
            "is not JSON at byte 34 of 40 (unterminated string)",
        ),
        ("[1, 2]", "is not a JSON object (it holds a list)"),
        ('{"run_id": "part1-run"}', 'has no "status"'),
    ],
)
def test_predict_from_a_run_folder_with_a_damaged_run_json_says_so(
    tmp_path, capsys, make_finished_run, text, what
):
    model = tmp_path / "final_resnet18_model_part1_best.pth"
    model.write_bytes(b"a model")
    run_dir = make_finished_run(tmp_path / "runs", "part1-run", model)
    (run_dir / "run.json").write_text(text)
    (tmp_path / "photos").mkdir()
    argv = ["predict", "--model", str(run_dir), "--data", str(tmp_path / "photos"),
            "--out", str(tmp_path / "p.csv")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: run.json is damaged: {run_dir}/run.json {what} — fix: restore" in err
    assert "Traceback" not in err


def test_validate_refuses_a_labels_csv_outside_the_data_root_and_quotes_none_of_it(
    demo_root, tmp_path, capsys
):
    """--labels-csv /etc/passwd was read, and a line of it echoed into the report."""
    secret = tmp_path / "secret.csv"
    secret.write_text("user:x:1000:1000:Jane Doe,room 7,,:/home/jane:/bin/bash\n" * 3)
    assert main(["validate", "--data", str(demo_root), "--labels-csv", str(secret)]) == 2
    err = capsys.readouterr().err
    assert (
        f"data.labels_csv: Value error, {str(secret)!r} is not a file inside the data root" in err
    )
    assert "Jane" not in err and "Traceback" not in err
