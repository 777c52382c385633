"""PyTorch generator (any family) -> ONNX: one file, dynamic batch, self-describing.

Inputs are exactly the ones `ganserve.serve.inputs` builds from the model's metadata, in its
order: ``z`` (N, latent_dim) float32; ``label`` (N,) int64 when conditional; for a stylegan
``truncation`` (N,) float32, ``noise`` (N, noise_dim) float32, ``z_mix`` (N, latent_dim)
float32 and ``mix_layer`` (N,) int64. Output ``image`` (N, C, H, W) float32 in [-1, 1].
Turning that into uint8 pixels is the serving side's job, in one place for every backend:
`ganserve.serve.imaging.to_uint8`.
"""

from __future__ import annotations

import json
import logging
import pathlib
import warnings
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ganserve.serve import inputs
from ganserve.serve.metadata import ModelMetadata


def _not_torchvision_notice(record: logging.LogRecord) -> bool:
    """torch's exporter warns, once per op, that torchvision's detection ops (nms, roi_align,
    ...) are skipped when torchvision is missing; no generator uses them, and this project does
    without torchvision, so the notice is noise on every export."""
    return not record.getMessage().startswith("torchvision is not installed")


logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_not_torchvision_notice)

METADATA_PROP = "ganserve.metadata"


class ConversionError(ValueError):
    """An ONNX model could not be converted to FP16; the message says why."""


class _ExportWrapper(torch.nn.Module):
    """Fixes the exported signature: the model's inputs, positionally, in ``names`` order."""

    def __init__(self, generator: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.generator = generator
        self.names = tuple(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.generator.forward_feeds(dict(zip(self.names, args, strict=True)))


def export_onnx(
    generator: torch.nn.Module,
    path: pathlib.Path,
    *,
    metadata: ModelMetadata,
    opset: int,
    optimize: bool,
) -> None:
    """Export with the dynamo exporter, inputs as ``metadata`` implies; ``optimize`` runs its
    onnxscript optimiser (constant folding, dead-code removal), which makes the graph smaller
    without changing results."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = inputs.input_names(metadata)
    # Example feeds of batch 2 (torch.export specialises sizes 0 and 1).
    feeds = inputs.zero_feeds(metadata, 2)
    args = tuple(torch.from_numpy(feeds[name]) for name in names)
    shapes = (tuple({0: batch} for _ in names),)  # forward(*args): one entry, for args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about internals
        torch.onnx.export(
            _ExportWrapper(generator, names),
            args,
            str(path),
            input_names=names,
            output_names=["image"],
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            optimize=optimize,
            verbose=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def embed_metadata(path: pathlib.Path, metadata: dict[str, Any]) -> None:
    """Store the metadata in the ONNX file's metadata_props, so a lone .onnx describes itself."""
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA_PROP: json.dumps(metadata, sort_keys=True)})
    onnx.save(model, str(path))


def read_embedded_metadata(path: pathlib.Path) -> dict[str, Any]:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_PROP])


def _float_constants_as_tensors(graph: onnx.GraphProto) -> None:
    """Rewrite Constant nodes' ``value_float``/``value_floats`` attributes as ``value`` tensors.

    The FP16 converter turns every float ``value`` tensor and every float value_info into
    FP16, but not these attribute forms: their output would stay FP32 while its value_info
    says FP16, and the checker refuses the model. The unoptimised exporter writes them (a
    stylegan's Resize scales, for one); the optimiser folds them into initialisers."""
    for node in graph.node:
        if node.op_type == "Constant":
            for i, attr in enumerate(node.attribute):
                if attr.name == "value_float":
                    array = np.array(attr.f, dtype=np.float32)
                elif attr.name == "value_floats":
                    array = np.array(list(attr.floats), dtype=np.float32)
                else:
                    continue
                node.attribute[i].CopyFrom(
                    onnx.helper.make_attribute("value", numpy_helper.from_array(array))
                )
        for attr in node.attribute:  # subgraphs (If, Loop, Scan)
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _float_constants_as_tensors(sub)


def to_fp16(src: pathlib.Path, dst: pathlib.Path) -> None:
    """An FP16 copy of an FP32 model for the CUDA and TensorRT providers. Inputs and outputs
    keep their FP32/int64 types (casts are inserted), so callers feed it exactly like the FP32
    model. ConversionError when the converted model does not check."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    _float_constants_as_tensors(model.graph)
    try:
        with warnings.catch_warnings():  # "the float32 number -4.14e-08 will be truncated"
            warnings.simplefilter("ignore", UserWarning)
            model = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConversionError(f"the FP16 model does not check: {first}") from exc
    onnx.save(model, str(dst))
