"""ONNX Runtime on an NVIDIA GPU: the CUDA execution provider, or TensorRT inside ONNX Runtime.

Both need the ``onnxruntime-gpu`` wheel in place of ``onnxruntime``; nothing here imports
anything beyond onnxruntime and numpy, so the module imports cleanly on a CPU-only machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import logging
import pathlib
import sys

import numpy as np
import onnxruntime as ort

from ganserve.serve import inputs as model_inputs
from ganserve.serve.backends import Backend, EngineOptions
from ganserve.serve.backends.cpu import check_signature, open_session
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metadata import ModelMetadata

LOGGER = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

_PROVIDERS = {
    Backend.ONNXRUNTIME_CUDA: CUDA_PROVIDER,
    Backend.ONNXRUNTIME_TENSORRT: TENSORRT_PROVIDER,
}
_INSTALL_HINT = {
    CUDA_PROVIDER: "install onnxruntime-gpu in place of onnxruntime",
    TENSORRT_PROVIDER: "install onnxruntime-gpu in place of onnxruntime, and TensorRT",
}
# ONNX element types the exported graphs may use, and the host dtype each is fed from.
_INPUT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


def unavailable(backend: Backend) -> str | None:
    """None if ``backend`` (ONNXRUNTIME_CUDA or ONNXRUNTIME_TENSORRT) can run in this process,
    else a one-line reason. Cheap, and never raises."""
    provider = _PROVIDERS.get(backend)
    if provider is None:
        return f"{backend.value} is not an ONNX Runtime GPU backend"
    try:
        available = ort.get_available_providers()
    except Exception as exc:  # a broken install must read as "not here", not fail the load
        return f"onnxruntime cannot list its execution providers ({exc})"
    if provider not in available:
        return (
            f"onnxruntime {ort.__version__} has no {provider} (it offers "
            f"{', '.join(available)}; {_INSTALL_HINT[provider]})"
        )
    if provider == TENSORRT_PROVIDER:
        reason = _tensorrt_library_problem()
        if reason:
            return reason
    # A listed provider only says how the wheel was built (ort.get_device() is the same build
    # flag); whether a GPU is present is the driver's call.
    return _cuda_device_problem()


@functools.cache
def _tensorrt_library_problem() -> str | None:
    """None if TensorRT's runtime library is installed, else why not: the TensorRT provider
    is listed by every onnxruntime-gpu wheel but loads libnvinfer only when a session starts."""
    try:
        if importlib.util.find_spec("tensorrt_libs") or importlib.util.find_spec("tensorrt"):
            return None
    except (ImportError, ValueError):
        pass
    if ctypes.util.find_library("nvinfer") or ctypes.util.find_library("nvinfer_10"):
        return None
    return "TensorRT is not installed (pip install tensorrt-cu12, or NVIDIA's libnvinfer packages)"


TENSORRT_LIBRARIES = (
    "libnvinfer",
    "libnvinfer_builder_resource",
    "libnvinfer_plugin",
    "libnvonnxparser",
)


@functools.cache
def _load_tensorrt_libraries() -> None:
    """Load pip's TensorRT libraries by path: tensorrt-cu12 puts libnvinfer.so.10 and its
    parser in the `tensorrt_libs` package folder, which no library path names, and ONNX
    Runtime's TensorRT provider opens them by name. Once loaded, that name finds them, with
    no LD_LIBRARY_PATH to set. Libraries from NVIDIA's system packages need none of this; what
    still fails to load is left to the provider to report."""
    try:
        spec = importlib.util.find_spec("tensorrt_libs")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return
    folder = pathlib.Path(spec.submodule_search_locations[0])
    # What the provider opens, and the builder resource libnvinfer opens by name to build;
    # not the lean and dispatch runtimes, which export libnvinfer's symbols again.
    pending = sorted(
        library for name in TENSORRT_LIBRARIES for library in folder.glob(f"{name}.so*")
    )
    while pending:  # a library loads once those it links are loaded: retry until none does
        failed = []
        for library in pending:
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                failed.append(library)
        if len(failed) == len(pending):
            LOGGER.debug("TensorRT libraries not loaded: %s", ", ".join(p.name for p in failed))
            return
        pending = failed


@functools.cache
def _cuda_device_problem() -> str | None:
    """None if the CUDA driver reports at least one visible device, else why not.

    Uses the driver API through ctypes, so it needs no CUDA Python package; cached because the
    answer does not change within a process and cuInit is not free.
    """
    library = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(library)
    except OSError:
        return f"the NVIDIA driver library {library} is not loadable (no GPU driver installed)"
    status = driver.cuInit(0)
    if status != 0:
        # 100 is CUDA_ERROR_NO_DEVICE, which is also what CUDA_VISIBLE_DEVICES="" gives.
        return f"the CUDA driver found no usable GPU (cuInit returned error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value < 1:
        return f"the CUDA driver reports no visible GPU (cuDeviceGetCount: error {status})"
    return None


def cuda_provider_options(options: EngineOptions) -> dict[str, object]:
    """CUDA execution provider settings for one engine instance."""
    return {
        "device_id": options.device_id,
        # EXHAUSTIVE (ONNX Runtime's default) times every cuDNN algorithm for each new input
        # shape, which makes the first call at each batch size slow and needs large
        # workspaces; HEURISTIC takes cuDNN's own pick at no search cost.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Input and output copies on the compute stream: no cross-stream races (ORT #4829).
        "do_copy_in_default_stream": True,
        # The engine sees a bounded set of shapes (batch 1..max_batch_size); growing the arena
        # by powers of two would only reserve memory it never uses.
        "arena_extend_strategy": "kSameAsRequested",
        # Served images must match the CPU engine to 1e-3; TF32 convolutions keep a 10-bit
        # mantissa and do not.
        "use_tf32": False,
    }


def tensorrt_provider_options(metadata: ModelMetadata, options: EngineOptions) -> dict[str, object]:
    """TensorRT execution provider settings: one explicit optimisation profile covering batch
    1..max_batch_size, tuned for the largest preferred batch size; engine and timing caches in
    ``options.cache_dir`` when it is set (the caller creates the folder)."""
    max_batch = options.max_batch_size
    opt_batch = max(options.preferred_batch_sizes, default=max_batch)
    opt_batch = min(max(opt_batch, 1), max_batch)

    def shapes(batch: int) -> str:
        # ONNX Runtime's format: "name:d0xd1,name2:d0", for every input the model takes (z,
        # label, a stylegan's truncation, noise, z_mix, mix_layer): one left out falls back to
        # shapes learned at run time, and the engine is rebuilt as the batch grows.
        return ",".join(
            f"{name}:{'x'.join(map(str, (batch, *shape)))}"
            for name, (_, shape) in model_inputs.input_specs(metadata).items()
        )

    provider_options: dict[str, object] = {
        "device_id": options.device_id,
        "trt_fp16_enable": False,  # FP32, like the CPU engine the outputs are checked against
        "trt_profile_min_shapes": shapes(1),
        "trt_profile_opt_shapes": shapes(opt_batch),
        "trt_profile_max_shapes": shapes(max_batch),
    }
    if options.cache_dir is not None:
        # Without a cache every process start rebuilds the engine (seconds to minutes).
        provider_options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(options.cache_dir),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(options.cache_dir),
        )
    return provider_options


class OnnxCudaEngine:
    """An ONNX Runtime session on one GPU for one model version, fed through IO binding.

    Inputs are bound from host memory (ONNX Runtime copies them on the compute stream); the
    output is written into one device buffer sized for the largest batch, of which a batch of
    N uses the first N images, and copied to the host once per call. One thread at a time.
    """

    def __init__(
        self,
        version_dir: pathlib.Path,
        metadata: ModelMetadata,
        options: EngineOptions,
        backend: Backend,
    ) -> None:
        if backend not in _PROVIDERS:
            raise ValueError(
                f"OnnxCudaEngine runs {sorted(b.value for b in _PROVIDERS)}, not {backend.value}"
            )
        self.metadata = metadata
        self.backend = backend
        self._device_id = options.device_id
        self._max_batch = options.max_batch_size
        m = metadata
        self._image_shape = (m.channels, m.height, m.width)
        onnx_path = version_dir / options.model_file

        providers: list = []
        if backend is Backend.ONNXRUNTIME_TENSORRT:
            _load_tensorrt_libraries()
            if options.cache_dir is not None:
                try:
                    options.cache_dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ModelLoadError(
                        f"TensorRT engine cache folder {options.cache_dir} cannot be created "
                        f"({exc}); set --engine-cache-dir to a writable folder"
                    ) from exc
            providers.append((TENSORRT_PROVIDER, tensorrt_provider_options(metadata, options)))
        # CUDA after TensorRT: it runs any node TensorRT does not take.
        providers.append((CUDA_PROVIDER, cuda_provider_options(options)))
        providers.append(CPU_PROVIDER)

        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads for whatever nodes stay on the CPU (shape arithmetic), which must not spin
        # between calls: spinning threads take the cores the event loop needs.
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        LOGGER.info("opening %s on GPU %d with %s", onnx_path, options.device_id, backend.value)
        self._session = open_session(onnx_path, session_options, providers)

        # ONNX Runtime falls back to the next provider, down to the CPU, with only a log line
        # when one fails to load (missing CUDA, cuDNN or TensorRT libraries). Serving a GPU
        # backend from the CPU would be a silent 10-100x slowdown, so refuse it.
        wanted = _PROVIDERS[backend]
        active = self._session.get_providers()
        if wanted not in active:
            reason = unavailable(backend) or (
                "its libraries failed to load; the ONNX Runtime log above names the missing one"
            )
            raise ModelLoadError(
                f"{onnx_path}: backend {backend.value} requested but ONNX Runtime fell back to "
                f"{', '.join(active)}: {wanted} could not be initialised ({reason})"
            )

        self._output = check_signature(self._session, metadata, str(onnx_path))
        self._input_dtypes = {}
        for node in self._session.get_inputs():
            dtype = _INPUT_DTYPES.get(node.type)
            if dtype is None:
                raise ModelLoadError(
                    f"{onnx_path}: input {node.name} has unsupported type {node.type}"
                )
            self._input_dtypes[node.name] = dtype
        output_type = self._session.get_outputs()[0].type
        if output_type != "tensor(float)":
            raise ModelLoadError(
                f"{onnx_path}: output {self._output} is {output_type}; serving needs tensor(float)"
            )

        # (max_batch, C, H, W) float32 on the device, allocated once.
        self._out_buffer = ort.OrtValue.ortvalue_from_shape_and_type(
            (self._max_batch, *self._image_shape), np.float32, "cuda", self._device_id
        )

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Input name -> (N, ...) host batch -> (N, C, H, W) float32 on the host."""
        if self._session is None:
            raise RuntimeError(f"engine for model {self.metadata.name!r} is closed")
        n = feeds["z"].shape[0]
        if not 1 <= n <= self._max_batch:
            raise ValueError(f"batch of {n} is outside 1..max_batch_size ({self._max_batch})")
        binding = self._session.io_binding()
        for name, dtype in self._input_dtypes.items():
            value = feeds.get(name)
            if value is None or value.shape[0] != n:
                raise ValueError(f"model {self.metadata.name!r} needs input {name} for {n} rows")
            binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=dtype))
        # The first n images of the max-batch buffer: one allocation serves every batch size.
        binding.bind_output(
            self._output,
            "cuda",
            self._device_id,
            np.float32,
            [n, *self._image_shape],
            self._out_buffer.data_ptr(),
        )
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def close(self) -> None:
        """Release the device buffer and the session (and with it the GPU memory arena)."""
        self._out_buffer = None
        self._session = None
