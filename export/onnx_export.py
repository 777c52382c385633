"""Checkpoint -> verified ``model.onnx`` + ``metadata.json`` in ``<repo>/<name>/<version>/``.

Export inputs are ``z`` (N, latent_dim) float32 and, for conditional models, ``label`` (N,)
int64; the output ``image`` is (N, C, H, W) float32 in [-1, 1]. The batch axis is dynamic.
Nothing lands in the repository unless ONNX Runtime reproduces PyTorch within tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ganserve.serve import repository
from ganserve.serve.imaging import to_uint8
from ganserve.serve.latent import LATENT_SCHEME, seeds_to_latents
from ganserve.serve.metadata import METADATA_FILE, MODEL_FILE, ModelMetadata
from ganserve.train import checkpoint
from ganserve.train.networks import Generator

LOGGER = logging.getLogger(__name__)

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """Export refused: the artifact failed a check, or the destination is not writable."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """One export.

    Args:
        repository: Model repository root.
        name: Model name (the folder under the repository).
        version: Version folder; None takes the highest existing version + 1.
        opset: ONNX opset.
        verify_batch_sizes: Batch sizes checked against PyTorch.
        tolerance: Largest |ONNX - PyTorch| accepted, in the [-1, 1] output range.
        overwrite: Replace an existing version folder instead of refusing.
    """

    repository: pathlib.Path
    name: str
    version: int | None = None
    opset: int = DEFAULT_OPSET
    verify_batch_sizes: tuple[int, ...] = (1, 7, 64)
    tolerance: float = DEFAULT_TOLERANCE
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name {self.name!r} is not a valid folder name")
        if self.version is not None and self.version < 1:
            raise ValueError(f"version must be >= 1, got {self.version}")
        if not 17 <= self.opset <= 23:
            raise ValueError(f"opset must be in 17..23, got {self.opset}")
        if not self.verify_batch_sizes or min(self.verify_batch_sizes) < 1:
            raise ValueError(f"verify_batch_sizes must be >= 1, got {self.verify_batch_sizes}")


class _ExportWrapper(torch.nn.Module):
    """Fixes the exported signature: (z, label) for conditional models, (z,) otherwise."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, label)


def _export_onnx(generator: Generator, path: pathlib.Path, opset: int) -> None:
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
            optimize=True,
            verbose=False,
        )


def verify(
    generator: Generator, onnx_path: pathlib.Path, batch_sizes: tuple[int, ...], tolerance: float
) -> dict[str, float]:
    """Compare ONNX Runtime with PyTorch on fixed seeds and every class; check batch invariance.

    Raises ExportError with the worst case when out of tolerance.
    """
    cfg = generator.config
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    classes = max(cfg.num_classes, 1)
    worst = 0.0
    for batch in batch_sizes:
        seeds = list(range(1000 * batch, 1000 * batch + batch))
        z = seeds_to_latents(seeds, cfg.latent_dim)  # (B, latent_dim)
        labels = np.arange(batch, dtype=np.int64) % classes  # every class appears when B >= C
        feeds = {"z": z} | ({"label": labels} if cfg.num_classes else {})
        got = session.run(None, feeds)[0]
        with torch.no_grad():
            want = generator(
                torch.from_numpy(z), torch.from_numpy(labels) if cfg.num_classes else None
            ).numpy()
        diff = np.abs(got - want)
        if got.shape != want.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {want.shape}")
        if not np.isfinite(got).all():
            raise ExportError(f"ONNX output has non-finite values at batch size {batch}")
        worst = max(worst, float(diff.max()))
        if diff.max() > tolerance:
            i = int(np.unravel_index(diff.argmax(), diff.shape)[0])
            raise ExportError(
                f"ONNX differs from PyTorch by {diff.max():.3g} > {tolerance:g} at batch size "
                f"{batch}, seed {seeds[i]}, class {labels[i] if cfg.num_classes else '-'}"
            )
        # Batch invariance: each seed computed alone gives the same pixels as inside the batch.
        alone = np.concatenate(
            [
                session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0]
                for i in range(batch)
            ]
        )
        if not np.array_equal(to_uint8(alone), to_uint8(got)):
            raise ExportError(f"batch invariance broken: batch {batch} pixels differ from batch 1")
    return {"max_abs_diff": worst}


def _next_version(root: pathlib.Path, name: str) -> int:
    found = repository.versions(root, name)
    return found[-1] + 1 if found else 1


def export_checkpoint(ckpt_path: pathlib.Path, config: ExportConfig) -> repository.ModelVersionPath:
    """Export, verify and publish one model version; return what was written."""
    try:
        ckpt = checkpoint.load(ckpt_path)
        generator = checkpoint.build_generator(ckpt, ema=True)
    except checkpoint.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    cfg = generator.config
    version = config.version or _next_version(config.repository, config.name)
    final = config.repository / config.name / str(version)
    if final.exists() and not config.overwrite:
        raise ExportError(f"{final} already exists; pass --version N for a new one or --overwrite")

    class_names = tuple(ckpt.get("dataset", {}).get("class_names", ())) if cfg.num_classes else ()
    metadata = ModelMetadata(
        name=config.name,
        version=str(version),
        latent_dim=cfg.latent_dim,
        num_classes=cfg.num_classes,
        class_names=class_names or tuple(str(i) for i in range(cfg.num_classes)),
        height=cfg.image_size,
        width=cfg.image_size,
        channels=cfg.channels,
        latent_scheme=LATENT_SCHEME,
        architecture="dcgan",
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

    config.repository.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder, then rename: the repository never holds half a version.
    with tempfile.TemporaryDirectory(dir=config.repository, prefix=".export-") as tmp:
        staging = pathlib.Path(tmp)
        onnx_path = staging / MODEL_FILE
        _export_onnx(generator, onnx_path, config.opset)
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model, full_check=True)
        onnx.helper.set_model_props(
            model,
            {
                "ganserve.metadata": json.dumps(metadata.to_dict(), sort_keys=True),
            },
        )
        onnx.save(model, str(onnx_path))
        stray = [p.name for p in staging.iterdir() if p.name != MODEL_FILE]
        if stray:
            raise ExportError(f"export wrote external data files {stray}; expected one file")
        report = verify(generator, onnx_path, config.verify_batch_sizes, config.tolerance)
        LOGGER.info("verified against PyTorch: max |diff| %.3g", report["max_abs_diff"])
        metadata = dataclasses.replace(metadata, extra={**metadata.extra, "verification": report})
        metadata.write(staging / METADATA_FILE)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        staging.chmod(0o755)  # TemporaryDirectory makes 0700; servers may run as another user
        os.rename(staging, final)
        staging.mkdir()  # TemporaryDirectory cleans up the (now empty) staging name
    return repository.open_version(config.repository, config.name, version)
