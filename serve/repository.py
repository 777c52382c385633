"""Model repository layout: ``<root>/<name>/<version>/{model.onnx, metadata.json}``.

Versions are positive integers; the server serves the highest version of each model.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metadata import METADATA_FILE, MODEL_FILE, ModelMetadata

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelVersionPath:
    """One version folder of one model, with its metadata read and checked."""

    name: str
    version: int
    path: pathlib.Path
    metadata: ModelMetadata

    @property
    def onnx_path(self) -> pathlib.Path:
        return self.path / MODEL_FILE


def version_number(folder: str) -> int | None:
    """The version a folder name stands for: 1, 2, ... written plainly; None for anything
    else ("0", "01", "v2", non-ASCII digits), which is not a version folder."""
    if folder.isascii() and folder.isdigit() and folder[0] != "0":
        return int(folder)
    return None


def versions(root: pathlib.Path, name: str) -> list[int]:
    """The version folders of model ``name``, ascending; other folders are logged and left
    alone (a ".tmp" or "backup" folder beside the versions is not an error)."""
    model_dir = root / name
    if not model_dir.is_dir():
        return []
    found = []
    for p in model_dir.iterdir():
        if not p.is_dir():
            continue
        number = version_number(p.name)
        if number is None:
            if p.name.isdigit():  # looks like a version but is not one
                LOGGER.warning(
                    "%s: not a version folder (versions are named 1, 2, 3, ...); ignored", p
                )
            continue
        found.append(number)
    return sorted(found)


def model_names(root: pathlib.Path) -> list[str]:
    """Names of the models under ``root`` that have at least one version folder. A folder
    whose name is not printable UTF-8 text is logged and left alone: clients name models over
    gRPC, and metric labels and statuses could not carry it (export-gan refuses such names)."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} does not exist or is not a directory")
    names = []
    for p in root.iterdir():
        # Hidden folders are tools' (export-gan stages versions in .export-*), not models.
        if not p.is_dir() or p.name.startswith("."):
            continue
        if not any(c.is_dir() and version_number(c.name) for c in p.iterdir()):
            continue
        if not p.name.isprintable():  # undecodable bytes arrive as lone surrogates
            LOGGER.warning(
                "model folder %r in %s: the name is not printable UTF-8 text, which clients "
                "could not ask for; rename it. Ignored",
                p.name,
                ascii(str(root)),
            )
            continue
        names.append(p.name)
    return sorted(names)


def open_version(root: pathlib.Path, name: str, version: int) -> ModelVersionPath:
    """Check one version folder and read its metadata; ModelLoadError says what is wrong."""
    path = root / name / str(version)
    if not (path / MODEL_FILE).is_file():
        raise ModelLoadError(f"{path}: {MODEL_FILE} is missing")
    metadata = ModelMetadata.read(path / METADATA_FILE)
    if metadata.name != name or metadata.version != str(version):
        raise ModelLoadError(
            f"{path}: metadata says model {metadata.name!r} version {metadata.version!r}, "
            f"but the folder is {name!r}/{version}"
        )
    return ModelVersionPath(name=name, version=version, path=path, metadata=metadata)


def latest(root: pathlib.Path, name: str) -> ModelVersionPath:
    """The highest version of model ``name``."""
    found = versions(root, name)
    if not found:
        raise ModelLoadError(f"model {name!r} has no version folders under {root / name}")
    return open_version(root, name, found[-1])
