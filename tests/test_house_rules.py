"""Project rules that code review would otherwise have to remember."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_prefect():
    offenders = [str(p) for p in _python_files("camtrap") if "prefect" in _imported_modules(p)]
    assert offenders == []


@pytest.mark.slow  # a second Python process: several seconds
def test_importing_the_library_does_not_load_prefect():
    code = "import sys, camtrap.pipeline, camtrap.cli; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # a second Python process: a few seconds
def test_importing_a_flow_does_not_load_torch():
    # `prefect deploy` imports every flow's module, and a flow run validates its config before
    # any task, also when it stops at a refused argument or is served from the caches: torch &
    # co. would cost 7 CPU-seconds of its 10.
    code = (
        "import sys, flows.train_swin, flows.predict_swin, flows.watch_data, flows.alerts; "
        "from camtrap.config import build_config; "
        "build_config('part1', None, {'model.arch': 'resnet18'}); "
        "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_every_torch_load_is_weights_only():
    unsafe = []
    for path in [
        *ROOT.glob("camtrap/**/*.py"),
        *ROOT.glob("tasks/**/*.py"),
        *ROOT.glob("flows/**/*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "load"
                and getattr(node.func.value, "id", "") == "torch"
            ):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
                if not ok:
                    unsafe.append(f"{path}:{node.lineno}")
    assert unsafe == []


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None,
                    reason="ruff is installed with the dev extra")  # fmt: skip
def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
