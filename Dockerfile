# VSSM serve: CPU image by default.  For CUDA, build from a PyTorch CUDA image (it brings Python and torch):
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime -t vssm-serve:cuda .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where torch comes from when the base image has none: PyTorch's CPU wheels (no CUDA download).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VSSM_HOST=0.0.0.0 \
    VSSM_PORT=8000 \
    VSSM_CHECKPOINTS=/app/checkpoints

WORKDIR /app
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A C compiler for the S4D recurrence kernel (model/native.py), built on first use for the CPU it
# runs on; without one the layers run on their matrices: the same tokens, slower small rounds.
# hadolint ignore=DL3008
RUN if ! command -v cc >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi

# Same install steps as `make install` (README): torch 2.13.0 unless the base image has a torch, then the project.
COPY pyproject.toml README.md ./
COPY model ./model
COPY server ./server
RUN python -c "import torch" 2>/dev/null || pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0; \
    pip install --no-cache-dir .

COPY checkpoints ./checkpoints
RUN useradd --create-home --uid 10001 vssm
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"]
CMD ["vssm", "serve"]
