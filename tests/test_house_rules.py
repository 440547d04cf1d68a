"""Project rules that code review would otherwise have to remember."""

import ast
import re
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


def test_library_never_calls_up_into_the_workflow():
    """camtrap/ imports no tasks/ or flows/ module, nor names one as a value (`python -m
    flows.train_swin` in a child process): the workflow sits on the library, never the
    reverse. (A sentence that tells the user a command is fine.)"""
    offenders = []
    for path in _python_files("camtrap"):
        where = path.relative_to(ROOT)
        if _imported_modules(path) & {"tasks", "flows"}:
            offenders.append(f"{where}: imports the workflow")
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if named and re.fullmatch(r"(flows|tasks)(\.\w+)*", node.value):
                offenders.append(f"{where}:{node.lineno}: {node.value!r}")
    assert offenders == []


# --- the import graph ---------------------------------------------------------------------------

PACKAGES = ("camtrap", "tasks", "flows")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in _python_files(pkg)}


def _imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it: at the top, inside functions (a lazy
    import is still a dependency) and under TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c`: the module a.b.c when there is one, else a.b
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    return found - {_module_name(path)}


def import_graph() -> dict[str, set[str]]:
    modules = _project_modules()
    graph = {name: _imports_of(path, modules) for name, path in modules.items()}
    # A package's __init__ is not a dependency of its own modules' sibling imports.
    return {name: {dep for dep in deps if dep not in PACKAGES} for name, deps in graph.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm), each as a
    sorted list: modules that import each other, directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_find_cycles_finds_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_projects_modules():
    graph = import_graph()
    assert {"camtrap.stages", "camtrap.fit", "tasks.data", "flows.train_swin"} <= set(graph)
    assert find_cycles(graph) == []


def test_imports_point_down_the_layers():
    """camtrap/ never imports tasks/ or flows/; tasks/ never imports flows/."""
    upward = [
        f"{name} -> {dep}"
        for name, deps in import_graph().items()
        for dep in deps
        if (name.startswith("camtrap") and dep.startswith(("tasks", "flows")))
        or (name.startswith("tasks") and dep.startswith("flows"))
    ]
    assert upward == []


MAX_MODULE_LINES = 520  # "about 500": a module past it does more than one job


def test_no_module_is_over_about_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for pkg in PACKAGES
        for p in _python_files(pkg)
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _library_modules() -> set[str]:
    """camtrap's modules as unit test names: camtrap/fit.py -> fit, camtrap/storage/files.py ->
    storage_files, a package's __init__ -> the package."""
    names = set()
    for path in _python_files("camtrap"):
        parts = path.relative_to(ROOT / "camtrap").with_suffix("").parts
        names.add("_".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_unit_tests_are_named_after_library_modules_and_import_only_the_library():
    modules = _library_modules()
    tests = _python_files("tests/unit")
    misnamed = [p.name for p in tests if p.name.startswith("test_") and p.stem[5:] not in modules]
    assert misnamed == []
    upward = {p.name: sorted(_imported_modules(p) & {"tasks", "flows", "prefect"}) for p in tests}
    assert {name: found for name, found in upward.items() if found} == {}


@pytest.mark.slow  # a second Python process: several seconds
def test_importing_the_library_does_not_load_prefect():
    code = "import sys, camtrap.stages, camtrap.cli; print('prefect' in sys.modules)"
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
