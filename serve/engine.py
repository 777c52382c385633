"""Execution backends: an ONNX Runtime session that maps (z, label) to images.

An engine is called from one worker thread at a time; ONNX Runtime releases the GIL while it
computes, so the event loop keeps serving.
"""

from __future__ import annotations

import enum
import logging
import pathlib

import numpy as np
import onnxruntime as ort

from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metadata import ModelMetadata

LOGGER = logging.getLogger(__name__)


class Backend(enum.Enum):
    """Execution backend choice; AUTO picks CUDA when ONNX Runtime has it, else CPU."""

    AUTO = "auto"
    ONNXRUNTIME_CPU = "onnxruntime-cpu"
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"


_PROVIDERS = {
    Backend.ONNXRUNTIME_CPU: ["CPUExecutionProvider"],
    Backend.ONNXRUNTIME_CUDA: ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def resolve_backend(backend: Backend) -> Backend:
    """Turn AUTO into a concrete backend available in this process."""
    available = ort.get_available_providers()
    if backend is Backend.AUTO:
        cuda = "CUDAExecutionProvider" in available
        return Backend.ONNXRUNTIME_CUDA if cuda else Backend.ONNXRUNTIME_CPU
    if backend is Backend.ONNXRUNTIME_CUDA and "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            "backend onnxruntime-cuda was requested but this onnxruntime has no "
            f"CUDAExecutionProvider (available: {', '.join(available)}); install onnxruntime-gpu "
            "or use --backend onnxruntime-cpu"
        )
    return backend


class OnnxEngine:
    """An ONNX Runtime session for one model version."""

    def __init__(
        self,
        onnx_path: pathlib.Path,
        metadata: ModelMetadata,
        *,
        backend: Backend = Backend.AUTO,
        intra_op_threads: int = 0,
    ) -> None:
        self.metadata = metadata
        self.backend = resolve_backend(backend)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        try:
            self._session = ort.InferenceSession(
                str(onnx_path), options, providers=_PROVIDERS[self.backend]
            )
        except Exception as exc:  # ORT raises several unrelated types for a bad file
            raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from exc
        self._check_signature(onnx_path)

    def _check_signature(self, onnx_path: pathlib.Path) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        expected = {"z"} | ({"label"} if self.metadata.conditional else set())
        if set(inputs) != expected:
            raise ModelLoadError(
                f"{onnx_path}: inputs are {sorted(inputs)}, metadata implies {sorted(expected)}"
            )
        z_shape = inputs["z"].shape
        if len(z_shape) != 2 or z_shape[1] != self.metadata.latent_dim:
            raise ModelLoadError(
                f"{onnx_path}: input z has shape {z_shape}, metadata says latent_dim "
                f"{self.metadata.latent_dim}"
            )
        outputs = self._session.get_outputs()
        if len(outputs) != 1:
            raise ModelLoadError(f"{onnx_path}: expected one output, found {len(outputs)}")
        self._output = outputs[0].name
        m = self.metadata
        if list(outputs[0].shape[1:]) != [m.channels, m.height, m.width]:
            raise ModelLoadError(
                f"{onnx_path}: output shape {outputs[0].shape} does not match metadata "
                f"(N, {m.channels}, {m.height}, {m.width})"
            )

    def run(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """(N, latent_dim) float32 [+ (N,) int64] -> (N, C, H, W) float32 in [-1, 1]."""
        feeds = {"z": z}
        if self.metadata.conditional:
            feeds["label"] = labels
        return self._session.run([self._output], feeds)[0]
