# syntax=docker/dockerfile:1
# The reference rank runtime: `paraserve worker`, one container per rank.
#
#   docker build -f images/worker.Dockerfile -t paraserve-worker:dev .
#
# CPU torch by default (the ranks rendezvous over gloo). For NVIDIA GPUs (NCCL), build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# The operator sets the rank env (WORLD_SIZE, RANK, PARASERVE_*) and mounts the topology file;
# see docs/worker.md.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/paraserve
ENV PATH=/opt/paraserve/bin:$PATH
# torch first, from the index that matches the device; `paraserve[worker]` then finds it installed.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install ".[worker]" && pip check

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/paraserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/paraserve /opt/paraserve
RUN groupadd --system --gid 10001 paraserve \
    && useradd --system --uid 10001 --gid paraserve --no-create-home --home-dir /tmp paraserve
USER 10001:10001
WORKDIR /tmp
# 9400: Prometheus metrics (PARASERVE_METRICS_PORT); 29500: torch.distributed rendezvous on rank 0.
EXPOSE 9400 29500
ENTRYPOINT ["paraserve", "worker"]
