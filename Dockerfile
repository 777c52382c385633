# syntax=docker/dockerfile:1
#
# ganserve images, one Dockerfile, three targets:
#
#   docker build --target cpu -t ganserve:0.1.0 .        # ONNX Runtime CPU, bundled digits model
#   docker build --target gpu -t ganserve:0.1.0-gpu .    # CUDA + cuDNN, onnxruntime-gpu, TensorRT
#   docker build --target train -t ganserve-train:0.1.0 . # gan-train / export-gan, torch CPU build
#
# Each builder stage makes a virtual environment in /opt/venv; the runtime stages copy that venv
# and nothing else from it (no compiler, no pip cache, no source tree). The serving images never
# contain torch: `pip install .` is the serving install, and the train/dev extras are only
# installed in the train target. The serving installs take their versions from
# docker/constraints.txt (pip -c): a rebuild installs what was tested, not the newest release in
# pyproject.toml's ranges. Both serving images run as UID 65532 and work with a read-only
# root filesystem: the only writable paths they need are /tmp (HOME and TMPDIR point there) and,
# for TensorRT engine caches, /var/cache/ganserve. See docs/deploy.md.

# Pinned bases; override with --build-arg (e.g. a digest, python:3.11.14-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
# Sources, shared by the builders: just what `pip install .` reads.
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY docker/constraints.txt docker/
COPY serve serve
COPY client client
COPY proto proto
COPY train train
COPY export export
COPY bench bench

# ---------------------------------------------------------------------------------------------
# CPU builder: the serving install (onnxruntime, grpcio, ...; no torch) into /opt/venv, every
# package at its docker/constraints.txt version.
FROM ${PYTHON_IMAGE} AS builder-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=source /src /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /src/docker/constraints.txt /src \
    && /opt/venv/bin/ganserve serve --help >/dev/null

# ---------------------------------------------------------------------------------------------
# CPU runtime.
FROM ${PYTHON_IMAGE} AS cpu
LABEL org.opencontainers.image.title="ganserve" \
      org.opencontainers.image.description="GAN image generation over gRPC (ONNX Runtime CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
COPY --from=builder-cpu /opt/venv /opt/venv
# The bundled model, so `docker run` serves at once; mount real models over /models.
COPY models/digits/2/model.onnx models/digits/2/model.fp16.onnx models/digits/2/metadata.json \
     /models/digits/2/
USER 65532:65532
EXPOSE 50051 8000
# gRPC health (grpc.health.v1.Health, service ""), plaintext or TLS: serve/healthcheck.py, the
# same command the Helm chart's probes run under TLS.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ganserve.serve.healthcheck"]
# Exec form: ganserve is PID 1 and gets SIGTERM itself (health NOT_SERVING, drain, exit 0).
ENTRYPOINT ["ganserve", "serve"]
CMD ["--model-repository", "/models", "--log-format", "json"]

# ---------------------------------------------------------------------------------------------
# GPU base: CUDA runtime + cuDNN with Ubuntu's Python 3.11 (same interpreter path in builder and
# runtime, so the copied venv's symlinks resolve).
FROM ${CUDA_IMAGE} AS cuda-python
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# GPU builder: the serving install with the gpu extra (onnxruntime-gpu, tensorrt-cu12,
# cuda-python, nvidia-ml-py; all CUDA 12 builds, like CUDA_IMAGE). onnxruntime and
# onnxruntime-gpu share the `onnxruntime` package folder, so the CPU wheel is removed and the GPU
# wheel reinstalled over it. The build fails unless CUDA is then among the providers and every
# library the CUDA and TensorRT providers link (libcudart, cuBLAS, cuDNN, libnvinfer, ...) is
# in the image: a provider built for another CUDA major would otherwise fail only when a model
# loads on a GPU. libnvinfer is in the tensorrt_libs package folder, which ganserve loads by
# path before a TensorRT session opens, as the check's LD_LIBRARY_PATH stands in for.
# (libcuda.so.1 is the driver's, mounted by the NVIDIA container runtime at run time.)
# docker/constraints.txt pins the packages shared with the CPU image, the gpu extra's, pip and
# tensorrt-cu12, but not the TensorRT and CUDA wheels tensorrt-cu12 pulls in: they come from
# NVIDIA's index through stub packages and could not be resolved where the list was made.
FROM cuda-python AS builder-gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=source /src /src
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /src/docker/constraints.txt --upgrade pip \
    && /opt/venv/bin/pip install -c /src/docker/constraints.txt "/src[gpu]" \
    && ORT_GPU="$(/opt/venv/bin/pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
    && /opt/venv/bin/pip uninstall -y onnxruntime \
    && /opt/venv/bin/pip install -c /src/docker/constraints.txt --force-reinstall --no-deps \
        "onnxruntime-gpu==${ORT_GPU}" \
    && /opt/venv/bin/python -c "import onnxruntime as ort, sys; \
sys.exit('CUDAExecutionProvider' not in ort.get_available_providers())" \
    && PROVIDER="$(/opt/venv/bin/python -c "import onnxruntime, pathlib; \
print(next(pathlib.Path(onnxruntime.__file__).parent.glob('capi/libonnxruntime_providers_cuda.so')))")" \
    && MISSING="$(ldd "$PROVIDER" | grep 'not found' | grep -v 'libcuda\.so\.1' || true)" \
    && if [ -n "$MISSING" ]; then echo "the CUDA provider needs libraries this base lacks:"; \
        echo "$MISSING"; exit 1; fi \
    && TRT_LIBS="$(/opt/venv/bin/python -c "import importlib.util; \
print(importlib.util.find_spec('tensorrt_libs').submodule_search_locations[0])")" \
    && if [ ! -f "${PROVIDER%cuda.so}tensorrt.so" ]; then \
        echo "this onnxruntime-gpu has no TensorRT provider (${PROVIDER%cuda.so}tensorrt.so)"; \
        exit 1; fi \
    && MISSING="$(LD_LIBRARY_PATH="$TRT_LIBS" ldd "${PROVIDER%cuda.so}tensorrt.so" \
        | grep 'not found' | grep -v 'libcuda\.so\.1' || true)" \
    && if [ -n "$MISSING" ]; then echo "the TensorRT provider needs libraries this base lacks:"; \
        echo "$MISSING"; exit 1; fi \
    && /opt/venv/bin/ganserve serve --help >/dev/null

# GPU runtime.
FROM cuda-python AS gpu
LABEL org.opencontainers.image.title="ganserve-gpu" \
      org.opencontainers.image.description="GAN image generation over gRPC (CUDA, TensorRT)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=builder-gpu /opt/venv /opt/venv
COPY models/digits/2/model.onnx models/digits/2/model.fp16.onnx models/digits/2/metadata.json \
     /models/digits/2/
# TensorRT engine caches (minutes to build): mount a volume here to keep them across restarts.
RUN mkdir -p /var/cache/ganserve && chown 65532:65532 /var/cache/ganserve
USER 65532:65532
EXPOSE 50051 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "ganserve.serve.healthcheck"]
ENTRYPOINT ["ganserve", "serve"]
CMD ["--model-repository", "/models", "--log-format", "json", \
     "--engine-cache-dir", "/var/cache/ganserve"]

# ---------------------------------------------------------------------------------------------
# Training and export (optional): torch's CPU build from PyTorch's CPU wheel index (PyPI's Linux
# torch pulls the multi-GB CUDA libraries), then the train extra.
FROM ${PYTHON_IMAGE} AS builder-train
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=source /src /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && /opt/venv/bin/pip install "/src[train]"

FROM ${PYTHON_IMAGE} AS train
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=builder-train /opt/venv /opt/venv
# The working directory is the user's: gan-train and export-gan write there by default
# (WORKDIR alone would make it root's). Mount a volume at /work to keep what they write.
RUN install -d -o 65532 -g 65532 /work
WORKDIR /work
USER 65532:65532
ENTRYPOINT ["gan-train"]
CMD ["--help"]
