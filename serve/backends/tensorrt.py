"""The native TensorRT backend: a ``model.plan`` built by export-gan for one GPU model and one
TensorRT version, run through the TensorRT 10 tensor API with cuda-python for memory and
streams.

A plan is not portable: it only deserializes under the TensorRT version that built it and is
tuned for one GPU, so export-gan records both in ``metadata.json`` (``extra.tensorrt``:
``{"version": ..., "gpu": ...}``) and this backend refuses a plan whose record does not match
the machine, or whose files are not the ones recorded (their SHA-256). ``tensorrt`` and
``cuda-python`` are imported lazily: the module imports cleanly on a CPU-only machine.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import logging
import math
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ganserve.serve import inputs as model_inputs
from ganserve.serve.backends import Backend, EngineOptions
from ganserve.serve.errors import GanServeError, ModelLoadError
from ganserve.serve.metadata import METADATA_FILE, MODEL_FILE, PLAN_FILE, ModelMetadata

LOGGER = logging.getLogger(__name__)


# What a plan may hold where the model's contract has float32 or int64: engine-side casts are
# made while staging on the host (FP16 I/O, int32 labels).
_INPUT_DTYPES = {
    np.dtype(np.float32): (np.dtype(np.float32), np.dtype(np.float16)),
    np.dtype(np.int64): (np.dtype(np.int64), np.dtype(np.int32)),
}
_OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def import_cudart() -> Any:
    """The CUDA runtime module of cuda-python; raises ImportError when it is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python layout
    return cudart


def cuda_call(cudart: Any, what: str, result: tuple) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result, raising RuntimeError naming the CUDA
    error unless it is cudaSuccess; returns None, the one value, or a tuple of values."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {_error_name(cudart, error)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _error_name(cudart: Any, error: Any) -> str:
    name = getattr(error, "name", None)
    if name:
        return str(name)
    try:
        return _text(cudart.cudaGetErrorName(error)[1])
    except Exception:  # naming the error must not hide it
        return repr(error)


def _text(value: bytes | str) -> str:
    """A C string from cuda-python or NVML (bytes in some versions, str in others)."""
    if isinstance(value, bytes):
        value = value.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return value.strip()


def gpu_names(cudart: Any) -> list[str]:
    """Names of the visible CUDA devices, by device index; RuntimeError if CUDA cannot say."""
    count = cuda_call(cudart, "cudaGetDeviceCount", cudart.cudaGetDeviceCount())
    names = []
    for index in range(count):
        props = cuda_call(
            cudart, f"cudaGetDeviceProperties({index})", cudart.cudaGetDeviceProperties(index)
        )
        names.append(_text(props.name))
    return names


def plan_record(extra: Mapping[str, Any]) -> tuple[str, str] | None:
    """(TensorRT version, GPU name) that export-gan recorded for model.plan, or None."""
    record = extra.get("tensorrt")
    if not isinstance(record, Mapping):
        return None
    version, gpu = record.get("version"), record.get("gpu")
    if not (isinstance(version, str) and version and isinstance(gpu, str) and gpu):
        return None
    return version, gpu


def plan_mismatch(extra: Mapping[str, Any], trt_version: str, gpus: Sequence[str]) -> str | None:
    """None if the plan's record matches this TensorRT version and one of these GPUs, else
    what differs."""
    record = plan_record(extra)
    if record is None:
        return (
            f"{METADATA_FILE} has no extra.tensorrt record of the TensorRT version and GPU "
            f"{PLAN_FILE} was built for, so it cannot be matched to this machine (rebuild the "
            "plan with export-gan)"
        )
    version, gpu = record
    if version != trt_version:
        return (
            f"{PLAN_FILE} was built with TensorRT {version} but this machine has TensorRT "
            f"{trt_version} (rebuild the plan here, or install TensorRT {version})"
        )
    if gpu.casefold() not in {name.casefold() for name in gpus}:
        return (
            f"{PLAN_FILE} was built for GPU model {gpu!r} but this machine has "
            f"{', '.join(repr(name) for name in gpus)} (rebuild the plan on this GPU model)"
        )
    return None


def provenance_mismatch(
    extra: Mapping[str, Any], plan: bytes, version_dir: pathlib.Path
) -> str | None:
    """None if ``plan`` (model.plan's bytes) and the folder's model.onnx are the files
    export-gan recorded in ``extra.tensorrt`` (a record from before those hashes is taken as
    it is), else which one was replaced since the export."""
    record = extra.get("tensorrt")
    record = record if isinstance(record, Mapping) else {}
    want = record.get("plan_sha256")
    if isinstance(want, str) and hashlib.sha256(plan).hexdigest() != want:
        return (
            f"{PLAN_FILE} is not the plan {METADATA_FILE} records (its SHA-256 differs): it was "
            "replaced after the export; export the model again rather than copy a plan in"
        )
    want = record.get("onnx_sha256")
    onnx = version_dir / MODEL_FILE
    if isinstance(want, str) and onnx.is_file():
        with onnx.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256")
        if digest.hexdigest() != want:
            return (
                f"{PLAN_FILE} was built from another {MODEL_FILE} (its SHA-256 differs from the "
                "one recorded), so the two would give different images; export the model again"
            )
    return None


def nvidia_device_visible() -> bool:
    """Whether this machine shows any sign of an NVIDIA driver: its device nodes (WSL2's
    /dev/dxg included) or its /proc entry. Only used to word a reason; the check that decides
    is a CUDA device count."""
    return sys.platform != "linux" or any(
        os.path.exists(path) for path in ("/dev/nvidiactl", "/dev/dxg", "/proc/driver/nvidia")
    )


def runtime_unavailable() -> str | None:
    """None if TensorRT, cuda-python and at least one CUDA device are present, else why not."""
    # OSError too: the Python package imports its shared libraries, which may be missing.
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        if not nvidia_device_visible():  # installing tensorrt would not help: say the real lack
            return "no NVIDIA GPU is visible here (and the tensorrt package is not installed)"
        return f"the tensorrt package cannot be imported (pip install tensorrt-cu12): {exc}"
    try:
        cudart = import_cudart()
    except (ImportError, OSError) as exc:
        return f"cuda-python cannot be imported (pip install cuda-python): {exc}"
    try:
        names = gpu_names(cudart)
    except RuntimeError as exc:
        return f"no usable CUDA device ({exc})"
    if not names:
        return "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)"
    return None


def unavailable(version_dir: pathlib.Path) -> str | None:
    """None if the version folder's model.plan can run on this machine, else a one-line reason.

    Never raises. Cheap when there is no plan: that is checked before anything is imported.
    """
    try:
        return _unavailable(version_dir)
    except Exception as exc:  # this decides the backend; it must not fail the model load
        return f"cannot check {version_dir / PLAN_FILE} ({type(exc).__name__}: {exc})"


def _unavailable(version_dir: pathlib.Path) -> str | None:
    if not (version_dir / PLAN_FILE).is_file():
        return f"no {PLAN_FILE} in {version_dir} (export-gan builds one per GPU model)"
    try:
        metadata = ModelMetadata.read(version_dir / METADATA_FILE)
    except GanServeError as exc:
        return str(exc)
    if plan_record(metadata.extra) is None:
        return plan_mismatch(metadata.extra, "", [])
    reason = runtime_unavailable()
    if reason:
        return reason
    import tensorrt as trt

    # The GPU the engine will run on (EngineOptions.device_id, 0: the first that
    # CUDA_VISIBLE_DEVICES shows), not any GPU of the machine.
    return plan_mismatch(metadata.extra, trt.__version__, gpu_names(import_cudart())[:1])


@dataclasses.dataclass(frozen=True)
class PlanTensor:
    """One I/O tensor of a plan, as the engine describes it.

    Args:
        name: Tensor name.
        is_input: True for inputs, False for outputs.
        shape: Dimensions, -1 where dynamic.
        dtype: Host dtype of its buffer.
        batch_range: (min, max) batch of optimisation profile 0 for an input with a dynamic
            batch; (B, B) for a fixed batch B; None for outputs.
    """

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    batch_range: tuple[int, int] | None = None


def check_plan_signature(
    tensors: Sequence[PlanTensor], metadata: ModelMetadata, max_batch_size: int, source: str
) -> str:
    """Check a plan's inputs, output and batch range against the metadata and the batch size
    the server will send; return the output tensor's name. Raises ModelLoadError naming the
    mismatch."""
    inputs = {t.name: t for t in tensors if t.is_input}
    outputs = [t for t in tensors if not t.is_input]
    expected = set(model_inputs.input_names(metadata))
    if set(inputs) != expected:
        raise ModelLoadError(
            f"{source}: inputs are {sorted(inputs)}, metadata implies {sorted(expected)}"
        )
    for name, (dtype, item_shape) in model_inputs.input_specs(metadata).items():
        tensor = inputs[name]
        if len(tensor.shape) != 1 + len(item_shape) or tuple(tensor.shape[1:]) != item_shape:
            raise ModelLoadError(
                f"{source}: input {name} has shape {tensor.shape}, metadata implies "
                f"(N{''.join(f', {d}' for d in item_shape)})"
            )
        allowed = _INPUT_DTYPES[dtype]
        if tensor.dtype not in allowed:
            raise ModelLoadError(
                f"{source}: input {name} is {tensor.dtype}, expected "
                f"{' or '.join(str(d) for d in allowed)}"
            )
    if len(outputs) != 1:
        raise ModelLoadError(f"{source}: expected one output, found {len(outputs)}")
    out = outputs[0]
    m = metadata
    if len(out.shape) != 4 or tuple(out.shape[1:]) != (m.channels, m.height, m.width):
        raise ModelLoadError(
            f"{source}: output shape {out.shape} does not match metadata "
            f"(N, {m.channels}, {m.height}, {m.width})"
        )
    if out.dtype not in _OUTPUT_DTYPES:
        raise ModelLoadError(f"{source}: output is {out.dtype}, expected float32 or float16")
    for tensor in inputs.values():
        low, high = tensor.batch_range or (tensor.shape[0], tensor.shape[0])
        if low > 1 or high < max_batch_size:
            raise ModelLoadError(
                f"{source}: input {tensor.name} accepts batch sizes {low}..{high} but the server "
                f"sends 1..{max_batch_size}; rebuild the plan with a profile covering "
                f"1..{max_batch_size}, or lower --max-batch-size to {high}"
            )
    return out.name


@dataclasses.dataclass
class _Buffer:
    """A tensor's device buffer and its pinned host staging area, both for the largest batch."""

    tensor: PlanTensor
    item_shape: tuple[int, ...]  # one batch item: (latent_dim,), (), or (C, H, W)
    device: int
    host_ptr: int
    host: np.ndarray  # (max_batch, *item_shape) view of the pinned memory

    def nbytes(self, batch: int) -> int:
        return batch * math.prod(self.item_shape) * self.tensor.dtype.itemsize


class TensorRTEngine:
    """A deserialized model.plan with one execution context, one CUDA stream and buffers for
    the largest batch, allocated once. One thread at a time."""

    def __init__(
        self, version_dir: pathlib.Path, metadata: ModelMetadata, options: EngineOptions
    ) -> None:
        self.metadata = metadata
        self.backend = Backend.TENSORRT
        self._device_id = options.device_id
        self._max_batch = options.max_batch_size
        self._buffers: dict[str, _Buffer] = {}
        self._stream: Any = None
        self._context: Any = None
        self._engine: Any = None
        self._runtime: Any = None
        self._closed = False
        plan_path = version_dir / PLAN_FILE
        if not plan_path.is_file():
            raise ModelLoadError(
                f"{version_dir}: backend tensorrt needs a {PLAN_FILE} built by export-gan; "
                "there is none (use backend auto or onnxruntime-cuda)"
            )
        try:
            import tensorrt as trt

            cudart = import_cudart()
        except (ImportError, OSError) as exc:
            raise ModelLoadError(
                f"{plan_path}: backend tensorrt needs the tensorrt and cuda-python packages ({exc})"
            ) from exc
        self._trt = trt
        self._cudart = cudart
        try:
            self._open(plan_path, options)
        except BaseException:
            self.close()  # free whatever was allocated before the failure
            raise

    def _open(self, plan_path: pathlib.Path, options: EngineOptions) -> None:
        trt, cudart = self._trt, self._cudart
        try:
            names = gpu_names(cudart)
        except RuntimeError as exc:
            raise ModelLoadError(f"{plan_path}: no usable CUDA device ({exc})") from exc
        if not 0 <= self._device_id < len(names):
            raise ModelLoadError(
                f"{plan_path}: device_id {self._device_id} does not exist; this machine has "
                f"{len(names)} GPU(s)"
            )
        try:
            cuda_call(cudart, "cudaSetDevice", cudart.cudaSetDevice(self._device_id))
        except RuntimeError as exc:
            raise ModelLoadError(f"{plan_path}: GPU {self._device_id}: {exc}") from exc
        # The plan must match the GPU it will run on, not merely some GPU in the machine.
        mismatch = plan_mismatch(self.metadata.extra, trt.__version__, [names[self._device_id]])
        if mismatch:
            raise ModelLoadError(f"{plan_path} on GPU {self._device_id}: {mismatch}")
        try:
            plan = plan_path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{plan_path}: cannot read it ({exc})") from exc
        mismatch = provenance_mismatch(self.metadata.extra, plan, plan_path.parent)
        if mismatch:
            raise ModelLoadError(f"{plan_path}: {mismatch}")

        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ModelLoadError(
                f"{plan_path}: TensorRT {trt.__version__} cannot deserialize it (the log above "
                "says why); rebuild it with export-gan on this machine"
            )
        tensors = self._describe_tensors(plan_path)
        self._output = check_plan_signature(tensors, self.metadata, self._max_batch, str(plan_path))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(
                f"{plan_path}: TensorRT cannot create an execution context (out of GPU memory?)"
            )
        try:
            # Non-blocking: no implicit synchronisation with other work on the legacy stream.
            self._stream = cuda_call(
                cudart,
                "cudaStreamCreateWithFlags",
                cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
            )
            for tensor in tensors:
                self._allocate(tensor)
        except RuntimeError as exc:
            raise ModelLoadError(f"{plan_path}: {exc}") from exc
        LOGGER.info(
            "loaded %s on GPU %d (%s), batch 1..%d",
            plan_path,
            self._device_id,
            names[self._device_id],
            self._max_batch,
        )

    def _describe_tensors(self, plan_path: pathlib.Path) -> list[PlanTensor]:
        trt, engine = self._trt, self._engine
        tensors = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError as exc:  # bf16, fp8 and friends have no numpy type
                raise ModelLoadError(
                    f"{plan_path}: tensor {name} has a type numpy cannot hold ({exc})"
                ) from exc
            if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                raise ModelLoadError(f"{plan_path}: tensor {name} is not in device memory")
            if engine.get_tensor_format(name) != trt.TensorFormat.LINEAR:
                # Vectorized formats (CHW4, HWC8, ...) would need repacking on the host.
                raise ModelLoadError(
                    f"{plan_path}: tensor {name} has format {engine.get_tensor_format(name)}; "
                    "build the plan with linear (default) I/O formats"
                )
            batch_range = None
            if is_input:
                if shape and shape[0] == -1:
                    low, _, high = engine.get_tensor_profile_shape(name, 0)
                    batch_range = (int(low[0]), int(high[0]))
                elif shape:
                    batch_range = (shape[0], shape[0])
            tensors.append(PlanTensor(name, is_input, shape, dtype, batch_range))
        return tensors

    def _allocate(self, tensor: PlanTensor) -> None:
        """Device buffer and pinned host buffer for max_batch items; bind the device address."""
        cudart = self._cudart
        item_shape = tensor.shape[1:]
        size = self._max_batch * math.prod(item_shape) * tensor.dtype.itemsize
        device = cuda_call(cudart, f"cudaMalloc({tensor.name})", cudart.cudaMalloc(size))
        # Recorded at once so close() frees it even if the next allocation fails.
        buffer = _Buffer(tensor, item_shape, device, 0, np.empty(0, tensor.dtype))
        self._buffers[tensor.name] = buffer
        # Pinned memory makes cudaMemcpyAsync truly asynchronous and about twice as fast as
        # pageable memory, which the driver would first stage through a pinned bounce buffer.
        buffer.host_ptr = cuda_call(
            cudart, f"cudaMallocHost({tensor.name})", cudart.cudaMallocHost(size)
        )
        raw = (ctypes.c_byte * size).from_address(buffer.host_ptr)
        buffer.host = np.frombuffer(raw, dtype=tensor.dtype).reshape(self._max_batch, *item_shape)
        if not self._context.set_tensor_address(tensor.name, int(device)):
            raise RuntimeError(f"TensorRT refused the address of tensor {tensor.name}")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Input name -> (N, ...) host batch -> (N, C, H, W) float32 on the host."""
        if self._closed:
            raise RuntimeError(f"engine for model {self.metadata.name!r} is closed")
        m = self.metadata
        n = feeds["z"].shape[0]
        if not 1 <= n <= self._max_batch:
            raise ValueError(f"batch of {n} is outside 1..max_batch_size ({self._max_batch})")
        for name in model_inputs.input_names(m):
            item_shape = self._buffers[name].item_shape
            if name not in feeds or feeds[name].shape != (n, *item_shape):
                got = feeds[name].shape if name in feeds else "nothing"
                raise ValueError(f"input {name} is {got}, expected {(n, *item_shape)}")
        cudart, context, stream = self._cudart, self._context, self._stream
        # The current device is per host thread, and the batcher's worker thread is not the
        # one that loaded the engine.
        cuda_call(cudart, "cudaSetDevice", cudart.cudaSetDevice(self._device_id))
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name in model_inputs.input_names(m):  # a feed the model does not take is ignored
            buffer, array = self._buffers[name], feeds[name]
            # Casts to the plan's dtype (int64 labels into an int32 plan, say) while staging.
            np.copyto(buffer.host[:n], array, casting="same_kind")
            if not context.set_input_shape(name, (n, *buffer.item_shape)):
                raise RuntimeError(f"TensorRT refused batch {n} for input {name}")
            cuda_call(
                cudart,
                f"cudaMemcpyAsync({name}, host to device)",
                cudart.cudaMemcpyAsync(
                    buffer.device, buffer.host_ptr, buffer.nbytes(n), h2d, stream
                ),
            )
        out = self._buffers[self._output]
        shape = tuple(context.get_tensor_shape(self._output))
        if shape != (n, *out.item_shape):
            raise RuntimeError(f"TensorRT output shape {shape}, expected {(n, *out.item_shape)}")
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError(f"TensorRT failed to enqueue batch {n}; see the log above")
        cuda_call(
            cudart,
            f"cudaMemcpyAsync({self._output}, device to host)",
            cudart.cudaMemcpyAsync(
                out.host_ptr,
                out.device,
                out.nbytes(n),
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                stream,
            ),
        )
        cuda_call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        # A copy: the pinned buffer is overwritten by the next call.
        return out.host[:n].astype(np.float32, copy=True)

    def close(self) -> None:
        """Free the device and pinned buffers and the stream, then the context, engine and
        runtime, in that order. Safe to call twice; failures are logged, not raised."""
        if self._closed:
            return
        self._closed = True
        cudart = getattr(self, "_cudart", None)
        if cudart is not None:
            self._release(cudart)
        # Destruction order matters to TensorRT: context before engine before runtime.
        self._context = None
        self._engine = None
        self._runtime = None

    def _release(self, cudart: Any) -> None:
        def attempt(what: str, result: tuple) -> None:
            try:
                cuda_call(cudart, what, result)
            except RuntimeError as exc:
                LOGGER.warning("model %r: %s", self.metadata.name, exc)

        attempt("cudaSetDevice", cudart.cudaSetDevice(self._device_id))
        if self._stream is not None:
            # Nothing may be in flight into memory that is about to be freed.
            attempt("cudaStreamSynchronize", cudart.cudaStreamSynchronize(self._stream))
        for buffer in self._buffers.values():
            buffer.host = np.empty(0, buffer.tensor.dtype)  # drop the view before the memory
            if buffer.host_ptr:
                attempt(f"cudaFreeHost({buffer.tensor.name})", cudart.cudaFreeHost(buffer.host_ptr))
            attempt(f"cudaFree({buffer.tensor.name})", cudart.cudaFree(buffer.device))
        self._buffers.clear()
        if self._stream is not None:
            attempt("cudaStreamDestroy", cudart.cudaStreamDestroy(self._stream))
            self._stream = None


@functools.cache
def trt_logger(trt: Any) -> Any:
    """The process's one trt.ILogger, forwarding TensorRT's messages to this module's logger.

    TensorRT keeps the first logger it is given for the whole process (later ones only earn a
    warning) and calls it through a raw pointer: one logger, kept alive here for good, serves
    every runtime and builder."""
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        # TensorRT's INFO is a dozen lines per engine load: debug material.
        severity.INFO: logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            python_level = levels.get(level, logging.DEBUG)
            if LOGGER.isEnabledFor(python_level):
                LOGGER.log(python_level, "TensorRT: %s", msg)

    return _Logger()
