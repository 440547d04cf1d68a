"""The product path, as a user runs it: `prefect server start`, a process work pool `gpu-pool`,
`prefect deploy` of deployments/prefect.yaml, `prefect deployment run train-swin/part1` with tiny
CPU overrides against S3 (moto on 127.0.0.1), and a worker that runs it. Then a second run of
the same deployment, which must hit the caches."""

from __future__ import annotations

import json
import re
import uuid

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

# part1 shrunk to a CPU run of seconds: resnet18 from scratch on 32 px images, 2 epochs.
CPU_OVERRIDES = {
    "model.arch": "resnet18",
    "model.weights": "none",
    "model.drop_path": 0.0,
    "data.image_size": 32,
    "data.num_workers": 0,
    "train.epochs": 2,
    "train.batch_size": 8,
    "train.lr": 0.001,
    "train.progress": False,
}
LAYOUT = sorted(
    [
        "run.json",
        "final_resnet18_model_part1_best.pth",
        "final_resnet18_model_part1_best_logloss.pth",
        "final_resnet18_model_part1.pth",
        "state/last.pt",
        "state/last.json",
        "split.csv",
        "metrics/epochs.csv",
        "metrics/per_class.csv",
        "metrics/confusion_matrix.csv",
        "metrics/per_site.csv",
        "predictions/val.csv",
        "plots/class_precision.png",
        "plots/class_recalls.png",
        "plots/class_f1.png",
        "plots/curves.png",
        "plots/confusion_matrix.png",
        "plots/calibration.png",
    ]
)
WORKER_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """The pool and both deployments of deployments/prefect.yaml, deployed from the repo root."""
    prefect_server.cli("work-pool", "create", "gpu-pool", "--type", "process")
    out = prefect_server.cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    assert "train-swin/part1" in out.stdout and "train-swin/smoke" in out.stdout, out.stdout
    assert "predict-swin/part1" in out.stdout, out.stdout
    return prefect_server


def _run_deployment(server, data_uri: str, output_uri: str) -> uuid.UUID:
    out = server.cli(
        "deployment", "run", "train-swin/part1",
        "--param", f"data_uri={data_uri}",
        "--param", f"output_uri={output_uri}",
        "--param", f"overrides={json.dumps(CPU_OVERRIDES)}",
    )  # fmt: skip
    match = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
    assert match, out.stdout
    return uuid.UUID(match.group(1))


def _work_once(server, s3_server, cache_dir) -> str:
    """`prefect worker start --pool gpu-pool --run-once`: picks up the run, waits for it."""
    env = {**s3_server.env, "CAMTRAP_CACHE_DIR": str(cache_dir)}
    out = server.cli(
        "worker", "start", "--pool", "gpu-pool", "--run-once",
        timeout=WORKER_TIMEOUT_S, extra_env=env,
    )  # fmt: skip
    return out.stdout + out.stderr


def test_deployment_run_on_a_worker_writes_s3_and_artifacts_then_hits_the_cache(
    deployed, s3_server, demo_dir, tmp_path, read_run
):
    data_uri = s3_server.upload_tree(demo_dir, s3_server.new_bucket("data"), "train")
    out_bucket = s3_server.new_bucket("runs")
    output_uri = f"s3://{out_bucket}/runs"
    cache_dir = tmp_path / "worker-cache"

    flow_run_id = _run_deployment(deployed, data_uri, output_uri)
    worker_log = _work_once(deployed, s3_server, cache_dir)
    record = read_run(flow_run_id)
    assert record.state == "Completed", f"{record.message}\n{worker_log[-4000:]}"

    run_id = record.name  # the flow run is named after the run folder
    assert re.fullmatch(r"part1-[0-9a-f]{12}", run_id)
    prefix = f"runs/part1/{run_id}/"
    assert [k.removeprefix(prefix) for k in s3_server.keys(out_bucket, prefix)] == LAYOUT
    latest = "runs/part1/latest.json"  # the stage's pointer to its newest finished run
    assert s3_server.keys(out_bucket) == [latest, *[prefix + name for name in LAYOUT]]  # no more

    body = s3_server.client().get_object(Bucket=out_bucket, Key=prefix + "run.json")["Body"]
    info = json.loads(body.read())
    assert info["status"] == "completed"
    assert sorted(info["files"]) == [f for f in LAYOUT if f != "run.json"]
    assert s3_server.endpoint not in json.dumps(info)

    keys = sorted(a.key for a in record.artifacts)  # stable per stage, one card each
    assert keys == sorted(
        f"train-swin-part1-{what}"
        for what in ("progress", "epochs", "per-class", "summary", "plots", "history",
                     "run-folder", "best-model", "epochs-csv", "plots-folder")
    )  # fmt: skip
    progress = [a for a in record.artifacts if a.key == "train-swin-part1-progress"]
    assert [a.type for a in progress] == ["progress"] and progress[0].data == 100.0
    assert any("memory epoch 2 end" in line for line in record.logs)
    assert set(record.tasks) >= {"fetch-metadata", "fetch-images", "validate-and-split", "train"}

    # The same deployment again on unchanged data: fetch/validate/split come from the cache.
    second_id = _run_deployment(deployed, data_uri, output_uri)
    worker_log = _work_once(deployed, s3_server, cache_dir)
    second = read_run(second_id)
    assert second.state == "Completed", f"{second.message}\n{worker_log[-4000:]}"
    for name in ("fetch-metadata", "fetch-images", "validate-and-split"):
        assert second.tasks[name] == ["Cached"], second.tasks
    assert "train" not in second.tasks
    assert second.name == run_id
    assert s3_server.keys(out_bucket) == [latest, *[prefix + name for name in LAYOUT]]
