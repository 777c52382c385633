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
import pathlib
import warnings
from typing import Any

import onnx
import torch

from ganserve.serve import inputs
from ganserve.serve.metadata import ModelMetadata

METADATA_PROP = "ganserve.metadata"


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


def to_fp16(src: pathlib.Path, dst: pathlib.Path) -> None:
    """An FP16 copy of an FP32 model for the CUDA and TensorRT providers. Inputs and outputs
    keep their FP32/int64 types (casts are inserted), so callers feed it exactly like the FP32
    model."""
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
