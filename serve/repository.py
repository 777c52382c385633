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


def versions(root: pathlib.Path, name: str) -> list[int]:
    """The integer version folders of model ``name``, ascending."""
    model_dir = root / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def model_names(root: pathlib.Path) -> list[str]:
    """Names of the models under ``root`` that have at least one version folder."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} does not exist or is not a directory")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and versions(root, p.name))


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
