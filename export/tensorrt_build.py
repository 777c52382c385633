"""Build a TensorRT engine (``model.plan``) from the exported ONNX file.

Needs the ``tensorrt`` package and an NVIDIA GPU; engines are specific to the GPU model and
TensorRT version they were built with, which are recorded next to the plan. The optimisation
profile covers batch 1 .. max_batch with ``opt_batch`` as the tuned size, for every input the
model takes (`ganserve.serve.inputs`: z, label, and a stylegan's truncation, noise, z_mix and
mix_layer). FP16 engines may keep
the last layers in FP32 when FP16 drifts (the caller rebuilds with ``fp32_tail`` > 0).
"""

from __future__ import annotations

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


def build_plan(
    onnx_path: pathlib.Path,
    plan_path: pathlib.Path,
    metadata: ModelMetadata,
    *,
    precision: str,
    opt_batch: int,
    max_batch: int,
    fp32_tail: int = 0,
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
    if not parser.parse(onnx_path.read_bytes()):
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
    if precision == "fp32":
        # TensorRT allows TF32 (a 10-bit mantissa) by default: an "fp32" plan would not be.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_tail:
            # Keep the last compute layers (the output convolution and Tanh) in FP32: they
            # set the final pixel values, where FP16 rounding shows up as uint8 drift.
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            layers = [network.get_layer(i) for i in range(network.num_layers)]
            compute = [
                layer
                for layer in layers
                if layer.type
                not in (trt.LayerType.CONSTANT, trt.LayerType.SHUFFLE, trt.LayerType.IDENTITY)
            ]
            for layer in compute[-fp32_tail:]:
                layer.precision = trt.float32
                for k in range(layer.num_outputs):
                    layer.set_output_type(k, trt.float32)
                pinned.append(layer.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine (see its log above)")
    plan_path.write_bytes(bytes(serialized))
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
    }
