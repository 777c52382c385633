"""ONNX Runtime on the CPU: the embedded default backend, and the one CI runs."""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import onnxruntime as ort

from ganserve.serve import inputs as model_inputs
from ganserve.serve.backends import Backend, run_checked
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metadata import ModelMetadata

LOGGER = logging.getLogger(__name__)


def check_signature(session: ort.InferenceSession, metadata: ModelMetadata, source: str) -> str:
    """Check the session's inputs and output against the metadata; return the output name."""
    inputs = {i.name: i for i in session.get_inputs()}
    expected = set(model_inputs.input_names(metadata))
    if set(inputs) != expected:
        raise ModelLoadError(
            f"{source}: inputs are {sorted(inputs)}, metadata implies {sorted(expected)}"
        )
    for name, (dtype, shape) in model_inputs.input_specs(metadata).items():
        found = inputs[name]
        if len(found.shape) != 1 + len(shape) or list(found.shape[1:]) != list(shape):
            raise ModelLoadError(
                f"{source}: input {name} has shape {found.shape}, metadata implies "
                f"(N{''.join(f', {d}' for d in shape)})"
            )
        if found.type != _ort_type(dtype):
            raise ModelLoadError(
                f"{source}: input {name} is {found.type}, expected {_ort_type(dtype)}"
            )
    outputs = session.get_outputs()
    if len(outputs) != 1:
        raise ModelLoadError(f"{source}: expected one output, found {len(outputs)}")
    m = metadata
    if list(outputs[0].shape[1:]) != [m.channels, m.height, m.width]:
        raise ModelLoadError(
            f"{source}: output shape {outputs[0].shape} does not match metadata "
            f"(N, {m.channels}, {m.height}, {m.width})"
        )
    if outputs[0].type != "tensor(float)":
        raise ModelLoadError(f"{source}: output is {outputs[0].type}, expected tensor(float)")
    return outputs[0].name


def _ort_type(dtype: np.dtype) -> str:
    """ONNX Runtime's name for a tensor of ``dtype``: tensor(float), tensor(int64)."""
    return f"tensor({'float' if dtype == np.float32 else dtype.name})"


def open_session(
    onnx_path: pathlib.Path,
    options: ort.SessionOptions,
    providers: list,
) -> ort.InferenceSession:
    """An InferenceSession, with any load failure turned into a ModelLoadError."""
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=providers)
    except Exception as exc:  # ORT raises several unrelated types for a bad file
        raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from exc


class OnnxCpuEngine:
    """An ONNX Runtime CPU session for one model version."""

    def __init__(self, version_dir: pathlib.Path, metadata: ModelMetadata, options) -> None:
        self.metadata = metadata
        self.backend = Backend.ONNXRUNTIME_CPU
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.intra_op_threads
        # ORT's pool spin-waits between calls by default, burning cores the event loop and
        # the other engine instances need; batches arrive in bursts, so sleep instead.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        onnx_path = version_dir / options.model_file
        self._session = open_session(onnx_path, session_options, ["CPUExecutionProvider"])
        self._output = check_signature(self._session, metadata, str(onnx_path))

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self._session
        if session is None:  # as the GPU engines say it, not an AttributeError on None
            raise RuntimeError(f"engine for model {self.metadata.name!r} is closed")
        return session.run([self._output], feeds)[0]

    def close(self) -> None:
        self._session = None


def tune_threads(
    version_dir: pathlib.Path,
    metadata: ModelMetadata,
    options,
    candidates: list[int],
) -> int:
    """The intra-op thread count (of ``candidates``) that runs the largest batch fastest.

    Small generators lose more to waking pool threads than they gain from them (the bundled
    digits model: 1 thread is 1.5x faster than 2 at batch 64 on 2 cores), large ones gain;
    measuring beats guessing, and costs a few calls at load time.
    """
    import dataclasses
    import time

    candidates = sorted(set(candidates))
    if len(candidates) == 1:
        return candidates[0]
    m = metadata
    timings = {}
    for threads in candidates:
        # The engine checks the model's signature before any feeds are built for it.
        engine = OnnxCpuEngine(
            version_dir, m, dataclasses.replace(options, intra_op_threads=threads)
        )
        feeds = model_inputs.zero_feeds(m, options.max_batch_size)
        runs = []
        for _ in range(4):  # the first call allocates and is not counted
            started = time.perf_counter()
            run_checked(engine, feeds, f"timing batch {options.max_batch_size}")
            runs.append(time.perf_counter() - started)
        timings[threads] = sorted(runs[1:])[1]
        engine.close()
    best = min(timings, key=timings.get)
    LOGGER.info(
        "model %s v%s: %d intra-op thread(s) (batch %d: %s)",
        m.name,
        m.version,
        best,
        options.max_batch_size,
        ", ".join(f"{t} thread(s) {s * 1e3:.2f} ms" for t, s in timings.items()),
    )
    return best
