# wyoming-qwen: one image per server, for the CPU or an NVIDIA GPU. script/install-server does the install.
# It builds with the classic builder and with BuildKit, offline from a local base: no `# syntax` line (that
# makes BuildKit fetch a frontend from Docker Hub) and no `RUN --mount` (the classic builder rejects it).
#
#   docker build --target asr -t wyoming-qwen-asr .     # speech-to-text, port 10300
#   docker build --target tts -t wyoming-qwen-tts .     # text-to-speech, port 10200
#   NVIDIA GPU: add --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg CUDA=1
#               --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
#   Files the server writes are owned by UID:GID; match a host folder's owner with
#               --build-arg UID="$(id -u)" --build-arg GID="$(id -g)"   (Synology's first user: 1026 and 100)
#
#   docker run -d --network host -v wyoming-qwen-data:/data wyoming-qwen-asr
#
# Build arguments (CUDA, TORCH_INDEX, TORCH_SPEC and ALLOW_CUDA_TORCH reach script/install-server as its
# environment):
#   BASE         debian:bookworm-slim, or an nvidia/cuda *-runtime image; any Debian or Ubuntu with Python >= 3.10
#   CUDA         0: torch's CPU build; 1: its CUDA build
#   TORCH_INDEX  where torch comes from: "default" (PyTorch's CPU index; PyPI with CUDA=1), "" (PyPI), or a URL
#                such as https://download.pytorch.org/whl/cu126 (CUDA 12.6, for older drivers and GPUs)
#   TORCH_SPEC   torch requirements, e.g. "torch==2.14.1 torchaudio==2.11.0"; "" takes the newest
#   ALLOW_CUDA_TORCH  1: with CUDA=0, accept a CUDA build where the index gives one (several GB larger);
#                otherwise a CPU image whose index gave a CUDA build fails, saying why
#   UID, GID     the user the server runs as (default 1000:1000)
#
# Configuration at run time: every server option as an environment variable, QWEN_ASR_<OPTION> or
# QWEN_TTS_<OPTION> (`--idle-unload 60` is QWEN_ASR_IDLE_UNLOAD=60; switches take true/false), or as
# arguments after the image name. Models download on first use into /data (HF_HOME): mount a volume there.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS base
ARG UID=1000
ARG GID=1000
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python3-venv: the servers' own environment; ca-certificates: model downloads over HTTPS. Not pinned: the
# versions differ between the Debian and Ubuntu bases, and each base's release keeps them stable.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# The user may exist already (GID 100 is Debian's "users", UID 1000 is "ubuntu" on Ubuntu 24.04 images);
# everything below refers to the numbers only.
RUN (getent group "${GID}" >/dev/null || groupadd --gid "${GID}" wyoming) \
    && (getent passwd "${UID}" >/dev/null \
        || useradd --uid "${UID}" --gid "${GID}" --no-create-home --home-dir /data --shell /usr/sbin/nologin wyoming) \
    && mkdir -p /data/huggingface /voices \
    && chown -R "${UID}:${GID}" /data /voices

# --- speech-to-text ------------------------------------------------------------------------------------
FROM base AS asr
ARG UID=1000
ARG GID=1000
ARG CUDA=0
ARG TORCH_INDEX=default
ARG TORCH_SPEC=""
ARG ALLOW_CUDA_TORCH=0
COPY . /src
RUN PIP_NO_CACHE_DIR=1 /src/script/install-server asr --venv /opt/wyoming-qwen && rm -rf /src
# Set after the install, which runs as root and must write nothing into /data
ENV PATH=/opt/wyoming-qwen/bin:${PATH} \
    HOME=/data \
    HF_HOME=/data/huggingface \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    PYTHONUNBUFFERED=1 \
    QWEN_ASR_URI=tcp://0.0.0.0:10300
USER ${UID}:${GID}
WORKDIR /data
VOLUME ["/data"]
# 10301: the OpenAI-compatible HTTP API, with QWEN_ASR_HTTP=tcp://0.0.0.0:10301
EXPOSE 10300 10301
# The gateway answers `describe` without loading a model. The start period covers a --preload download.
HEALTHCHECK --interval=30s --timeout=15s --start-period=10m --retries=3 \
    CMD ["/bin/sh", "-c", "wyoming-qwen-client describe --uri tcp://127.0.0.1:${QWEN_ASR_URI##*:} --timeout 10 | grep -q qwen3-asr"]
ENTRYPOINT ["wyoming-qwen-asr"]

# --- text-to-speech ------------------------------------------------------------------------------------
FROM base AS tts
ARG UID=1000
ARG GID=1000
ARG CUDA=0
ARG TORCH_INDEX=default
ARG TORCH_SPEC=""
ARG ALLOW_CUDA_TORCH=0
COPY . /src
RUN PIP_NO_CACHE_DIR=1 /src/script/install-server tts --venv /opt/wyoming-qwen && rm -rf /src
# Set after the install, which runs as root and must write nothing into /data
ENV PATH=/opt/wyoming-qwen/bin:${PATH} \
    HOME=/data \
    HF_HOME=/data/huggingface \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    PYTHONUNBUFFERED=1 \
    QWEN_TTS_URI=tcp://0.0.0.0:10200 \
    QWEN_TTS_VOICES_DIR=/voices
USER ${UID}:${GID}
WORKDIR /data
VOLUME ["/data", "/voices"]
# 10201: the OpenAI-compatible HTTP API, with QWEN_TTS_HTTP=tcp://0.0.0.0:10201
EXPOSE 10200 10201
HEALTHCHECK --interval=30s --timeout=15s --start-period=10m --retries=3 \
    CMD ["/bin/sh", "-c", "wyoming-qwen-client describe --uri tcp://127.0.0.1:${QWEN_TTS_URI##*:} --timeout 10 | grep -q qwen3-tts"]
ENTRYPOINT ["wyoming-qwen-tts"]
