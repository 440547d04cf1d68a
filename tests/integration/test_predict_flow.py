"""Predict from a trained run: the best model reproduces the run's predictions/val.csv, latest.json
moves only after a fully successful run (CLI and publish task), s3:// in and out, and the flow
predict-swin on S3 (output, artifact, a rerun that reuses the output). One tiny run, trained once
for the module."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fixtures.tiny import TINY
from prefect import flow

from camtrap import latest, runfolder, stages, storage
from camtrap.cli import main
from camtrap.config import build_config
from camtrap.dataset import load_features
from camtrap.errors import StorageError
from camtrap.report import class_counts, least_confident
from camtrap.storage import uris as storage_uris
from flows.predict_swin import main as predict_main
from flows.predict_swin import predict_swin
from tasks.publish import publish
from tasks.refs import RunRef, ValMetrics
from tasks.runs import run_ref


@pytest.fixture(scope="session")
def trained(tmp_path_factory, demo_dir) -> Path:
    """One finished tiny run (smoke preset, tests/fixtures/tiny.py's TINY) of `camtrap train`'s
    library path, in out/smoke/<run_id>: trained once per test session, shared by its xdist
    processes (each would otherwise train its own)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above each process's own
    base = shared / "predict-trained"
    with (shared / "predict-trained.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "run-dir").exists():
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("CAMTRAP_CACHE_DIR", str(base / "cache"))
                config = build_config("smoke", overrides=TINY)
                summary = stages.run_all(config, demo_dir, base / "out")
            assert summary.status == "completed"
            (base / "run-dir").write_text(str(summary.run_dir))
    return Path((base / "run-dir").read_text())


@pytest.fixture(scope="module")
def photos(tmp_path_factory, demo_dir, trained) -> Path:
    """The demo photos with a competition-style test_features.csv (id, filepath, site; no
    labels) listing the run's val images, in the order of predictions/val.csv."""
    root = tmp_path_factory.mktemp("photos")
    shutil.copytree(demo_dir / "train_features", root / "train_features")
    split = pd.read_csv(trained / "split.csv", dtype=str, keep_default_na=False)
    val = split[split["split"] == "val"][["id", "filepath", "site"]]
    val.to_csv(root / "test_features.csv", index=False)
    return root


def _val_csv(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "predictions" / "val.csv", dtype={"id": str})


def _classes(run_dir: Path) -> list[str]:
    return runfolder.read_run_json(run_dir)["classes"]


@pytest.mark.slow
def test_the_best_model_reproduces_the_runs_val_predictions(trained, photos, tmp_path):
    out = tmp_path / "preds.csv"
    best = trained / "final_mobilenet_v3_small_model_smoke_best.pth"
    assert main(["predict", "--model", str(best), "--data", str(photos), "--out", str(out)]) == 0
    predicted, val = pd.read_csv(out, dtype={"id": str}), _val_csv(trained)
    classes = _classes(trained)
    assert list(predicted.columns) == ["id", *classes]
    assert predicted["id"].tolist() == val["id"].tolist() and len(predicted) == 8
    np.testing.assert_allclose(
        predicted[classes].to_numpy(), val[classes].to_numpy(), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(predicted[classes].sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_latest_json_moves_only_after_a_fully_successful_cli_run(
    trained, demo_dir, tmp_path, monkeypatch
):
    pointer = trained.parent / latest.LATEST_JSON
    before = pointer.read_bytes()
    assert json.loads(before)["run_id"] == trained.name
    assert latest.resolve_model_uri(pointer) == str(
        trained / "final_mobilenet_v3_small_model_smoke_best.pth"
    )
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))

    def crash(*args, **kwargs):
        raise RuntimeError("the machine died while evaluating")

    monkeypatch.setattr(stages, "evaluate", crash)
    another = build_config("smoke", overrides={**TINY, "train.epochs": 1})  # another run id
    with pytest.raises(RuntimeError, match="while evaluating"):
        stages.run_all(another, demo_dir, trained.parent.parent)
    assert pointer.read_bytes() == before
    assert len([p for p in trained.parent.iterdir() if p.is_dir() and p.name != ".leases"]) == 2


@pytest.mark.slow
def test_predict_reads_and_writes_s3(trained, photos, s3_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))
    runs = f"s3://{s3_server.new_bucket('runs')}/runs"
    run_uri = f"{runs}/smoke/{trained.name}"
    runfolder.push(trained, run_uri)
    data_uri = s3_server.upload_tree(photos, s3_server.new_bucket("data"), "test")
    out = f"{runs}/submission.csv"
    assert main(["predict", "--model", run_uri, "--data", data_uri, "--out", out]) == 0
    assert "final_mobilenet_v3_small_model_smoke_best.pth (epoch" in capsys.readouterr().out
    predicted = pd.read_csv(io.BytesIO(storage.read_bytes(out)), dtype={"id": str})
    classes = _classes(trained)
    val = _val_csv(trained)
    assert predicted["id"].tolist() == val["id"].tolist()
    np.testing.assert_allclose(
        predicted[classes].to_numpy(), val[classes].to_numpy(), rtol=0, atol=1e-5
    )

    bucket, key = storage_uris.split_s3(data_uri)
    first = pd.read_csv(photos / "test_features.csv", dtype=str)["filepath"][0]
    s3_server.client().delete_object(Bucket=bucket, Key=f"{key}/{first}")
    again = f"{runs}/again.csv"
    assert main(["predict", "--model", run_uri, "--data", data_uri, "--out", again]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not storage.exists(again)


@pytest.mark.slow
def test_predict_labels_a_coco_file_and_a_folder_from_s3(
    trained, s3_server, ena24_root, tmp_path, monkeypatch
):
    """The CLI on the field's formats from moto's S3, out to S3: a COCO file's images (with
    events per seq_id) and a card's folder, one of its photos cut short (a failure listed)."""
    from fixtures.formats import to_coco

    from camtrap.dataset.megadetector import read_megadetector

    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))
    model = str(trained / "final_mobilenet_v3_small_model_smoke_best.pth")
    runs = f"s3://{s3_server.new_bucket('runs')}/out"
    coco = to_coco(ena24_root, tmp_path / "coco", name="cct.json")
    coco_uri = s3_server.upload_tree(coco, s3_server.new_bucket("coco"), "lila")
    args = ["predict", "--model", model, "--data", coco_uri, "--input", "coco",
            "--annotations", "cct.json", "--out", f"{runs}/coco.csv"]  # fmt: skip
    assert main(args) == 0
    predicted = pd.read_csv(io.BytesIO(storage.read_bytes(f"{runs}/coco.csv")), dtype=str)
    assert len(predicted) == 21 and "failure" not in predicted.columns
    assert storage.exists(f"{runs}/coco.events.csv")

    card = tmp_path / "card"
    shutil.copytree(ena24_root / "train_features", card / "100CAMERA")
    broken = sorted((card / "100CAMERA").glob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:400])
    card_uri = s3_server.upload_tree(card, s3_server.new_bucket("card"), "sd")
    args = ["predict", "--model", model, "--data", card_uri, "--format", "megadetector",
            "--out", f"{runs}/card.json"]  # fmt: skip
    assert main(args) == 0  # auto: no features CSV, no package: the folder
    (tmp_path / "card.json").write_bytes(storage.read_bytes(f"{runs}/card.json"))
    images = read_megadetector(tmp_path / "card.json")
    assert len(images) == 21
    assert [i.file for i in images if i.failure] == [f"100CAMERA/{broken.name}"]


# --- Prefect -------------------------------------------------------------------------------------


def _published_copy(trained: Path, output_uri: str, run_id: str, tmp_path: Path) -> RunRef:
    """The trained run as if train-swin had just finished it into output_uri, before publish."""
    local = shutil.copytree(trained, tmp_path / run_id)
    info = runfolder.read_run_json(local)
    runfolder.write_run_json(local, {**info, "run_id": run_id, "status": "running"})
    run = run_ref(output_uri, "smoke", run_id)
    return run.model_copy(update={"local_dir": str(local)})


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "cache_dir")
def test_publish_moves_latest_json_and_predict_swin_labels_new_photos_on_s3(
    trained, photos, s3_server, tmp_path, read_run, monkeypatch, capsys
):
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    pointer = latest.latest_location(output_uri, "smoke")
    val = ValMetrics(metrics={"accuracy": 0.5})

    @flow
    def finish(run: RunRef, retries: int = 0) -> str:
        return publish.with_options(retries=retries)(run, val)

    run = _published_copy(trained, output_uri, trained.name, tmp_path)
    finish(run)
    assert latest.read_latest(output_uri, "smoke")["run_id"] == trained.name
    before = storage.read_bytes(pointer)

    # A publish that fails (S3 refuses the upload) leaves the pointer where it was.
    other = _published_copy(trained, output_uri, "smoke-other", tmp_path)
    monkeypatch.setattr(runfolder, "push", _failing_push)
    assert finish(other, return_state=True).is_failed()
    monkeypatch.undo()
    assert storage.read_bytes(pointer) == before

    data_uri = s3_server.upload_tree(photos, s3_server.new_bucket("data"), "test")
    state = predict_swin(data_uri, output_uri, stage="smoke", return_state=True)
    assert state.is_completed(), state.message
    fingerprint = load_features(photos).fingerprint
    expected = f"{output_uri}/predictions/{trained.name}/{fingerprint}.csv"
    assert state.result() == expected
    predicted = pd.read_csv(io.BytesIO(storage.read_bytes(expected)), dtype={"id": str})
    classes = _classes(trained)
    np.testing.assert_allclose(
        predicted[classes].to_numpy(), _val_csv(trained)[classes].to_numpy(), rtol=0, atol=1e-5
    )

    record = read_run(state.state_details.flow_run_id)
    assert record.tasks == {
        "resolve-model": ["Completed"],
        "resolve-input": ["Completed"],
        "fetch-features": ["Completed"],
        "fetch-images": ["Completed"],
        "validate-features": ["Completed"],
        "predict": ["Completed"],
        "report-predictions": ["Completed"],
    }
    (artifact,) = [a for a in record.artifacts if a.key == f"{trained.name}-predictions"]
    text = artifact.data
    assert f"`{expected}` (written now)" in text
    for _, row in class_counts(predicted).iterrows():
        assert f"| {row['class']} | {row['images']} |" in text
    lowest = least_confident(predicted)  # 8 photos: all of them, least confident first
    rows = [line for line in text.splitlines() if line.startswith("| ") and "top class" not in line]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows[-len(lowest) :]] == list(lowest.id)

    # The same data and model again: the data tasks are Cached, the file is found and reused.
    stamp = _version(s3_server, expected)
    again = predict_swin(data_uri, output_uri, stage="smoke", return_state=True)
    assert again.is_completed() and again.result() == expected
    second = read_run(again.state_details.flow_run_id)
    for name in ("fetch-features", "fetch-images", "validate-features"):
        assert second.tasks[name] == ["Cached"], second.tasks
    (artifact,) = [a for a in second.artifacts if a.key == f"{trained.name}-predictions"]
    assert f"`{expected}` (reused: an earlier flow run wrote it)" in artifact.data
    assert _version(s3_server, expected) == stamp

    # `python -m flows.predict_swin`: a user error is one line and exit status 2.
    args = ["--data", data_uri, "--out", output_uri, "--stage", "smoke", "--features", "no.csv"]
    assert predict_main(args) == 2
    assert f"error: {data_uri}/no.csv does not exist — fix: " in capsys.readouterr().err


@pytest.mark.slow
def test_the_flow_labels_a_package_and_a_cards_folder_from_s3(
    s3_server, trained, ena24_root, tmp_path, read_run
):
    """Camtrap DP in and out, and a folder of photos to MegaDetector JSON, both from S3."""
    from fixtures.formats import to_camtrap_dp

    from camtrap.dataset.camtrapdp import resource_paths
    from camtrap.dataset.dpschema import schema_problems
    from camtrap.dataset.megadetector import read_megadetector

    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    model_uri = str(trained / "final_mobilenet_v3_small_model_smoke_best.pth")
    package = to_camtrap_dp(ena24_root, tmp_path / "package")
    data_uri = s3_server.upload_tree(package, s3_server.new_bucket("dp"), "pkg")
    state = predict_swin(data_uri, output_uri, model_uri, format="camtrap-dp", return_state=True)
    assert state.is_completed(), state.message
    uri = state.result()
    assert uri.startswith(f"{output_uri}/predictions/") and uri.endswith("-camtrap-dp")
    assert "fetch-photos" in read_run(state.state_details.flow_run_id).tasks
    local = tmp_path / "downloaded"
    bucket, key = storage_uris.split_s3(uri)
    for name in s3_server.keys(bucket):
        if name.startswith(key + "/"):
            target = local / name[len(key) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(f"s3://{bucket}/{name}"))
    assert schema_problems(local, resource_paths(local, [])) == []
    observations = pd.read_csv(local / "observations.csv", dtype=str, keep_default_na=False)
    machine = observations[observations["classificationMethod"] == "machine"]
    assert (machine["observationLevel"] == "media").sum() == 21
    assert len(list((local / "media").glob("*.jpg"))) == 21  # the package opens as it is

    card = s3_server.upload_tree(ena24_root / "train_features", s3_server.new_bucket("card"), "c")
    state = predict_swin(card, output_uri, model_uri, input="folder", format="megadetector",
                         return_state=True)  # fmt: skip
    assert state.is_completed(), state.message
    md = tmp_path / "md.json"
    md.write_bytes(storage.read_bytes(state.result()))
    images = read_megadetector(md)
    assert len(images) == 21 and all(len(i.detections) == 1 for i in images)


def _failing_push(local_dir, run_uri):
    raise StorageError(f"cannot upload to {run_uri}: AccessDenied")


def _version(s3_server, uri: str) -> tuple:
    """The object's ETag and modification time: unchanged unless it was written again."""
    bucket, key = storage_uris.split_s3(uri)
    head = s3_server.client().head_object(Bucket=bucket, Key=key)
    return head["ETag"], head["LastModified"]


# --- reuse follows the model file's content, not its name ----------------------------------------


def _random_model(path: Path, classes: list[str], seed: int) -> Path:
    """A mobilenet_v3_small model file at `path` with weights from `seed` (no training): the
    same name with another seed is a run whose best model was rewritten (train.epochs grown)."""
    import torch

    from camtrap.modelfile import ModelMeta, model_file_dict
    from camtrap.models import build_model
    from camtrap.torchfile import save_torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model("mobilenet_v3_small", len(classes), "none", 0.0, 32)
    meta = ModelMeta("mobilenet_v3_small", classes, 32, [0.5] * 3, [0.25] * 3, epoch=seed)
    save_torch(model_file_dict(model.eval(), meta), path)
    return path


@pytest.fixture
def extended_run(tmp_path, demo_dir) -> SimpleNamespace:
    """A run folder (run.json: run id smoke-extended) whose best model `rewrite(seed)` replaces,
    and a test_features.csv of 8 demo photos."""
    from camtrap.dataset import load_dataset

    data = load_dataset(demo_dir)
    photos = tmp_path / "photos"
    shutil.copytree(demo_dir / "train_features", photos / "train_features")
    data.frame[["id", "filepath", "site"]].iloc[:8].to_csv(photos / "test_features.csv",
                                                           index=False)  # fmt: skip
    run_dir = tmp_path / "runs" / "smoke" / "smoke-extended"
    run_dir.mkdir(parents=True)
    runfolder.write_run_json(run_dir, {"run_id": run_dir.name})
    best = run_dir / "final_mobilenet_v3_small_model_smoke_best.pth"

    def rewrite(seed: int) -> Path:
        return _random_model(best, data.classes, seed)

    return SimpleNamespace(photos=photos, best=best, classes=data.classes, rewrite=rewrite)


def test_predictions_keep_their_name_but_are_reused_only_from_the_same_model_file(tmp_path):
    """predictions_uri stays readable and stable (run id, data fingerprint, options); the reuse
    decision is the record beside it: the same model file's sha256, data and options."""
    from tasks import predict as tasks_predict
    from tasks.refs import FeaturesRef, ModelRef

    def model(sha256: str) -> ModelRef:
        name = "final_x_smoke_best.pth"
        return ModelRef(model_uri=f"s3://b/runs/smoke/r1/{name}", run_id="r1", file_name=name,
                        image_size=32, max_image_bytes=1, max_image_pixels=1, epoch=3,
                        temperature=1.0, model_sha256=sha256)  # fmt: skip

    old, new = model("a" * 64), model("b" * 64)
    features = FeaturesRef(root="/d", features_csv="t.csv", fingerprint="f00d", images=2)
    out = str(tmp_path / "out")
    target = tasks_predict.predictions_uri(out, old, features, "none", True)
    assert target == tasks_predict.predictions_uri(out, new, features, "none", True)
    assert target == f"{out}/predictions/r1/f00d.csv"
    storage.write_text(target, "id,a,b\nx,0.5,0.5\n")

    def reusable(model: ModelRef, *wanted: str, features=features, tta="none") -> bool:
        record = tasks_predict.read_record(target)
        return tasks_predict.reusable(record, model, features, tta, True, list(wanted))

    assert not reusable(old, target)  # no record: a file from before records, recomputed
    tasks_predict.write_record(target, old, features, "none", True, [target])
    assert reusable(old, target)
    assert not reusable(new, target)  # the run extended: its best model rewritten
    assert not reusable(old, target, tta="hflip")
    assert not reusable(old, target, features=features.model_copy(update={"fingerprint": "b"}))
    megadetector = target.removesuffix(".csv") + ".json"  # not written by that model yet
    assert not reusable(old, target, megadetector)
    storage.write_text(megadetector, "{}")
    tasks_predict.write_record(target, old, features, "none", True, [target, megadetector],
                               tasks_predict.read_record(target))  # fmt: skip
    assert reusable(old, target, megadetector) and reusable(old, target)
    tasks_predict.write_record(target, new, features, "none", True, [target])  # csv only
    assert reusable(new, target) and not reusable(new, target, megadetector)  # old model's json
    storage.remove(target)
    assert not reusable(new, target)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "cache_dir")
def test_a_rewritten_model_file_is_predicted_again_not_served_from_the_old_file(
    extended_run, tmp_path, read_run, capsys
):
    output_uri = str(tmp_path / "out")
    extended_run.rewrite(seed=1)
    data, best = str(extended_run.photos), str(extended_run.best)
    first = predict_swin(data, output_uri, best, return_state=True)
    assert first.is_completed(), first.message
    uri = first.result()
    assert uri.startswith(f"{output_uri}/predictions/smoke-extended/") and uri.endswith(".csv")
    before = Path(uri).read_bytes()

    extended_run.rewrite(seed=2)  # the run extended: the same run id, file name and data
    second = predict_swin(data, output_uri, best, return_state=True)
    assert second.is_completed() and second.result() == uri  # the same, readable name
    (artifact,) = [a for a in read_run(second.state_details.flow_run_id).artifacts
                   if a.key == "smoke-extended-predictions"]  # fmt: skip
    assert f"`{uri}` (written now)" in artifact.data
    assert Path(uri).read_bytes() != before
    expected = tmp_path / "expected.csv"  # the library's path, on the model as it is now
    assert main(["predict", "--model", best, "--data", data, "--out", str(expected)]) == 0
    classes = extended_run.classes
    np.testing.assert_allclose(pd.read_csv(uri)[classes], pd.read_csv(expected)[classes],
                               rtol=0, atol=1e-6)  # fmt: skip

    third = predict_swin(data, output_uri, best, return_state=True)  # that model again: reused
    (artifact,) = [a for a in read_run(third.state_details.flow_run_id).artifacts
                   if a.key == "smoke-extended-predictions"]  # fmt: skip
    assert f"`{uri}` (reused: an earlier flow run wrote it)" in artifact.data


def test_a_damaged_run_json_beside_the_model_is_reported_not_a_traceback(tmp_path):
    """resolve-model names the run from the run.json beside the model file: a torn one is the
    library's "run.json is damaged" error, as `camtrap predict --model RUNFOLDER` gives."""
    from camtrap.runfolder import RunJsonDamaged
    from tasks.predict import _run_id_of

    (tmp_path / "run.json").write_text('{"run_id": "smoke-1')
    with pytest.raises(RunJsonDamaged, match="run.json is damaged: .* is not JSON at byte"):
        _run_id_of(str(tmp_path / "final_resnet18_model_smoke_best.pth"))
