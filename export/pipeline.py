"""Checkpoint (any generator family) -> a verified model version in
``<repository>/<name>/<version>/``.

Writes ``model.onnx`` (FP32), optionally ``model.fp16.onnx`` and ``model.plan`` (TensorRT), and
``metadata.json``. Every artifact is verified against PyTorch before anything is published;
the version folder appears in one rename, or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from ganserve.export import onnx_export, publish, tensorrt_build
from ganserve.export.config import ExportConfig, Precision, TensorRTMode, check_name
from ganserve.export.errors import ExportError
from ganserve.export.verify import FP32, REDUCED_PRECISION, Runner, VerificationError, verify
from ganserve.serve import repository
from ganserve.serve.backends import Backend, EngineOptions
from ganserve.serve.errors import GanServeError
from ganserve.serve.metadata import (
    FP16_MODEL_FILE,
    METADATA_FILE,
    MODEL_FILE,
    PLAN_FILE,
    ModelMetadata,
)
from ganserve.train import checkpoint, sampling
from ganserve.train.data import TRAIN_SUFFIX

LOGGER = logging.getLogger(__name__)

# What an export writes into a version folder.
ARTIFACT_FILES = (MODEL_FILE, FP16_MODEL_FILE, PLAN_FILE, METADATA_FILE)

__all__ = [
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "Precision",
    "TensorRTMode",
    "export_checkpoint",
]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What was published, anything skipped (one line each), and the files of the version it
    replaced (--force) that the new one lacks, which went with the old one."""

    version: repository.ModelVersionPath
    notes: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def _torch_runner(generator: torch.nn.Module) -> Runner:
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return sampling.run_feeds(generator, feeds).numpy()

    return run


def _ort_runner(path: pathlib.Path, providers: list[str | tuple[str, dict]]) -> Runner:
    options = ort.SessionOptions()
    # Errors only: ORT warns that it cannot constant-fold FP16 nodes on the CPU, which is
    # noise here (the FP16 model is verified on the CPU only where CUDA is absent).
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, feeds)[0]

    return run


def _fp16_providers(device_id: int) -> tuple[list[str | tuple[str, dict]], str]:
    """Verify the FP16 model where it will run: CUDA (on ``--device``) when present, else
    the CPU."""
    from ganserve.serve.backends import cuda

    if cuda.unavailable(Backend.ONNXRUNTIME_CUDA) is None:
        return [("CUDAExecutionProvider", {"device_id": device_id})], "onnxruntime-cuda"
    return ["CPUExecutionProvider"], "onnxruntime-cpu"


def _next_version(root: pathlib.Path, name: str) -> int:
    found = repository.versions(root, name)
    return found[-1] + 1 if found else 1


def export_checkpoint(
    ckpt_path: pathlib.Path,
    config: ExportConfig,
    on_published: Callable[[pathlib.Path], object] | None = None,
) -> ExportResult:
    """Export, verify and publish one model version. ``on_published`` gets the version's
    folder as soon as it is in place, before Ctrl-C is let through again."""
    try:
        ckpt = checkpoint.load(ckpt_path)  # its messages name the file
    except checkpoint.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    try:
        generator = checkpoint.build_generator(ckpt, ema=True)
    except checkpoint.CheckpointError as exc:
        raise ExportError(f"{ckpt_path}: {exc}") from exc
    if config.name is None:
        config = dataclasses.replace(config, name=default_name(ckpt, ckpt_path))
    trt_reason = None if config.tensorrt is TensorRTMode.OFF else tensorrt_build.unavailable()
    if config.tensorrt is TensorRTMode.ON and trt_reason:
        raise ExportError(f"--tensorrt on was requested but cannot build here: {trt_reason}")
    # One export of a model at a time, from picking the version number to publishing it: two
    # at once picked the same number, and the second failed after all its work.
    known = config.repository / config.name / str(config.version) if config.version else None
    with publish.model_lock(config.repository, config.name, known):
        version = config.version or _next_version(config.repository, config.name)
        metadata = _metadata(ckpt_path, ckpt, generator, config, version)
        return _export(ckpt_path, generator, metadata, config, version, trt_reason, on_published)


def default_name(ckpt: dict[str, Any], ckpt_path: pathlib.Path) -> str:
    """The model name of an export without one: its training data's (``digits`` for the
    built-in digits and a digits.npz, the folder's or the file's name otherwise), so that a
    model trained on other data does not become the newest version of the digits model."""
    data = str((ckpt.get("dataset") or {}).get("name") or "")
    name = data.removesuffix(TRAIN_SUFFIX)
    if not data.endswith(TRAIN_SUFFIX) or not name:
        raise ExportError(
            f"{ckpt_path} does not record the name of its training data: name the model with --name"
        )
    try:
        check_name(name)
    except ValueError as exc:
        raise ExportError(
            f"the training data's name cannot name the model ({exc}); name it with --name"
        ) from None
    return name


def _metadata(
    ckpt_path: pathlib.Path,
    ckpt: dict[str, Any],
    generator: torch.nn.Module,
    config: ExportConfig,
    version: int,
) -> ModelMetadata:
    cfg = generator.config
    class_names = tuple(ckpt.get("dataset", {}).get("class_names", ())) if cfg.num_classes else ()
    # The signature (architecture, truncation_mode, noise_dim, style_layers) comes from the
    # generator itself, so the metadata and the exported inputs agree by construction.
    try:
        return sampling.model_metadata(
            generator,
            name=config.name,
            version=str(version),
            class_names=class_names or tuple(str(i) for i in range(cfg.num_classes)),
            onnx_opset=config.opset,
            source_checkpoint_sha256=checkpoint.file_sha256(ckpt_path),
            training_metrics=_as_json(ckpt_path, "metrics", dict(ckpt.get("metrics", {}))),
            tool_versions={
                "torch": str(torch.__version__),
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
            # metrics_step: the step training_metrics were measured at (None: not evaluated;
            # absent from checkpoints older than it).
            extra={
                "step": int(ckpt["step"]),
                "metrics_step": ckpt.get("metrics_step"),
                "dataset": _as_json(ckpt_path, "dataset", ckpt.get("dataset", {})),
            },
        )
    except ValueError as exc:  # a class name gRPC could not carry, say
        raise ExportError(f"{ckpt_path}: {exc}") from None


def _as_json(ckpt_path: pathlib.Path, where: str, value: Any) -> Any:
    """A value the checkpoint records, as strict JSON (metadata.json) carries it: numbers held
    in tensors or numpy as plain numbers, a NaN or infinite metric as null. ExportError names
    anything else."""
    size = value.numel() if isinstance(value, torch.Tensor) else getattr(value, "size", None)
    if isinstance(value, torch.Tensor | np.ndarray | np.generic) and size == 1:
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _as_json(ckpt_path, f"{where}.{k}", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_json(ckpt_path, f"{where}[{i}]", v) for i, v in enumerate(value)]
    raise ExportError(
        f"{ckpt_path}: the checkpoint's {where} holds a {type(value).__name__}, which "
        "metadata.json cannot carry; was it written by gan-train, or edited?"
    )


def _export(
    ckpt_path: pathlib.Path,
    generator: torch.nn.Module,
    metadata: ModelMetadata,
    config: ExportConfig,
    version: int,
    trt_reason: str | None,
    on_published: Callable[[pathlib.Path], object] | None,
) -> ExportResult:
    # Where the version goes is checked (and its staging folder made) before the work, so an
    # unwritable destination fails in a second, not after the export and its verification.
    staged = publish.stage(config.repository, config.name, version, force=config.force)
    # Up to the rename, a refusal, a crash or Ctrl-C leaves nothing behind (after it, the
    # staging folder is the version, and discard only removes folders left empty).
    try:
        # A checkpoint exported from the version folder it replaces (re-exported to add
        # --fp16-onnx, say) goes on to the new version: the folder keeps what it came from.
        kept = publish.inside_version(staged, ckpt_path)
        if kept is not None and kept.parts[0] in ARTIFACT_FILES:
            raise ExportError(
                f"cannot replace {staged.final}: the checkpoint {ckpt_path} is its {kept}, which "
                "the export writes anew; move the checkpoint out of the folder, or pass another "
                "--version"
            )
        try:
            notes = _build(staged.folder, generator, metadata, config, trt_reason)
            if kept is not None:
                publish.carry(staged, kept)
        except OSError as exc:  # a full disk, say
            raise ExportError(
                f"cannot write the export under {config.repository}, nothing written: "
                f"{exc.strerror or exc}"
            ) from exc
        with publish.interrupts_held():
            removed = publish.publish(staged)
            if on_published is not None:
                on_published(staged.final)
            return ExportResult(
                repository.open_version(config.repository, config.name, version),
                tuple(notes),
                removed,
            )
    except BaseException:
        publish.discard(staged)
        raise


def _build(
    staging: pathlib.Path,
    generator: torch.nn.Module,
    metadata: ModelMetadata,
    config: ExportConfig,
    trt_reason: str | None,
) -> list[str]:
    """Write and verify every artifact and metadata.json into ``staging``; the notes (one
    line each) say what was skipped."""
    check = dict(metadata=metadata, batch_sizes=config.batch_sizes)
    reference = _torch_runner(generator)
    notes: list[str] = []
    extra: dict[str, Any] = {}
    try:
        onnx_path = staging / MODEL_FILE
        with _one_line("the ONNX export"):
            onnx_export.export_onnx(
                generator,
                onnx_path,
                metadata=metadata,
                opset=config.opset,
                optimize=config.optimize,
            )
        with _one_line("the FP32 ONNX check"):
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
            with _one_line("the FP16 ONNX check"):
                extra["onnx_fp16"] = _fp16_variant(staging, reference, check, config.device_id)
        if config.tensorrt is not TensorRTMode.OFF:
            if trt_reason:
                notes.append(f"TensorRT engine skipped: {trt_reason}")
            else:
                with _one_line("the TensorRT engine"):
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
    stray = sorted(p.name for p in staging.iterdir() if p.name not in ARTIFACT_FILES)
    if stray:
        raise ExportError(f"export wrote unexpected files {stray}; expected single files")
    return notes


# ONNX Runtime's own exceptions (Fail, RuntimeException, EPFail, ...) derive from Exception,
# not RuntimeError.
_ORT_ERRORS = tuple(
    cls for cls in vars(ort_state).values() if isinstance(cls, type) and issubclass(cls, Exception)
)


@contextlib.contextmanager
def _one_line(what: str) -> Iterator[None]:
    """Steps that run a model fail in ways of their own: memory that runs out (a large
    --max-batch), an engine that will not load (a signature TensorRT changed) or a CUDA call
    that fails. Each is one line, not a traceback; a failed check or build keeps its own
    message."""
    try:
        yield
    except (VerificationError, tensorrt_build.BuildError, ExportError):
        raise
    except (GanServeError, RuntimeError, MemoryError, *_ORT_ERRORS) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        memory = isinstance(exc, MemoryError) or "alloc" in text.lower() or "memory" in text
        hint = "; a smaller --max-batch or --verify-batch-sizes needs less" if memory else ""
        raise ExportError(f"{what} failed, nothing written: {text}{hint}") from exc


def _fp16_variant(
    staging: pathlib.Path, reference: Runner, check: dict, device_id: int
) -> dict[str, Any]:
    path = staging / FP16_MODEL_FILE
    try:
        onnx_export.to_fp16(staging / MODEL_FILE, path)
    except onnx_export.ConversionError as exc:
        raise ExportError(f"FP16 conversion failed, nothing written: {exc}") from exc
    providers, verified_on = _fp16_providers(device_id)
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
    attempts = [False, True] if precision == "fp16" else [False]
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
