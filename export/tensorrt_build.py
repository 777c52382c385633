"""Build a TensorRT engine (``model.plan``) from the exported ONNX file.

Needs the ``tensorrt`` package and an NVIDIA GPU; engines are specific to the GPU model and
TensorRT version they were built with, which are recorded next to the plan. The optimisation
profile covers batch 1 .. max_batch with ``opt_batch`` as the tuned size, for every input the
model takes (`ganserve.serve.inputs`: z, label, and a stylegan's truncation, noise, z_mix and
mix_layer). FP16 engines may keep
the output layers in FP32 when FP16 drifts (the caller rebuilds with ``fp32_tail``; see
`output_tail`).
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
from typing import Any

from ganserve.serve import inputs
from ganserve.serve.backends import tensorrt as trt_backend
from ganserve.serve.metadata import ModelMetadata

LOGGER = logging.getLogger(__name__)
WORKSPACE_BYTES = 1 << 30


class BuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build an engine."""


def unavailable() -> str | None:
    """None when an engine can be built here, else the reason (one line)."""
    reason = trt_backend.runtime_unavailable()
    if reason:
        return reason
    try:
        cudart = trt_backend.import_cudart()
        if not trt_backend.gpu_names(cudart):
            return "no CUDA GPU is visible"
    except Exception as exc:  # a driver problem must read as 'unavailable', not crash export
        return f"CUDA is not usable: {exc}"
    return None


# TensorRT layer types whose weights set what follows (a Gemm with a bias parses as a matrix
# product and an element-wise add), and those that compute nothing worth pinning.
WEIGHTED_LAYERS = frozenset({"CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY"})
PASSIVE_LAYERS = frozenset({"CONSTANT", "SHUFFLE", "IDENTITY"})


def output_tail(types: list[str]) -> list[int]:
    """Indices of the layers an FP16 plan runs in FP32 when it drifts: from the last weighted
    layer (in network order, which TensorRT keeps topological) to the output, passive ones
    left out; the last two computing layers in a network with no weighted one. The DCGAN's
    output deconvolution and Tanh; the fully connected GAN's matrix product, its bias add and
    Tanh; the StyleGAN's toRGB convolution, skip additions, upsampling and Tanh."""
    compute = [i for i, kind in enumerate(types) if kind not in PASSIVE_LAYERS]
    weighted = [i for i in compute if types[i] in WEIGHTED_LAYERS]
    if not weighted:
        return compute[-2:]
    return [i for i in compute if i >= weighted[-1]]


def build_plan(
    onnx_path: pathlib.Path,
    plan_path: pathlib.Path,
    metadata: ModelMetadata,
    *,
    precision: str,
    opt_batch: int,
    max_batch: int,
    fp32_tail: bool = False,
    device_id: int = 0,
) -> dict[str, Any]:
    """Write ``plan_path``; return the record for ``metadata.extra["tensorrt"]``."""
    import tensorrt as trt

    cudart = trt_backend.import_cudart()
    gpus = trt_backend.gpu_names(cudart)
    if not 0 <= device_id < len(gpus):
        raise BuildError(f"GPU {device_id} does not exist: this machine has {len(gpus)} GPU(s)")
    # The builder times its kernels on the current device: the GPU recorded must be that one.
    trt_backend.cuda_call(cudart, "cudaSetDevice", cudart.cudaSetDevice(device_id))
    gpu = gpus[device_id]
    logger = trt_backend.trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    onnx = onnx_path.read_bytes()
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    # Every input the model takes (the shape table serving uses), sharing the batch axis.
    for name, (_, item) in inputs.input_specs(metadata).items():
        profile.set_shape(name, (1, *item), (opt_batch, *item), (max_batch, *item))
    config.add_optimization_profile(profile)
    pinned: list[str] = []
    if precision == "fp32" or fp32_tail:
        # TensorRT allows TF32 (a 10-bit mantissa, FP16's) by default: an "fp32" plan, or
        # the layers an FP16 plan pins to FP32, would not be.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_tail:
            # Keep the output layers in FP32: they set the final pixel values, where FP16
            # rounding shows up as uint8 drift.
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            layers = [network.get_layer(i) for i in range(network.num_layers)]
            for index in output_tail([layer.type.name for layer in layers]):
                layer = layers[index]
                layer.precision = trt.float32
                for k in range(layer.num_outputs):
                    layer.set_output_type(k, trt.float32)
                pinned.append(layer.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine (see its log above)")
    plan = bytes(serialized)
    plan_path.write_bytes(plan)
    LOGGER.info(
        "built %s (%s, batch 1..%d, opt %d) for %s with TensorRT %s",
        plan_path.name,
        precision,
        max_batch,
        opt_batch,
        gpu,
        trt.__version__,
    )
    return {
        "version": trt.__version__,
        "gpu": gpu,
        "precision": precision,
        "profile": {"min": 1, "opt": opt_batch, "max": max_batch},
        "fp32_layers": pinned,
        # What the server checks the files against: a plan copied in from another export, or
        # a model.onnx replaced beside it, is refused rather than served under this record.
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "onnx_sha256": hashlib.sha256(onnx).hexdigest(),
    }
