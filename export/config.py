"""What one export does: `ExportConfig` and its closed choices. Light to import (no torch), so
the CLI can parse and check its options before the heavy modules load."""

from __future__ import annotations

import dataclasses
import enum
import pathlib


class TensorRTMode(enum.Enum):
    """Whether to build a TensorRT engine: when possible, always (fail if impossible), never."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Precision(enum.Enum):
    """Precision of a TensorRT engine."""

    FP32 = "fp32"
    FP16 = "fp16"


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` can be a model's folder and its name on the wire."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name {name!r} is not a valid folder name")
    # Lone surrogates (undecodable bytes of a shell argument) are not printable either.
    if not name.isprintable():
        raise ValueError(f"name {name!r} is not printable UTF-8 text: clients send it over gRPC")
    if len(name.encode()) > 200:  # file systems allow 255 bytes; staging adds a suffix
        raise ValueError(f"name {name[:20]!r}... is over 200 bytes; use a shorter one")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """One export.

    Args:
        repository: Model repository root.
        name: Model name (the folder under the repository); None takes the training data's
            (`default_name`).
        version: Version folder; None takes the highest existing version + 1.
        force: Replace an existing version folder instead of refusing.
        opset: ONNX opset.
        optimize: Run the exporter's graph optimiser (constant folding, dead code).
        max_batch: Largest batch the server will send (TensorRT profile max; verified).
        opt_batch: Batch size TensorRT tunes for; None means max_batch.
        verify_batch_sizes: Batch sizes checked against PyTorch, each in 1..max_batch; None
            means (1, 7, max_batch).
        fp16_onnx: Also write model.fp16.onnx for the CUDA/TensorRT providers.
        tensorrt: Build model.plan when possible (AUTO), always (ON), or never (OFF).
        tensorrt_precision: Precision of the TensorRT engine.
        device_id: CUDA device for building and verifying the engine, and for verifying the
            FP16 ONNX model where CUDA is present.
    """

    repository: pathlib.Path
    name: str | None = None
    version: int | None = None
    force: bool = False
    opset: int = 18
    optimize: bool = True
    max_batch: int = 64
    opt_batch: int | None = None
    verify_batch_sizes: tuple[int, ...] | None = None
    fp16_onnx: bool = False
    tensorrt: TensorRTMode = TensorRTMode.AUTO
    tensorrt_precision: Precision = Precision.FP32
    device_id: int = 0

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name(self.name)
        if self.version is not None and self.version < 1:
            raise ValueError(f"version must be >= 1, got {self.version}")
        if not 17 <= self.opset <= 23:
            raise ValueError(f"opset must be in 17..23, got {self.opset}")
        if not 1 <= self.max_batch <= 4096:
            raise ValueError(f"max_batch must be in 1..4096, got {self.max_batch}")
        if self.opt_batch is not None and not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"opt_batch must be in 1..max_batch ({self.max_batch})")
        # Options only the engine uses would do nothing (named as export-gan's flags).
        if self.tensorrt is TensorRTMode.OFF:
            if self.tensorrt_precision is not Precision.FP32:
                raise ValueError(
                    f"--precision {self.tensorrt_precision.value} applies to the TensorRT "
                    "engine, but --tensorrt is off: build the engine (--tensorrt auto or on) "
                    "or drop --precision (an FP16 ONNX model is --fp16-onnx)"
                )
            if self.opt_batch is not None:
                raise ValueError(
                    "--opt-batch tunes the TensorRT engine, but --tensorrt is off: build the "
                    "engine (--tensorrt auto or on) or drop --opt-batch"
                )
        if self.verify_batch_sizes is not None:
            # A verified size above max_batch checks a batch the server never sends, and
            # costs memory in proportion (one batch of 10^8 images does not fit anywhere).
            outside = [b for b in self.verify_batch_sizes if not 1 <= b <= self.max_batch]
            if not self.verify_batch_sizes or outside:
                raise ValueError(
                    f"verify_batch_sizes must each be in 1..max_batch ({self.max_batch}), "
                    f"got {self.verify_batch_sizes}"
                )

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self.verify_batch_sizes or tuple(sorted({1, min(7, self.max_batch), self.max_batch}))
