"""tasks.artifacts' helpers without a Prefect server: artifact keys, table data, history rows."""

import json

from fixtures.run_json import TRAINING_C


def test_history_rows_are_json_ready_for_the_table_artifact(tmp_path):
    from tasks.artifacts import _table_data, history_rows, stage_key, stage_of, stage_uri
    from tasks.refs import RunRef

    run = RunRef(run_id="part1-aaaa", run_uri="s3://b/runs/part1/part1-aaaa", local_dir="/x",
                 lease_uri="s3://b/runs/part1/.leases/part1-aaaa.json")  # fmt: skip
    assert stage_uri(run) == "s3://b/runs/part1" and stage_of(run) == "part1"
    assert stage_key("part1", "summary") == "train-swin-part1-summary"
    assert stage_key("Part_2", "epochs") == "train-swin-part-2-epochs"
    rows = [{"epoch": 1, "acc": 0.123456, "loss": float("nan")}]
    assert json.loads(_table_data(rows)) == [{"epoch": 1, "acc": 0.1235, "loss": None}]

    (tmp_path / "part1-cccc").mkdir()
    (tmp_path / "part1-cccc" / "run.json").write_text(json.dumps(TRAINING_C))
    (row,) = json.loads(_table_data(history_rows(str(tmp_path))))
    assert row == {
        "run_id": "part1-cccc", "finished": None, "status": "training",
        "data_fingerprint": "eeee5555ffff", "train_images": 30, "val_images": 10, "epochs": 20,
        "best_epoch": None, "val_accuracy": 0.5, "val_log_loss": None,
        "calibrated_log_loss": None, "run_uri": str(tmp_path / "part1-cccc"),
    }  # fmt: skip
