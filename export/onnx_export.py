"""PyTorch generator -> ONNX: one file, dynamic batch, self-describing.

Inputs ``z`` (N, latent_dim) float32 and, for conditional models, ``label`` (N,) int64; output
``image`` (N, C, H, W) float32 in [-1, 1]. Turning that into uint8 pixels is the serving
side's job, in one place for every backend: `ganserve.serve.imaging.to_uint8`.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Any

import onnx
import torch

from ganserve.train.networks import Generator

METADATA_PROP = "ganserve.metadata"


class _ExportWrapper(torch.nn.Module):
    """Fixes the exported signature: (z, label) for conditional models, (z,) otherwise."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, label)


def export_onnx(generator: Generator, path: pathlib.Path, *, opset: int, optimize: bool) -> None:
    """Export with the dynamo exporter; ``optimize`` runs its onnxscript optimiser (constant
    folding, dead-code removal), which makes the graph smaller without changing results."""
    cfg = generator.config
    batch = torch.export.Dim("batch", min=1, max=4096)
    z = torch.zeros(2, cfg.latent_dim)
    if cfg.num_classes:
        args: tuple[torch.Tensor, ...] = (z, torch.zeros(2, dtype=torch.int64))
        names, shapes = ["z", "label"], {"z": {0: batch}, "label": {0: batch}}
    else:
        args, names, shapes = (z,), ["z"], {"z": {0: batch}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about internals
        torch.onnx.export(
            _ExportWrapper(generator),
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
