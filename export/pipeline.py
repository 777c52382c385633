"""Checkpoint (any generator family) -> a verified model version in
``<repository>/<name>/<version>/``.

Writes ``model.onnx`` (FP32), optionally ``model.fp16.onnx`` and ``model.plan`` (TensorRT), and
``metadata.json``. Every artifact is verified against PyTorch before anything is published;
the version folder appears in one rename, or not at all.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ganserve.export import onnx_export, tensorrt_build
from ganserve.export.verify import FP32, REDUCED_PRECISION, Runner, VerificationError, verify
from ganserve.serve import repository
from ganserve.serve.backends import Backend, EngineOptions
from ganserve.serve.metadata import (
    FP16_MODEL_FILE,
    METADATA_FILE,
    MODEL_FILE,
    PLAN_FILE,
    ModelMetadata,
)
from ganserve.train import checkpoint, sampling

LOGGER = logging.getLogger(__name__)
FP32_TAIL_LAYERS = 2  # output convolution + Tanh


class ExportError(RuntimeError):
    """Export refused: bad input, a failed check, or an unwritable destination."""


class TensorRTMode(enum.Enum):
    """Whether to build a TensorRT engine: when possible, always (fail if impossible), never."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Precision(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """One export.

    Args:
        repository: Model repository root.
        name: Model name (the folder under the repository).
        version: Version folder; None takes the highest existing version + 1.
        force: Replace an existing version folder instead of refusing.
        opset: ONNX opset.
        optimize: Run the exporter's graph optimiser (constant folding, dead code).
        max_batch: Largest batch the server will send (TensorRT profile max; verified).
        opt_batch: Batch size TensorRT tunes for; None means max_batch.
        verify_batch_sizes: Batch sizes checked against PyTorch; None means (1, 7, max_batch).
        fp16_onnx: Also write model.fp16.onnx for the CUDA/TensorRT providers.
        tensorrt: Build model.plan when possible (AUTO), always (ON), or never (OFF).
        tensorrt_precision: Precision of the TensorRT engine.
        device_id: CUDA device for building and verifying the engine.
    """

    repository: pathlib.Path
    name: str
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
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name {self.name!r} is not a valid folder name")
        if self.version is not None and self.version < 1:
            raise ValueError(f"version must be >= 1, got {self.version}")
        if not 17 <= self.opset <= 23:
            raise ValueError(f"opset must be in 17..23, got {self.opset}")
        if not 1 <= self.max_batch <= 4096:
            raise ValueError(f"max_batch must be in 1..4096, got {self.max_batch}")
        if self.opt_batch is not None and not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"opt_batch must be in 1..max_batch ({self.max_batch})")
        if self.verify_batch_sizes is not None and (
            not self.verify_batch_sizes or min(self.verify_batch_sizes) < 1
        ):
            raise ValueError(f"verify_batch_sizes must be >= 1, got {self.verify_batch_sizes}")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self.verify_batch_sizes or tuple(sorted({1, min(7, self.max_batch), self.max_batch}))


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What was published, and anything skipped (one line each)."""

    version: repository.ModelVersionPath
    notes: tuple[str, ...] = ()


def _torch_runner(generator: torch.nn.Module) -> Runner:
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return sampling.run_feeds(generator, feeds).numpy()

    return run


def _ort_runner(path: pathlib.Path, providers: list[str]) -> Runner:
    options = ort.SessionOptions()
    # Errors only: ORT warns that it cannot constant-fold FP16 nodes on the CPU, which is
    # noise here (the FP16 model is verified on the CPU only where CUDA is absent).
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, feeds)[0]

    return run


def _fp16_providers() -> tuple[list[str], str]:
    """Verify the FP16 model where it will run: CUDA when present, else the CPU."""
    from ganserve.serve.backends import cuda

    if cuda.unavailable(Backend.ONNXRUNTIME_CUDA) is None:
        return ["CUDAExecutionProvider"], "onnxruntime-cuda"
    return ["CPUExecutionProvider"], "onnxruntime-cpu"


def _next_version(root: pathlib.Path, name: str) -> int:
    found = repository.versions(root, name)
    return found[-1] + 1 if found else 1


def export_checkpoint(ckpt_path: pathlib.Path, config: ExportConfig) -> ExportResult:
    """Export, verify and publish one model version."""
    try:
        ckpt = checkpoint.load(ckpt_path)
        generator = checkpoint.build_generator(ckpt, ema=True)
    except checkpoint.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    version = config.version or _next_version(config.repository, config.name)
    final = config.repository / config.name / str(version)
    if final.exists() and not config.force:
        raise ExportError(f"{final} already exists; pass --version N for a new one, or --force")
    trt_reason = None if config.tensorrt is TensorRTMode.OFF else tensorrt_build.unavailable()
    if config.tensorrt is TensorRTMode.ON and trt_reason:
        raise ExportError(f"--tensorrt on was requested but cannot build here: {trt_reason}")

    cfg = generator.config
    class_names = tuple(ckpt.get("dataset", {}).get("class_names", ())) if cfg.num_classes else ()
    # The signature (architecture, truncation_mode, noise_dim, style_layers) comes from the
    # generator itself, so the metadata and the exported inputs agree by construction.
    metadata = sampling.model_metadata(
        generator,
        name=config.name,
        version=str(version),
        class_names=class_names or tuple(str(i) for i in range(cfg.num_classes)),
        onnx_opset=config.opset,
        source_checkpoint_sha256=checkpoint.file_sha256(ckpt_path),
        training_metrics=dict(ckpt.get("metrics", {})),
        tool_versions={
            "torch": str(torch.__version__),
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        extra={"step": int(ckpt["step"]), "dataset": ckpt.get("dataset", {})},
    )
    check = dict(metadata=metadata, batch_sizes=config.batch_sizes)
    reference = _torch_runner(generator)
    notes: list[str] = []
    config.repository.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder, then rename: the repository never holds half a version.
    with tempfile.TemporaryDirectory(dir=config.repository, prefix=".export-") as tmp:
        staging = pathlib.Path(tmp)
        extra: dict[str, Any] = {}
        try:
            onnx_path = staging / MODEL_FILE
            onnx_export.export_onnx(
                generator,
                onnx_path,
                metadata=metadata,
                opset=config.opset,
                optimize=config.optimize,
            )
            report = verify(
                _ort_runner(onnx_path, ["CPUExecutionProvider"]),
                reference,
                tolerance=FP32,
                what="model.onnx (FP32)",
                **check,
            )
            extra["onnx"] = {
                "file": MODEL_FILE,
                "precision": "fp32",
                "batch": "dynamic",
                "optimized": config.optimize,
                "verification": report,
            }
            if config.fp16_onnx:
                extra["onnx_fp16"] = _fp16_variant(staging, reference, check)
            if config.tensorrt is not TensorRTMode.OFF:
                if trt_reason:
                    notes.append(f"TensorRT engine skipped: {trt_reason}")
                else:
                    extra["tensorrt"] = _tensorrt_plan(staging, metadata, reference, check, config)
        except VerificationError as exc:
            raise ExportError(f"verification failed, nothing written: {exc}") from exc
        except tensorrt_build.BuildError as exc:
            raise ExportError(f"TensorRT build failed, nothing written: {exc}") from exc
        metadata = dataclasses.replace(metadata, extra={**metadata.extra, **extra})
        for name in (MODEL_FILE, FP16_MODEL_FILE):
            if (staging / name).exists():
                onnx_export.embed_metadata(staging / name, metadata.to_dict())
        metadata.write(staging / METADATA_FILE)
        stray = sorted(
            p.name
            for p in staging.iterdir()
            if p.name not in (MODEL_FILE, FP16_MODEL_FILE, PLAN_FILE, METADATA_FILE)
        )
        if stray:
            raise ExportError(f"export wrote unexpected files {stray}; expected single files")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        staging.chmod(0o755)  # TemporaryDirectory makes 0700; servers may run as another user
        os.rename(staging, final)
        staging.mkdir()  # TemporaryDirectory cleans up the (now empty) staging name
    return ExportResult(
        repository.open_version(config.repository, config.name, version), tuple(notes)
    )


def _fp16_variant(staging: pathlib.Path, reference: Runner, check: dict) -> dict[str, Any]:
    path = staging / FP16_MODEL_FILE
    onnx_export.to_fp16(staging / MODEL_FILE, path)
    providers, verified_on = _fp16_providers()
    report = verify(
        _ort_runner(path, providers),
        reference,
        tolerance=REDUCED_PRECISION,
        what=f"{FP16_MODEL_FILE} on {verified_on}",
        **check,
    )
    return {
        "file": FP16_MODEL_FILE,
        "precision": "fp16",
        "batch": "dynamic",
        "verified_on": verified_on,
        "verification": report,
    }


def _tensorrt_plan(
    staging: pathlib.Path,
    metadata: ModelMetadata,
    reference: Runner,
    check: dict,
    config: ExportConfig,
) -> dict[str, Any]:
    """Build and verify model.plan; an FP16 engine that drifts is rebuilt with its output
    layers in FP32 before giving up."""
    from ganserve.serve.backends.tensorrt import TensorRTEngine

    precision = config.tensorrt_precision.value
    opt = config.opt_batch or config.max_batch
    attempts = [0, FP32_TAIL_LAYERS] if precision == "fp16" else [0]
    for fp32_tail in attempts:
        record = tensorrt_build.build_plan(
            staging / MODEL_FILE,
            staging / PLAN_FILE,
            metadata,
            precision=precision,
            opt_batch=opt,
            max_batch=config.max_batch,
            fp32_tail=fp32_tail,
            device_id=config.device_id,
        )
        with_record = dataclasses.replace(metadata, extra={**metadata.extra, "tensorrt": record})
        engine = TensorRTEngine(
            staging,
            with_record,
            EngineOptions(max_batch_size=config.max_batch, device_id=config.device_id),
        )
        try:
            record["verification"] = verify(
                engine.run,
                reference,
                tolerance=REDUCED_PRECISION,
                what=f"{PLAN_FILE} ({precision})",
                **check,
            )
            return record
        except VerificationError as exc:
            if fp32_tail == attempts[-1]:
                raise
            LOGGER.warning(
                "FP16 engine drifts (%s); rebuilding with the output layers in FP32", exc
            )
        finally:
            engine.close()
    raise AssertionError("unreachable")
