# The image that runs camtrap's flows on a GPU worker (Docker or Kubernetes work pools,
# deployments/docker.yaml and deployments/kubernetes.yaml). From the repository root:
#
#   docker build -t camtrap:0.1.0 --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
#   docker tag camtrap:0.1.0 REGISTRY/camtrap:0.1.0 && docker push REGISTRY/camtrap:0.1.0
#
# PyPI's Linux torch wheels bring their own CUDA libraries (nvidia-* wheels), so a slim Python
# base is enough: the host needs only the NVIDIA driver (and, for Docker, the NVIDIA Container
# Toolkit). For one CUDA build of torch: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# No Prefect settings are baked in: the worker gives each flow run PREFECT_API_URL (and key).
#
# The base image is pinned by digest, so a rebuild gets the same Python and Debian: the
# multi-arch index python:3.11-slim named in August 2026 (Python 3.11.16 on Debian trixie). To
# move to a newer one: docker buildx imagetools inspect python:3.11-slim (its "Digest:").
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the git_clone pull step (deployment part1-git) clones the code at run time
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The largest layer first, so a code change does not download torch again. These pins must
# equal pyproject.toml's (tests/integration/test_work_pools.py checks).
ARG TORCH_INDEX_URL=
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.14.1 torchvision==0.29.1

WORKDIR /opt/camtrap
# The other dependencies, exactly as pyproject.toml pins them (cached until it changes)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY camtrap/ camtrap/
COPY tasks/ tasks/
COPY flows/ flows/
RUN pip install . && rm -rf build camtrap.egg-info

# A non-root user; its cache folder (decoded images, torch weights) is a volume in
# deployments/docker.yaml, an emptyDir in the Kubernetes template (with HOME and /tmp: its root
# file system is read-only). The flow's entrypoint (flows/train_swin.py) is read from
# /opt/camtrap, the working directory set by the deployments' pull step; /home/camtrap is where
# git_clone clones.
RUN groupadd --gid 1000 camtrap \
    && useradd --create-home --uid 1000 --gid 1000 camtrap \
    && mkdir -p /var/cache/camtrap \
    && chown camtrap:camtrap /var/cache/camtrap
ENV CAMTRAP_CACHE_DIR=/var/cache/camtrap \
    TORCH_HOME=/var/cache/camtrap/torch
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="camtrap" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
# run.json's git_commit (the image holds no .git)
ENV CAMTRAP_GIT_COMMIT=${GIT_COMMIT}
# By number: Kubernetes' runAsNonRoot can check a uid, not a user name
USER 1000:1000
WORKDIR /home/camtrap

CMD ["camtrap", "--help"]
