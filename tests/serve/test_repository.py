"""Model folders that are incomplete or inconsistent are refused with one clear message."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil

import pytest

from conftest import BUNDLED_REPOSITORY, make_config
from ganserve.serve import repository
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metrics import ServerMetrics
from ganserve.serve.models import ModelManager


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> pathlib.Path:
    src = BUNDLED_REPOSITORY / "digits" / "1"
    dst = tmp_path / "digits" / "1"
    dst.mkdir(parents=True)
    for name in ("model.onnx", "metadata.json"):
        shutil.copy(src / name, dst / name)
    return tmp_path


def load(repo: pathlib.Path, **overrides: object) -> dict[str, str]:
    """Start a ModelManager on ``repo``; return {model: newest served version}."""

    async def start() -> dict[str, str]:
        manager = ModelManager(make_config(repo, **overrides), ServerMetrics(max_batch_size=64))
        await manager.start()
        try:
            return {name: manager.resolve(name).metadata.version for name in manager.names()}
        finally:
            await manager.close(0)

    return asyncio.run(start())


def test_latest_version_is_served(repo: pathlib.Path) -> None:
    shutil.copytree(repo / "digits" / "1", repo / "digits" / "3")
    meta = json.loads((repo / "digits" / "3" / "metadata.json").read_text())
    meta["version"] = "3"
    (repo / "digits" / "3" / "metadata.json").write_text(json.dumps(meta))
    (repo / "digits" / "notaversion").mkdir()
    assert repository.versions(repo, "digits") == [1, 3]
    assert load(repo)["digits"] == "3"


def test_missing_metadata_is_named(repo: pathlib.Path) -> None:
    (repo / "digits" / "1" / "metadata.json").unlink()
    with pytest.raises(ModelLoadError, match=r"metadata.json: metadata file is missing"):
        load(repo)


def test_missing_onnx_is_named(repo: pathlib.Path) -> None:
    (repo / "digits" / "1" / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model.onnx is missing"):
        load(repo)


@pytest.mark.parametrize("content", [b"", b"not an onnx file", b"\x08\x07garbage" * 10])
def test_corrupt_onnx_is_refused(repo: pathlib.Path, content: bytes) -> None:
    (repo / "digits" / "1" / "model.onnx").write_bytes(content)
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it"):
        load(repo)


def test_metadata_missing_field_is_named(repo: pathlib.Path) -> None:
    path = repo / "digits" / "1" / "metadata.json"
    meta = json.loads(path.read_text())
    del meta["latent_dim"]
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"missing required field.*latent_dim"):
        load(repo)


def test_metadata_not_matching_the_onnx_is_refused(repo: pathlib.Path) -> None:
    path = repo / "digits" / "1" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["latent_dim"] = 100
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="metadata says latent_dim 100"):
        load(repo)


def test_metadata_naming_another_folder_is_refused(repo: pathlib.Path) -> None:
    shutil.move(repo / "digits", repo / "other")
    with pytest.raises(ModelLoadError, match="metadata says model 'digits'"):
        load(repo)


def test_unreadable_metadata_json_is_named(repo: pathlib.Path) -> None:
    (repo / "digits" / "1" / "metadata.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not readable JSON"):
        load(repo)


def test_empty_repository_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="holds no <name>/<version>/ folders"):
        load(tmp_path)


def test_missing_repository_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_several_models_need_a_default(repo: pathlib.Path) -> None:
    shutil.copytree(repo / "digits", repo / "zeta")
    meta_path = repo / "zeta" / "1" / "metadata.json"
    meta_path.write_text(meta_path.read_text().replace('"name": "digits"', '"name": "zeta"'))
    with pytest.raises(ModelLoadError, match="choose one with --default-model"):
        load(repo)
    assert set(load(repo, default_model="zeta")) == {"digits", "zeta"}
    with pytest.raises(ModelLoadError, match="--default-model 'nope' is not in"):
        load(repo, default_model="nope")
