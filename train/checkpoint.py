"""Checkpoints: plain dicts of tensors and Python values, loaded with ``weights_only=True``.

A checkpoint holds everything needed to rebuild the generator (architecture config), to know
how it was made (training config, dataset fingerprint, step, metrics, loss history) and to
resume (discriminator and optimiser states). Loading never executes code.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any

import torch
from torch import nn

from ganserve.train.networks import GeneratorConfig, create_generator

FORMAT = "ganserve-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "generator_config", "generator_ema", "step")


class CheckpointError(ValueError):
    """A file is not a usable ganserve checkpoint; the message says why."""


def save(payload: dict[str, Any], path: pathlib.Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load(path: pathlib.Path) -> dict[str, Any]:
    """Read and check a checkpoint; CheckpointError names what is missing or wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(
            f"{path}: not a loadable checkpoint (weights_only=True refused or failed: "
            f"{_reason(exc)})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ganserve checkpoint (no format={FORMAT!r} key)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {ckpt.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    return ckpt


def _reason(exc: Exception) -> str:
    """The informative line of torch.load's long error text."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line or "Unsupported global" in line:
            return line.split(". Please use")[0]
    return lines[0] if lines else type(exc).__name__


def build_generator(ckpt: dict[str, Any], *, ema: bool = True) -> nn.Module:
    """Rebuild the (EMA) generator of the checkpoint's family in eval mode; mismatched weights
    are named in the error."""
    try:
        config = GeneratorConfig.from_dict(ckpt["generator_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint generator_config is invalid: {exc}") from exc
    generator = create_generator(config)
    key = "generator_ema" if ema else "generator"
    try:
        generator.load_state_dict(ckpt[key])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {key} does not fit its generator_config: {exc}") from exc
    return generator.eval()


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
