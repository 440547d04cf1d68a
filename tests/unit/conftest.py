from pathlib import Path

import pytest

from camtrap.config import build_config

ENA24_MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "ena24_mini"

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
def ena24_root() -> Path:
    if not ENA24_MINI.exists():
        pytest.skip(f"{ENA24_MINI} is not there (../shared beside the checkout)")
    return ENA24_MINI
