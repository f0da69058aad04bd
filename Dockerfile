# syntax=docker/dockerfile:1
# Runtime image for iwp-annotate on Kubernetes (KubeRay head, GPU workers, job submitter).
#
#   docker build -t REGISTRY/iwp-annotate:0.1.0 .
#
# Base: rayproject/ray:<ray version>-py311-gpu rather than a bare nvidia/cuda image, because
#  - it ships Python 3.11 (the version this project is developed and tested on) and Ray at
#    exactly the version KubeRay's rayVersion names; the nvidia/cuda Ubuntu 24.04 images bring
#    Python 3.12 and no Ray, 22.04 brings 3.10;
#  - it already runs as the non-root user `ray` (UID 1000, GID 100) with a writable Python
#    environment, which is what the manifests' runAsUser: 1000 expects;
#  - it is the image family KubeRay documents and tests with (`ray start` on PATH, no
#    ENTRYPOINT to get in the way of the command KubeRay injects).
# The CUDA user-space libraries torch needs come with the torch wheels from PyPI; the node
# only has to provide an NVIDIA driver recent enough for them (see k8s/README.md).
#
# Keep RAY_VERSION equal to rayVersion in k8s/base/rayjob.yaml (tests/k8s checks it).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu

ARG RAY_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 1000:100
WORKDIR /home/ray

# torch and torchvision first, in their own layer: the largest and least often changed part.
# The same pair as dev.sh (the torchvision wheel that imports beside this torch).
RUN pip install "torch==2.14.1" "torchvision==0.29.1"

# The project itself (`pip install .`). Ray is pinned to the base image's version, with the
# `default` extra (dashboard + job API, which KubeRay's job submission needs), so pip
# never swaps the Ray that KubeRay starts. Sources are removed afterwards: the installed
# package in site-packages is what runs.
COPY --chown=1000:100 pyproject.toml README.md /tmp/src/
COPY --chown=1000:100 pipeline /tmp/src/pipeline
COPY --chown=1000:100 jobs /tmp/src/jobs
COPY --chown=1000:100 iwp_ops /tmp/src/iwp_ops
COPY --chown=1000:100 reference /tmp/src/reference
COPY --chown=1000:100 scenes /tmp/src/scenes
RUN pip install "ray[default,data]==${RAY_VERSION}" /tmp/src \
 && rm -rf /tmp/src \
 && iwp-annotate --help > /dev/null

# No ENTRYPOINT and no CMD of our own: KubeRay runs `ray start ...` (head and workers) and
# `ray job submit ...` (submitter) as the container command.
ENTRYPOINT []
CMD ["/bin/bash"]
