# syntax=docker/dockerfile:1
# Assay images, two targets from one file:
#   docker build --target cpu -t assay:cpu .   # slim Python base, CPU wheels only (default)
#   docker build --target gpu -t assay:gpu .   # NVIDIA CUDA runtime base, `gpu` extra
# (the CPU image installs the `cpu` extra: faiss-cpu, onnxruntime)
# Both run as an unprivileged user, keep all state under the /data volume (so the root
# filesystem can be mounted read-only), and probe themselves with `assay health`.

# Base images, each named once: build and runtime stages must share the Python they run
# (the venv is copied from one to the other).
FROM python:3.11.11-slim-bookworm AS python-base
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS cuda-base

# ---- build: the CPU wheel set, in a venv that the runtime stage copies whole ----------------
FROM python-base AS build-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# The client distribution (clients/python) and the server in one command: pip takes the
# local assay-client for the server's pin.
RUN python -m venv /opt/assay \
    && /opt/assay/bin/pip install --no-cache-dir ./clients/python ".[cpu]" \
    && /opt/assay/bin/assay serve --help > /dev/null

# ---- build: the GPU wheel set (CUDA libraries come as pip wheels) ----------------------------
FROM cuda-base AS build-gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# Debian/Ubuntu package versions are pinned by the base image tag; pinning each one here
# would break on every security update of the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The gpu extra alone provides `faiss` and `onnxruntime` (faiss-gpu-cu12, onnxruntime-gpu):
# the CPU builds are in the cpu extra, which this image does not install.
RUN python3 -m venv /opt/assay \
    && /opt/assay/bin/pip install --no-cache-dir ./clients/python ".[gpu]" \
    && /opt/assay/bin/assay serve --help > /dev/null

# ---- runtime: GPU --------------------------------------------------------------------------
FROM cuda-base AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin assay \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build-gpu /opt/assay /opt/assay
ENV PATH=/opt/assay/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    NUMBA_CPU_NAME=generic \
    ASSAY_KERNEL_CACHE_DIR=/opt/assay/kernel-cache \
    ASSAY_DATA_DIR=/data \
    ASSAY_ADDRESS=0.0.0.0:50051 \
    ASSAY_HEALTH_ADDRESS=0.0.0.0:50052
VOLUME ["/data"]
# Compiled kernels baked into the image, so a new container serves its first Select
# without compiling: `assay warmup` runs every strategy's kernels in every dtype into
# the cache, as the runtime user, and the cache is then made read-only. Numba keys an
# entry by CPU name and features; NUMBA_CPU_NAME=generic (x86-64 baseline code) makes
# the entries valid on any x86-64 host. Drop it (at build and run) for code tuned to
# the build host: on another CPU model the warm-up then compiles at each start.
RUN mkdir /opt/assay/kernel-cache && chown 10001:10001 /opt/assay/kernel-cache
USER 10001:10001
RUN assay warmup && chmod -R a-w /opt/assay/kernel-cache
# 50051: the API (a token or mutual TLS required off loopback); 50052: health only; 9090: metrics
EXPOSE 50051 50052 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["assay", "health", "--target", "127.0.0.1:50052"]
ENTRYPOINT ["assay", "serve"]

# ---- runtime: CPU (last, so a plain `docker build .` gives it) --------------------------------
FROM python-base AS cpu
RUN useradd --system --uid 10001 --user-group --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin assay \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build-cpu /opt/assay /opt/assay
ENV PATH=/opt/assay/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    NUMBA_CPU_NAME=generic \
    ASSAY_KERNEL_CACHE_DIR=/opt/assay/kernel-cache \
    ASSAY_DATA_DIR=/data \
    ASSAY_ADDRESS=0.0.0.0:50051 \
    ASSAY_HEALTH_ADDRESS=0.0.0.0:50052
VOLUME ["/data"]
# Compiled kernels baked into the image, so a new container serves its first Select
# without compiling: `assay warmup` runs every strategy's kernels in every dtype into
# the cache, as the runtime user, and the cache is then made read-only. Numba keys an
# entry by CPU name and features; NUMBA_CPU_NAME=generic (x86-64 baseline code) makes
# the entries valid on any x86-64 host. Drop it (at build and run) for code tuned to
# the build host: on another CPU model the warm-up then compiles at each start.
RUN mkdir /opt/assay/kernel-cache && chown 10001:10001 /opt/assay/kernel-cache
USER 10001:10001
RUN assay warmup && chmod -R a-w /opt/assay/kernel-cache
EXPOSE 50051 50052 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["assay", "health", "--target", "127.0.0.1:50052"]
ENTRYPOINT ["assay", "serve"]
