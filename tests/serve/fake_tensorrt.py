"""Stand-ins for the ``tensorrt`` and cuda-python modules, so that the native TensorRT engine's
own code (serve/backends/tensorrt.py: the plan checks, buffers, staging, the run and the
clean-up) runs in CI, which has no GPU.

"Device" and pinned memory are host memory from ctypes, and the "plan" runs the model's ONNX
file on ONNX Runtime's CPU provider, reading its inputs from and writing its output to the
bound addresses, so a wrong size, address or copy shows up in the images. They model TensorRT
10's tensor API and cuda-python's ``(error, value)`` results, no more: the real libraries are
tested by test_gpu_backends.py on a GPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class TensorLocation(enum.Enum):
    DEVICE = 1
    HOST = 2


class TensorFormat(enum.Enum):
    LINEAR = 1
    CHW4 = 2


class Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class MemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


@dataclasses.dataclass
class Tensor:
    """One I/O tensor of a fake plan: -1 marks the dynamic batch; ``batch`` is profile 0's
    (min, max) for an input."""

    io: TensorIOMode
    shape: tuple[int, ...]
    dtype: type
    batch: tuple[int, int] | None = None


class Plan:
    """A deserialized plan (trt.ICudaEngine): the tensors it declares, run by ONNX Runtime."""

    def __init__(self, onnx_path: str, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name].io

    def get_tensor_shape(self, name: str) -> list[int]:
        return list(self.tensors[name].shape)

    def get_tensor_dtype(self, name: str) -> type:
        return self.tensors[name].dtype

    def get_tensor_location(self, name: str) -> TensorLocation:
        return TensorLocation.DEVICE

    def get_tensor_format(self, name: str) -> TensorFormat:
        return TensorFormat.LINEAR

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
        low, high = self.tensors[name].batch
        rest = list(self.tensors[name].shape[1:])
        return [[low, *rest], [high, *rest], [high, *rest]]

    def create_execution_context(self) -> Context:
        return Context(self)


class Context:
    """An execution context (trt.IExecutionContext) over bound addresses."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, high = self.plan.tensors[name].batch
        if not low <= shape[0] <= high:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        tensor = self.plan.tensors[name]
        if tensor.io is TensorIOMode.INPUT:
            return self.shapes.get(name, tensor.shape)
        batches = {shape[0] for shape in self.shapes.values()}
        return (batches.pop() if len(batches) == 1 else -1, *tensor.shape[1:])

    def execute_async_v3(self, stream: int) -> bool:
        feeds, output = {}, None
        for name, tensor in self.plan.tensors.items():
            if tensor.io is TensorIOMode.OUTPUT:
                output = name
                continue
            dtype, shape = np.dtype(tensor.dtype), self.shapes[name]
            size = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_byte * size).from_address(self.addresses[name])
            value = np.frombuffer(raw, dtype).reshape(shape)
            # The ONNX model's own types, as TensorRT would cast inside the engine.
            feeds[name] = value.astype(np.int64 if dtype.kind == "i" else np.float32)
        image = self.plan.session.run(None, feeds)[0].astype(self.plan.tensors[output].dtype)
        ctypes.memmove(self.addresses[output], image.ctypes.data, image.nbytes)
        return True


class Cuda:
    """cuda.bindings.runtime: allocations from ctypes, kept in ``live`` until freed."""

    cudaError_t = CudaError
    cudaMemcpyKind = MemcpyKind
    cudaStreamNonBlocking = 1

    def __init__(self, gpus: tuple[str, ...]) -> None:
        self.gpus = gpus
        self.live: dict[int, ctypes.Array] = {}
        self.allocations_left: int | None = None  # then cudaErrorMemoryAllocation

    def _alloc(self, size: int) -> tuple:
        if self.allocations_left is not None:
            if self.allocations_left == 0:
                return (CudaError.cudaErrorMemoryAllocation, 0)
            self.allocations_left -= 1
        buffer = (ctypes.c_byte * size)()
        self.live[ctypes.addressof(buffer)] = buffer
        return (CudaError.cudaSuccess, ctypes.addressof(buffer))

    def _free(self, address: int) -> tuple:
        self.live.pop(address, None)
        return (CudaError.cudaSuccess,)

    def cudaGetDeviceCount(self) -> tuple:
        return (CudaError.cudaSuccess, len(self.gpus))

    def cudaGetDeviceProperties(self, index: int) -> tuple:
        return (CudaError.cudaSuccess, types.SimpleNamespace(name=self.gpus[index].encode()))

    def cudaSetDevice(self, index: int) -> tuple:
        return (CudaError.cudaSuccess,)

    cudaMalloc = cudaMallocHost = _alloc
    cudaFree = cudaFreeHost = _free

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple:
        return (CudaError.cudaSuccess, 7)

    def cudaStreamDestroy(self, stream: int) -> tuple:
        return (CudaError.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: int) -> tuple:
        return (CudaError.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, size: int, kind: MemcpyKind, stream: int):
        ctypes.memmove(dst, src, size)
        return (CudaError.cudaSuccess,)

    def cudaGetErrorName(self, error: CudaError) -> tuple:
        return (CudaError.cudaSuccess, error.name.encode())


class _Logger:
    Severity = Severity

    def __init__(self) -> None:
        pass


@dataclasses.dataclass
class FakeTensorRT:
    """The installed fakes: ``plan`` is what the next deserialization returns (None: the
    plan cannot be read); ``cuda.live`` holds the allocations not yet freed."""

    cuda: Cuda
    module: types.ModuleType
    plan: Plan | None = None


def install(
    monkeypatch: pytest.MonkeyPatch, version: str = "10.99.0", gpus: tuple[str, ...] = ("Fake GPU",)
) -> FakeTensorRT:
    """Put fake ``tensorrt`` and ``cuda.bindings.runtime`` modules in sys.modules for a test."""
    cuda = Cuda(gpus)
    trt = types.ModuleType("tensorrt")
    fake = FakeTensorRT(cuda, trt)

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Plan | None:
            return fake.plan

    trt.__version__ = version
    trt.TensorIOMode, trt.TensorLocation, trt.TensorFormat = (
        TensorIOMode,
        TensorLocation,
        TensorFormat,
    )
    trt.ILogger, trt.Runtime = _Logger, Runtime
    trt.nptype = np.dtype
    package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    package.bindings, bindings.runtime = bindings, cuda
    for name, module in (
        ("tensorrt", trt),
        ("cuda", package),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", cuda),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return fake
