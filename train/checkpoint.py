"""Checkpoints: plain dicts of tensors and Python values, loaded with ``weights_only=True``.

A checkpoint holds everything needed to rebuild the generator (architecture config), to know
how it was made (training config, dataset fingerprint, step, metrics and the step they were
measured at, loss history) and to resume (discriminator and optimiser states). Loading never
executes code.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import zipfile
from typing import Any

import torch
from torch import nn

from ganserve.train.networks import GeneratorConfig, check_sizes, create_generator

FORMAT = "ganserve-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "generator_config", "generator_ema", "step")


class CheckpointError(ValueError):
    """A file is not a usable ganserve checkpoint; the message says why."""


def save(payload: dict[str, Any], path: pathlib.Path) -> None:
    """Write atomically: a crash mid-write, or a power cut after it, never leaves a truncated
    checkpoint behind (the data reaches the disk before the rename, and the rename before this
    returns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with tmp.open("wb") as f:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)
    except (OSError, RuntimeError) as exc:  # a full disk surfaces from torch as RuntimeError
        tmp.unlink(missing_ok=True)  # a truncated file, as large as the disk allowed
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CheckpointError(f"cannot write {path}: {reason}") from None
    except BaseException:  # a second Ctrl-C mid-save: no full-size .tmp left behind
        tmp.unlink(missing_ok=True)
        raise


def sync_folder(folder: pathlib.Path, *, files: bool = False) -> None:
    """Make the renames in ``folder`` durable by fsyncing it (and with ``files``, each file in
    it first). A file system that cannot sync a folder is let be; other failures raise."""
    if files:
        for path in folder.iterdir():
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # a folder it cannot sync
            raise
    finally:
        os.close(fd)


def load(path: pathlib.Path) -> dict[str, Any]:
    """Read and check a checkpoint; CheckpointError names what is missing or wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a checkpoint (torch.save writes a zip archive; this file is not one)"
        )
    # torch.load does not check the archive's CRCs: a bit flipped on disk or in a copy would be
    # trained on, exported and served. testzip reads every member against its checksum.
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception as exc:  # zipfile's errors for a broken archive come in many types
        raise CheckpointError(f"{path}: a damaged zip archive ({exc})") from None
    if damaged is not None:
        raise CheckpointError(
            f"{path}: damaged: {damaged} does not match its checksum (a corrupt or partial "
            "copy); use another copy or checkpoint"
        )
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
    try:
        _check_contents(ckpt)
    except ValueError as exc:
        raise CheckpointError(f"{path}: checkpoint {exc}") from None
    return ckpt


# Keys that, when present, hold a table (a state dict, a config, the dataset's description).
TABLES = (
    "generator_config",
    "discriminator_config",
    "training_config",
    "dataset",
    "metrics",
    "rng",
    "generator",
    "generator_ema",
    "discriminator",
    "optimizer_g",
    "optimizer_d",
)
STATE_DICTS = ("generator", "generator_ema", "discriminator")


def _check_contents(ckpt: dict[str, Any]) -> None:
    """ValueError naming the first key whose value is not what gan-train writes there."""
    for key in TABLES:
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise ValueError(f"{key} must be a table, got {type(ckpt[key]).__name__}")
    if not isinstance(ckpt.get("history", []), list):
        raise ValueError(f"history must be a list, got {type(ckpt['history']).__name__}")
    if type(ckpt["step"]) is not int or ckpt["step"] < 0:
        raise ValueError(f"step must be a non-negative integer, got {ckpt['step']!r}")
    # The step `metrics` was measured at; None: never evaluated; absent in older checkpoints.
    measured = ckpt.get("metrics_step")
    if measured is not None and (type(measured) is not int or not 0 <= measured <= ckpt["step"]):
        raise ValueError(
            f"metrics_step must be a step from 0 to {ckpt['step']} or None, got {measured!r}"
        )
    for key in STATE_DICTS:
        if key in ckpt and not all(isinstance(v, torch.Tensor) for v in ckpt[key].values()):
            raise ValueError(f"{key} must map parameter names to tensors")
    config = GeneratorConfig.from_dict(ckpt["generator_config"])
    check_sizes(config)  # before anything is built: a latent_dim of 10**9 asks for GBs
    dataset = ckpt.get("dataset", {})
    names = dataset.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("dataset.class_names must be a list of strings")
    if names and config.num_classes and len(names) != config.num_classes:
        raise ValueError(
            f"dataset.class_names has {len(names)} names for the generator's "
            f"{config.num_classes} classes"
        )
    for key in ("name", "fingerprint"):
        if not isinstance(dataset.get(key, ""), str):
            raise ValueError(f"dataset.{key} must be a string")


def _reason(exc: Exception) -> str:
    """The informative line of torch.load's long error text."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "Unsupported global" in line:
            return line.split(". Please use")[0]
        if "WeightsUnpickler error" in line:
            # "...: WeightsUnpickler error: <why>", or the why on the next line (torch >= 2.6).
            why = line.split("WeightsUnpickler error", 1)[1].lstrip(":").strip()
            why = why or (lines[i + 1] if i + 1 < len(lines) else "")
            return f"WeightsUnpickler error: {why.split('. Please use')[0]}".rstrip(": ")
    return lines[0] if lines else type(exc).__name__


def build_generator(ckpt: dict[str, Any], *, ema: bool = True) -> nn.Module:
    """Rebuild the (EMA) generator of the checkpoint's family in eval mode; mismatched weights
    are named in the error, before the generator's memory is allocated."""
    try:
        config = GeneratorConfig.from_dict(ckpt["generator_config"])
        check_sizes(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint generator_config is invalid: {exc}") from exc
    key = "generator_ema" if ema else "generator"
    if not isinstance(ckpt.get(key), dict):
        raise CheckpointError(f"checkpoint has no {key} (a table of weights)")
    _check_shapes(config, key, ckpt[key])
    generator = create_generator(config)
    try:
        generator.load_state_dict(ckpt[key])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {key} does not fit its generator_config: {exc}") from exc
    return generator.eval()


def _check_shapes(config: GeneratorConfig, key: str, weights: dict[str, Any]) -> None:
    """CheckpointError naming the first weight the config's generator has and ``weights`` lack
    or hold in another shape. Built on the meta device (no memory): a config that asks for
    more than its weights hold (num_classes edited to 10**9, which gan-train's options do not
    bound) is refused before its network is allocated."""
    with torch.device("meta"):
        expected = create_generator(config).state_dict()
    for name, tensor in expected.items():
        found = weights.get(name)
        if not isinstance(found, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {key} does not fit its generator_config: no tensor {name}"
            )
        if tuple(found.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {key} does not fit its generator_config: {name} is "
                f"{tuple(found.shape)}, the config makes {tuple(tensor.shape)}"
            )


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
