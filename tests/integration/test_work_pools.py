"""Work pools beyond the process pool: the Dockerfile's image, a Docker pool whose containers get
the host's GPUs (device requests), a Kubernetes pool whose Jobs ask for nvidia.com/gpu, and a
git_clone pull step pinned to a commit (deployments/docker.yaml, deployments/kubernetes.yaml).

Fast tests read the files: pins, the build context, and the job configuration a worker would
build from each pool's base job template and a deployment's job variables (Prefect's own
templating). Slow tests deploy every deployment file in deployments/ to the session's Prefect
server (no prefect-docker or prefect-kubernetes needed: the server bundles their worker
metadata) and check what the server holds. The image build runs only where a Docker daemon
answers."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import prefect
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from prefect.utilities.templating import apply_values

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments"
DOCKERFILE = ROOT / "Dockerfile"
DOCKER_TEMPLATE = DEPLOYMENTS / "docker-gpu-job-template.json"
K8S_TEMPLATE = DEPLOYMENTS / "k8s-gpu-job-template.json"
BUNDLED_METADATA = (
    Path(prefect.__file__).parent
    / "server/api/collections_data/views/aggregate-worker-metadata.json"
)
# Every pool a deployment file names: its type and base job template (None: Prefect's default).
POOLS = {
    "gpu-pool": ("process", None),
    "docker-gpu-pool": ("docker", DOCKER_TEMPLATE),
    "k8s-gpu-pool": ("kubernetes", K8S_TEMPLATE),
}
GPU_REQUEST = [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
REGISTRY_IMAGE = "registry.example.test/ml/camtrap:abc123"  # $CAMTRAP_IMAGE for kubernetes.yaml


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def deployment_files() -> list[Path]:
    """The YAML files of deployments/ that declare deployments (not automations.yaml)."""
    files = sorted(DEPLOYMENTS.glob("*.yaml"))
    return [path for path in files if "deployments" in (yaml.safe_load(path.read_text()) or {})]


def file_deployments(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["deployments"]


def deployment_in(path: Path, name: str) -> dict:
    (found,) = [d for d in file_deployments(path) if d["name"] == name]
    return found


def bundled_template(pool_type: str) -> dict:
    """The base job template Prefect's server ships for a worker type it does not have installed."""
    metadata = json.loads(BUNDLED_METADATA.read_text())
    workers = [w for collection in metadata.values() for w in collection.values()]
    (worker,) = [w for w in workers if w["type"] == pool_type]
    return worker["default_base_job_configuration"]


def render_job_configuration(template: dict, job_variables: dict) -> dict:
    """What a worker fills in for a flow run (BaseJobConfiguration.from_template_and_values):
    the variables' defaults, then the job variables (`env` merged), applied to
    job_configuration by Prefect's templating."""
    properties = template["variables"].get("properties", {})
    values = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    env = {**values.get("env", {}), **job_variables.get("env", {})}
    values.update(copy.deepcopy(job_variables))
    values["env"] = env
    return apply_values(copy.deepcopy(template["job_configuration"]), values)


def pod_container(configuration: dict) -> dict:
    (container,) = configuration["job_manifest"]["spec"]["template"]["spec"]["containers"]
    return container


def with_image(job_variables: dict, image: str) -> dict:
    """The job variables as deployed: the build step `image` printed `image`."""
    return apply_values(copy.deepcopy(job_variables), {"image": {"stdout": image}})


# --- the image ------------------------------------------------------------------------------------


def dockerfile_pins() -> dict[str, str]:
    """`name==version` pins written in the Dockerfile's RUN lines."""
    runs = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("RUN ")]
    return dict(re.findall(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", "\n".join(runs)))


def test_dockerfile_pins_equal_pyproject_pins():
    pins = dockerfile_pins()
    requirements = [Requirement(text) for text in pyproject()["project"]["dependencies"]]
    declared = {req.name: str(req.specifier) for req in requirements}
    assert {"torch", "torchvision"} <= pins.keys()
    for name, version in pins.items():
        assert declared.get(name) == f"=={version}", (
            f"Dockerfile pins {name}=={version}, pyproject.toml has {declared.get(name)!r}"
        )


def test_dockerfile_base_python_satisfies_requires_python():
    (base,) = re.findall(r"^FROM python:(\d+\.\d+)", DOCKERFILE.read_text(), flags=re.M)
    assert f"{base}.0" in SpecifierSet(pyproject()["project"]["requires-python"])


def test_dockerfile_copies_what_pip_install_needs_and_dockerignore_lets_it_in():
    text = DOCKERFILE.read_text()
    copy_lines = re.findall(r"^COPY (.+)$", text, flags=re.M)
    copied = {src.rstrip("/") for line in copy_lines for src in line.split()[:-1]}
    project = pyproject()
    packages = {
        name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {"pyproject.toml", project["project"]["readme"], *packages} <= copied
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allowlist: .venv, .git and data stay out of the build context
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed
    assert re.search(r"^USER (?!root\b)\w+", text, flags=re.M), "the image must not run as root"
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "PREFECT_" not in "\n".join(instructions), "Prefect settings come from the worker"


# --- job configurations a worker builds -------------------------------------------------------


@pytest.mark.parametrize(
    "pool_type, path", [("docker", DOCKER_TEMPLATE), ("kubernetes", K8S_TEMPLATE)]
)
def test_templates_extend_the_bundled_ones(pool_type, path):
    """Everything of Prefect's default template is kept (its variables, its job keys)."""
    ours, bundled = json.loads(path.read_text()), bundled_template(pool_type)
    assert bundled["variables"]["properties"].keys() <= ours["variables"]["properties"].keys()
    assert bundled["job_configuration"].keys() <= ours["job_configuration"].keys()


def test_kubernetes_job_manifest_asks_for_the_gpu():
    template = json.loads(K8S_TEMPLATE.read_text())
    job_variables = deployment_in(DEPLOYMENTS / "kubernetes.yaml", "part1-k8s")["work_pool"]
    job_variables = with_image(job_variables["job_variables"], REGISTRY_IMAGE)
    container = pod_container(render_job_configuration(template, job_variables))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == REGISTRY_IMAGE
    assert container["env"]["CAMTRAP_GPU_SLOT"] == "off"
    four = pod_container(render_job_configuration(template, {**job_variables, "gpu_limit": 4}))
    assert four["resources"]["limits"]["nvidia.com/gpu"] == 4
    # Prefect's own template has no such limit: the pod would run without a GPU
    bundled = render_job_configuration(bundled_template("kubernetes"), job_variables)
    assert "nvidia.com/gpu" not in pod_container(bundled)["resources"]["limits"]


@pytest.mark.parametrize("name", ["part1-docker", "part1-git"])
def test_docker_container_gets_the_gpus(name):
    template = json.loads(DOCKER_TEMPLATE.read_text())
    job_variables = deployment_in(DEPLOYMENTS / "docker.yaml", name)["work_pool"]["job_variables"]
    configuration = render_job_configuration(template, with_image(job_variables, "camtrap:x"))
    assert configuration["container_create_kwargs"]["device_requests"] == GPU_REQUEST
    assert configuration["image"] == "camtrap:x"
    # Prefect's bundled Docker template has no container_create_kwargs: the request is dropped
    bundled = render_job_configuration(bundled_template("docker"), job_variables)
    assert "container_create_kwargs" not in bundled


def test_device_request_is_one_docker_py_accepts():
    docker_types = pytest.importorskip("docker.types")
    host = docker_types.HostConfig(version="1.44", device_requests=GPU_REQUEST)
    (request,) = host["DeviceRequests"]
    assert (request.driver, request.count, request.capabilities) == ("nvidia", -1, [["gpu"]])


# --- credentials and privileges ---------------------------------------------------------------

AWS_SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def _every_env() -> dict[str, dict]:
    """Each env a flow run's container may get from these files: each deployment's job
    variables, each template's default, and what a worker renders from the two."""
    envs = {}
    for _, path in POOLS.values():
        if path is not None:
            properties = json.loads(path.read_text())["variables"]["properties"]
            envs[f"{path.name} default"] = properties["env"].get("default", {})
    for path in deployment_files():
        for spec in file_deployments(path):
            job_variables = spec["work_pool"].get("job_variables", {})
            envs[f"{path.name}:{spec['name']}"] = job_variables.get("env", {})
            template = POOLS[spec["work_pool"]["name"]][1]
            if template is not None:
                rendered = render_job_configuration(json.loads(template.read_text()), job_variables)
                envs[f"{path.name}:{spec['name']} rendered"] = rendered["env"]
    return envs


def test_no_aws_key_in_any_deployment_env():
    """An env is plain text in Prefect's UI and API: S3 credentials come from the host (an
    instance role, a mounted ~/.aws), a Kubernetes Secret, or a Secret block the worker resolves."""
    envs = _every_env()
    assert {"docker.yaml:part1-docker", "kubernetes.yaml:part1-k8s rendered"} <= envs.keys()
    for where, env in envs.items():
        assert not AWS_SECRETS & env.keys(), f"{where}: {AWS_SECRETS & env.keys()}"
        assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{12,}", json.dumps(env)), where


def test_docker_yaml_tells_where_s3_credentials_come_from_instead_of_env():
    comments = "\n".join(
        line for line in (DEPLOYMENTS / "docker.yaml").read_text().splitlines()
        if line.lstrip().startswith("#")
    )  # fmt: skip
    assert "pool's `env` default" not in comments  # the old advice: keys in plain text
    assert "instance role" in comments
    assert "/home/camtrap/.aws:ro" in comments  # the host's ~/.aws, mounted read-only
    assert "job_configuration.env" in comments  # Secret blocks in the pool's template
    assert '"AWS_SECRET_ACCESS_KEY": "{{ prefect.blocks.secret.' in comments


def _k8s_pod() -> tuple[dict, dict]:
    template = json.loads(K8S_TEMPLATE.read_text())
    job_variables = deployment_in(DEPLOYMENTS / "kubernetes.yaml", "part1-k8s")["work_pool"]
    configuration = render_job_configuration(template, job_variables["job_variables"])
    pod = configuration["job_manifest"]["spec"]["template"]["spec"]
    return pod, pod_container(configuration)


def test_kubernetes_pod_runs_as_a_non_root_user_on_a_read_only_root():
    pod, container = _k8s_pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user() != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_kubernetes_pod_writes_only_to_its_empty_dirs():
    """With a read-only root, every folder a run writes (the caches, HOME for Prefect and
    torch, TMPDIR) is an emptyDir mounted there, and the env points there."""
    pod, container = _k8s_pod()
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if m["name"] in empty}
    env = container["env"]
    for name in ("HOME", "TMPDIR", "CAMTRAP_CACHE_DIR"):
        assert any(env[name] == p or env[name].startswith(p + "/") for p in mounts), name
    assert env["CAMTRAP_CACHE_DIR"] == dockerfile_env()["CAMTRAP_CACHE_DIR"]
    assert dockerfile_env()["TORCH_HOME"].startswith(env["CAMTRAP_CACHE_DIR"] + "/")


def dockerfile_env() -> dict[str, str]:
    """The Dockerfile's ENV settings (`NAME=value`, continued lines included)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line[4:] for line in text.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"([A-Z_]+)=(\S+)", " ".join(lines)))


def dockerfile_user() -> int:
    """The uid of the Dockerfile's last USER: numeric, so that Kubernetes' runAsNonRoot can
    check it (a user name it cannot)."""
    (*_, user) = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: give the uid (and gid)"
    return int(user.split(":")[0])


def test_dockerfile_pins_its_base_image_by_digest_and_runs_as_a_non_root_uid():
    (base,) = re.findall(r"^FROM (\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert re.fullmatch(r"python:3\.\d+-slim@sha256:[0-9a-f]{64}", base), base
    assert dockerfile_user() != 0


# --- deployed to a Prefect server ---------------------------------------------------------------


def _api(server, method: str, path: str, body: dict | None = None, tries: int = 5):
    """One REST call; a 503 (the server's SQLite database busy, seen under load) is tried again,
    as Prefect's own client does."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.api_url}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as err:
            if err.code != 503 or attempt == tries - 1:
                raise
            time.sleep(2**attempt)


def _pool_exists(server, name: str) -> bool:
    try:
        _api(server, "GET", f"/work_pools/{name}")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise
    return True


def _deployments(server) -> dict[tuple[str, str], dict]:
    """(name, entrypoint) -> the server's deployment."""
    rows = _api(server, "POST", "/deployments/filter", {})
    return {(row["name"], row["entrypoint"]): row for row in rows}


# What a deployment file may hold at its top: anything else would be lost by the merge below.
FILE_KEYS = {"prefect-version", "name", "definitions", "build", "push", "pull", "deployments"}


def merged_deployment_file(paths: list[Path]) -> dict:
    """Every deployment file as one, so that one `prefect deploy` (one import of torch) deploys
    them all: a file's build/push/pull steps go into each of its deployments that has none of
    its own, which is Prefect's precedence (a deployment's own steps replace the file's)."""
    deployments = []
    for path in paths:
        config = yaml.safe_load(path.read_text())
        assert config.keys() <= FILE_KEYS, f"{path.name}: {config.keys() - FILE_KEYS} not merged"
        for spec in copy.deepcopy(config["deployments"]):
            for action in ("build", "push", "pull"):
                if action not in spec and config.get(action) is not None:
                    spec[action] = copy.deepcopy(config[action])
            deployments.append(spec)
    return {"prefect-version": "3.9.1", "name": "camtrap", "deployments": deployments}


def test_merged_file_keeps_each_deployments_steps():
    specs = merged_deployment_file(deployment_files())["deployments"]
    merged = {d["name"] + d["entrypoint"]: d for d in specs}
    k8s = merged["part1-k8sflows/train_swin.py:train_swin"]
    assert k8s["build"] == yaml.safe_load((DEPLOYMENTS / "kubernetes.yaml").read_text())["build"]
    git = merged["part1-gitflows/train_swin.py:train_swin"]
    assert [next(iter(step.values()))["id"] for step in git["build"]] == ["image", "git-commit"]
    assert "pull" not in merged["smokeflows/train_swin.py:train_swin"]  # prefect.yaml: pull: null


@pytest.mark.parametrize("path", ["docker.yaml", "kubernetes.yaml"])
def test_image_step_prints_camtrap_image_else_the_project_version(path):
    (step,) = [
        s
        for s in yaml.safe_load((DEPLOYMENTS / path).read_text())["build"]
        if next(iter(s.values())).get("id") == "image"
    ]
    script = step["prefect.deployments.steps.run_shell_script"]["script"]
    version = pyproject()["project"]["version"]
    cases = [({}, f"camtrap:{version}"), ({"CAMTRAP_IMAGE": REGISTRY_IMAGE}, REGISTRY_IMAGE)]
    for env, expected in cases:
        out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == expected


@pytest.fixture
def deployed(prefect_server, tmp_path_factory):
    """Every deployment of deployments/ on the server, the pools they name made first where
    missing (the Docker and Kubernetes ones with the documented `prefect work-pool create`).
    What this fixture made is deleted afterwards (pools, deployments with their schedules'
    runs and their triggers), so that later tests on this session's server find it as before
    and can create the same pools."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert head.returncode == 0, f"deployments/docker.yaml pins the checkout's commit: {head}"
    named = {d["work_pool"]["name"] for f in deployment_files() for d in file_deployments(f)}
    assert named <= POOLS.keys(), f"pools without a type here: {named - POOLS.keys()}"
    created_pools = [name for name in sorted(named) if not _pool_exists(prefect_server, name)]
    for name in created_pools:
        _create_pool(prefect_server, name)
    before = _deployments(prefect_server).keys()
    merged = tmp_path_factory.mktemp("deployments") / "all.yaml"
    merged.write_text(yaml.safe_dump(merged_deployment_file(deployment_files()), sort_keys=False))
    image = {"CAMTRAP_IMAGE": REGISTRY_IMAGE}
    out = prefect_server.cli("deploy", "--all", "--prefect-file", str(merged), extra_env=image)
    server_deployments = _deployments(prefect_server)
    yield {"deployments": server_deployments, "output": out.stdout, "head": head.stdout.strip()}
    for key, row in server_deployments.items():
        if key not in before:  # its triggers (automations) first: they outlive the deployment
            _api(prefect_server, "DELETE", f"/automations/owned-by/prefect.deployment.{row['id']}")
            _api(prefect_server, "DELETE", f"/deployments/{row['id']}")
    for name in created_pools:
        _api(prefect_server, "DELETE", f"/work_pools/{name}")


def _create_pool(server, name: str) -> None:
    pool_type, template = POOLS[name]
    if template is None:  # the process pool of prefect.yaml: through the API, no CLI to pay for
        from prefect.workers.process import ProcessWorker

        body = {
            "name": name,
            "type": pool_type,
            "base_job_template": ProcessWorker.get_default_base_job_template(),
        }
        _api(server, "POST", "/work_pools/", body)
        return
    out = server.cli(
        "work-pool", "create", name, "--type", pool_type, "--base-job-template", str(template)
    )
    assert f"Created work pool {name!r}" in out.stdout, out.stdout


@pytest.mark.slow
def test_deployed_files_reach_their_pools_ask_for_gpus_and_pin_the_commit(
    deployed, prefect_api, tmp_path, monkeypatch
):
    """One test over one `prefect deploy --all` (about 25 CPU-seconds): as four tests, each
    test process that ran one of them deployed again."""
    _every_deployment_file_deploys_to_its_pool(deployed)
    _deployed_kubernetes_job_asks_for_the_gpu(deployed, prefect_api)
    _deployed_docker_runs_get_the_gpus_and_the_pinned_commit(deployed, prefect_api)
    _deployed_pull_step_clones_the_pinned_commit(deployed, prefect_api, tmp_path, monkeypatch)


def _every_deployment_file_deploys_to_its_pool(deployed):
    names = {path.name for path in deployment_files()}
    assert {"prefect.yaml", "docker.yaml", "kubernetes.yaml"} <= names
    for path in deployment_files():
        for spec in file_deployments(path):
            key = (spec["name"], spec["entrypoint"])
            assert key in deployed["deployments"], f"{path.name}: {key}\n{deployed['output']}"
            assert deployed["deployments"][key]["work_pool_name"] == spec["work_pool"]["name"]


def _deployed_kubernetes_job_asks_for_the_gpu(deployed, prefect_server):
    pool = _api(prefect_server, "GET", "/work_pools/k8s-gpu-pool")
    assert pool["type"] == "kubernetes"
    assert pool["base_job_template"] == json.loads(K8S_TEMPLATE.read_text())
    row = deployed["deployments"][("part1-k8s", "flows/train_swin.py:train_swin")]
    assert row["job_variables"]["image"] == REGISTRY_IMAGE  # from $CAMTRAP_IMAGE at deploy time
    configuration = render_job_configuration(pool["base_job_template"], row["job_variables"])
    container = pod_container(configuration)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == REGISTRY_IMAGE
    assert row["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/camtrap"}}
    ]


def _deployed_docker_runs_get_the_gpus_and_the_pinned_commit(deployed, prefect_server):
    pool = _api(prefect_server, "GET", "/work_pools/docker-gpu-pool")
    rows = {
        name: deployed["deployments"][(name, "flows/train_swin.py:train_swin")]
        for name in ("part1-docker", "part1-git")
    }
    for row in rows.values():
        assert row["job_variables"]["image"] == REGISTRY_IMAGE  # $CAMTRAP_IMAGE at deploy time
        configuration = render_job_configuration(pool["base_job_template"], row["job_variables"])
        assert configuration["container_create_kwargs"]["device_requests"] == GPU_REQUEST
    assert rows["part1-docker"]["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/camtrap"}}
    ]
    (clone,) = rows["part1-git"]["pull_steps"]
    assert clone["prefect.deployments.steps.git_clone"] == {
        "id": "clone",
        "repository": "{{ prefect.variables.camtrap_git_repository }}",  # resolved by the worker
        "commit_sha": deployed["head"],
    }


def _deployed_pull_step_clones_the_pinned_commit(deployed, prefect_api, tmp_path, monkeypatch):
    """What a worker on another machine does at the start of a part1-git run: the pull steps as
    the server holds them, the repository read from the Prefect variable (this checkout)."""
    import asyncio

    from prefect.deployments.steps.core import run_steps

    row = deployed["deployments"][("part1-git", "flows/train_swin.py:train_swin")]
    variable = {"name": "camtrap_git_repository", "value": ROOT.as_uri()}
    _api(prefect_api, "POST", "/variables/", variable)
    monkeypatch.chdir(tmp_path)
    try:
        output = asyncio.run(run_steps(row["pull_steps"]))
    finally:
        _api(prefect_api, "DELETE", "/variables/name/camtrap_git_repository")
    clone = tmp_path / output["directory"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True)
    assert head.stdout.strip() == deployed["head"]
    assert (clone / "flows" / "train_swin.py").is_file()


# --- the image, where Docker runs -----------------------------------------------------------------


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on this machine"
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 30 s"
    if probe.returncode != 0:
        return f"no Docker daemon answers `docker info`: {probe.stderr.strip()[-200:]}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_dockerfile_builds_an_image_that_imports_the_flows():
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    tag = "camtrap:work-pools-test"
    subprocess.run(["docker", "build", "-t", tag, "."], cwd=ROOT, check=True, timeout=3500)
    try:
        probe = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--workdir",
                "/opt/camtrap",
                tag,
                "python",
                "-c",
                "import os, torch, flows.train_swin; print(os.getuid(), torch.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        uid, torch_version = probe.stdout.split()
        assert uid != "0"
        assert torch_version.split("+")[0] == dockerfile_pins()["torch"]
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
