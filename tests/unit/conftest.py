import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures.formats import to_camtrap_dp

from camtrap.config import build_config

# A few seconds per run on 2 CPU cores: 32 px images, no loader workers, and a small model
# (mobilenet_v3_small: 6 MB files, where resnet18's are 45 MB and its state 134 MB).
TINY = {
    "model.arch": "mobilenet_v3_small",
    "data.image_size": 32,
    "data.num_workers": 0,
    "train.epochs": 3,
    "train.batch_size": 8,
    "train.progress": False,
}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset (8 classes x 4 images), written once per test session."""
    from camtrap.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=4, seed=0)


@pytest.fixture(scope="session")
def tiny_config():
    def make(**overrides):
        return build_config("smoke", overrides={**TINY, **overrides})

    return make


@pytest.fixture(scope="session")
def source_run(tmp_path_factory, demo_root):
    """A finished part1-style run folder of the demo's classes: its best model file
    (mobilenet_v3_small, weights from a fixed seed: no training needed to test loading them),
    run.json and the stage's latest.json."""
    import torch

    from camtrap import latest, runfolder, stages, torchfile
    from camtrap.dataset import load_dataset
    from camtrap.modelfile import ModelMeta, model_file_dict
    from camtrap.models import build_model
    from camtrap.runfolder import RunFiles

    arch = "mobilenet_v3_small"
    out = tmp_path_factory.mktemp("source")
    config = build_config("smoke", overrides={"data.image_size": 32})
    run_dir = out / "smoke" / "smoke-source"
    files = RunFiles.for_config(run_dir, config)
    classes = load_dataset(demo_root).classes
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(arch, len(classes), "none", 0.0, 32)
    meta = ModelMeta(arch, classes, 32, list(config.data.mean), list(config.data.std), 1)
    torchfile.save_torch(model_file_dict(model, meta), files.best_model)
    info = {"run_id": run_dir.name, "config": config.model_dump(mode="json")}
    runfolder.write_run_json(run_dir, info)
    latest.write_latest(run_dir, stages.finalize(run_dir))
    return SimpleNamespace(
        out=out,
        run_dir=run_dir,
        best=files.best_model,
        classes=classes,
        arch=arch,
    )


@pytest.fixture(name="make_finished_run")
def make_finished_run_fixture():
    """make(output, run_id, model_file, status="completed"): a finished part1 run folder holding
    a copy of `model_file` as its best model, and its run.json (file sha256s not checked)."""
    import shutil

    from camtrap import runfolder

    def finished(output: Path, run_id: str, model_file: Path, status="completed") -> Path:
        run_dir = Path(runfolder.run_location(output, "part1", run_id))
        run_dir.mkdir(parents=True)
        shutil.copy(model_file, run_dir / "final_resnet18_model_part1_best.pth")
        files = {"final_resnet18_model_part1_best.pth": {"bytes": 1, "sha256": "x"}}
        info = {
            "run_id": run_id,
            "status": status,
            "finished": "2026-01-02T03:04:05Z",
            "data_fingerprint": "fp-" + run_id,
            "config": {"model": {"arch": "resnet18"}, "output": {"stage": "part1"}},
            "files": files,
        }
        runfolder.write_run_json(run_dir, info)
        return run_dir

    return finished


@pytest.fixture(scope="session")
def package_once(ena24_root, tmp_path_factory) -> Path:
    """ena24_mini as a Camtrap DP package (tests/fixtures/formats.py), converted once."""
    return to_camtrap_dp(ena24_root, tmp_path_factory.mktemp("dp") / "package")


@pytest.fixture
def package(package_once, tmp_path) -> Path:
    """A copy of that package a test may change."""
    return Path(shutil.copytree(package_once, tmp_path / "package"))
