"""Execution backends: turn (z, label) into images on some device.

Every backend is an `Engine`: ``run(feeds) -> (N, C, H, W) float32`` on the host, where
``feeds`` maps the model's input names (`ganserve.serve.inputs`) to batches; callable from one
worker thread at a time per engine instance. Backends that need a GPU import their
libraries lazily, so the CPU install never needs them.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import pathlib
import time
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from ganserve.serve import inputs
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metadata import MODEL_FILE, PLAN_FILE, ModelMetadata

LOGGER = logging.getLogger(__name__)


class Backend(enum.Enum):
    """Execution backend of a model; AUTO picks the fastest one available (see resolve)."""

    AUTO = "auto"
    ONNXRUNTIME_CPU = "onnxruntime-cpu"
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"
    ONNXRUNTIME_TENSORRT = "onnxruntime-tensorrt"
    TENSORRT = "tensorrt"  # the native model.plan engine built by export-gan


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """Settings shared by the backends.

    Args:
        intra_op_threads: ONNX Runtime CPU threads per engine instance; 0 lets it choose.
        device_id: CUDA device.
        max_batch_size: Largest batch the engine will see (TensorRT profile max).
        preferred_batch_sizes: Batch sizes the engine will mostly see (TensorRT profile opt,
            warm-up sizes).
        cache_dir: Writable folder for TensorRT engine caches; None disables caching.
        model_file: The ONNX file the ONNX Runtime backends open: model.onnx (FP32) or
            model.fp16.onnx (written by ``export-gan --fp16-onnx``).
    """

    intra_op_threads: int = 0
    device_id: int = 0
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    cache_dir: pathlib.Path | None = None
    model_file: str = MODEL_FILE


class Engine(Protocol):
    """What the batcher needs from a backend."""

    metadata: ModelMetadata
    backend: Backend

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Input name -> (N, ...) batch (see `ganserve.serve.inputs`) -> (N, C, H, W) float32
        in [-1, 1]."""
        ...

    def close(self) -> None:
        """Release device memory and sessions."""
        ...


def run_checked(engine: Engine, feeds: dict[str, np.ndarray], doing: str) -> np.ndarray:
    """``engine.run`` at load time, where any failure of the model is a ModelLoadError."""
    m = engine.metadata
    try:
        return engine.run(feeds)
    except Exception as exc:  # ORT and TensorRT raise many unrelated types
        raise ModelLoadError(f"model {m.name!r} v{m.version}: {doing} failed ({exc})") from exc


def warmup(engine: Engine, batch_sizes: Iterable[int]) -> None:
    """Run every batch size once so first requests do not pay for kernel selection or
    allocation (cuDNN algorithm search, TensorRT engine build, CPU arena growth)."""
    m = engine.metadata
    for size in sorted(set(batch_sizes)):
        out = run_checked(engine, inputs.zero_feeds(m, size), f"warm-up at batch {size}")
        if out.shape != (size, m.channels, m.height, m.width):
            raise ModelLoadError(
                f"model {m.name!r} v{m.version}: warm-up at batch {size} returned shape "
                f"{out.shape}, expected {(size, m.channels, m.height, m.width)}"
            )


def check_classes(engine: Engine) -> None:
    """Run one image of the highest class metadata.json allows: a model with fewer classes
    than its metadata says would otherwise load, warm up (on class 0) and then fail those
    requests with INTERNAL."""
    m = engine.metadata
    if not m.conditional:
        return
    feeds = inputs.zero_feeds(m, 1)
    feeds["label"][:] = m.num_classes - 1
    run_checked(
        engine,
        feeds,
        f"an image of class {m.num_classes - 1} (metadata.json: num_classes {m.num_classes})",
    )


def image_seconds(engine: Engine, batch_size: int, runs: int = 2) -> float:
    """Seconds per image of a warm engine at ``batch_size``: the fastest of ``runs`` calls.
    The batcher uses it to judge whether waiting images are worth a batch of their own."""
    feeds = inputs.zero_feeds(engine.metadata, batch_size)
    best = math.inf
    for _ in range(runs):
        started = time.perf_counter()
        run_checked(engine, feeds, f"timing batch {batch_size}")
        best = min(best, time.perf_counter() - started)
    return best / batch_size


def _gpu_unavailable(backend: Backend, version_dir: pathlib.Path) -> str | None:
    """None if ``backend`` can run here, else the reason it cannot."""
    if backend is Backend.ONNXRUNTIME_CPU:
        return None
    if backend in (Backend.ONNXRUNTIME_CUDA, Backend.ONNXRUNTIME_TENSORRT):
        from ganserve.serve.backends import cuda

        return cuda.unavailable(backend)
    from ganserve.serve.backends import tensorrt

    return tensorrt.unavailable(version_dir)


def candidates(requested: Backend, version_dir: pathlib.Path) -> list[Backend]:
    """The backends to try, in order: an explicit one alone (refused if it cannot run here),
    or for AUTO those that can run here of the native TensorRT engine (a model.plan built for
    this GPU and TensorRT version), ONNX Runtime CUDA, and the CPU, which is always last.

    These checks are cheap (no model is opened), so a candidate can still fail to open: the
    model loader then tries the next one. A model.plan that cannot be used is named in a
    warning, since serving without it is slower than its owner expects.
    """
    if requested is not Backend.AUTO:
        reason = _gpu_unavailable(requested, version_dir)
        if reason:
            raise ModelLoadError(f"backend {requested.value} cannot run here: {reason}")
        return [requested]
    found = []
    for candidate in (Backend.TENSORRT, Backend.ONNXRUNTIME_CUDA):
        reason = _gpu_unavailable(candidate, version_dir)
        if reason is None:
            found.append(candidate)
        elif candidate is Backend.TENSORRT and (version_dir / PLAN_FILE).is_file():
            LOGGER.warning("%s: auto backend: not using model.plan (%s)", version_dir, reason)
        else:
            LOGGER.debug("auto backend: not %s (%s)", candidate.value, reason)
    return [*found, Backend.ONNXRUNTIME_CPU]


def resolve(requested: Backend, version_dir: pathlib.Path) -> Backend:
    """The first of `candidates`: AUTO made concrete, an explicit backend checked."""
    return candidates(requested, version_dir)[0]


def create_engine(
    version_dir: pathlib.Path,
    metadata: ModelMetadata,
    backend: Backend,
    options: EngineOptions,
) -> Engine:
    """Open one engine instance for the model version in ``version_dir``."""
    backend = resolve(backend, version_dir)
    if backend is Backend.ONNXRUNTIME_CPU:
        from ganserve.serve.backends.cpu import OnnxCpuEngine

        return OnnxCpuEngine(version_dir, metadata, options)
    if backend in (Backend.ONNXRUNTIME_CUDA, Backend.ONNXRUNTIME_TENSORRT):
        from ganserve.serve.backends.cuda import OnnxCudaEngine

        return OnnxCudaEngine(version_dir, metadata, options, backend)
    from ganserve.serve.backends.tensorrt import TensorRTEngine

    return TensorRTEngine(version_dir, metadata, options)
