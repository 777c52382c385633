"""Model folders that are incomplete or inconsistent are refused with one clear message."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil

import pytest

from conftest import BUNDLED_REPOSITORY, make_config
from ganserve.serve import repository
from ganserve.serve.config import ModelConfig
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


def edit_metadata(repo: pathlib.Path, folder: str = "1", /, **fields: object) -> None:
    path = repo / "digits" / folder / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_latest_version_is_served(repo: pathlib.Path) -> None:
    shutil.copytree(repo / "digits" / "1", repo / "digits" / "3")
    edit_metadata(repo, "3", version="3")
    (repo / "digits" / "notaversion").mkdir()
    assert repository.versions(repo, "digits") == [1, 3]
    assert load(repo)["digits"] == "3"


@pytest.mark.parametrize("folder", ["0", "01", "007", "\u00b2", "\u0661", "\uff13"])
def test_folders_that_only_look_like_versions_are_ignored_with_a_warning(
    repo: pathlib.Path, folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    """int() reads "01", "١" (Arabic one) or "３" as numbers whose folder is another one, and
    "²" not at all; none of them is a version folder, and "0" is not a positive version."""
    shutil.copytree(repo / "digits" / "1", repo / "digits" / folder)
    assert repository.versions(repo, "digits") == [1]
    assert load(repo)["digits"] == "1"
    if folder.isdigit():
        assert f"{folder}: not a version folder" in caplog.text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"class_names": None}, "field class_names must be a list of strings, got null"),
        ({"class_names": [1, 2]}, "field class_names must be a list of strings"),
        ({"value_range": 5}, "field value_range must be a list of two finite numbers"),
        ({"value_range": [0, "1"]}, "field value_range must be a list of two finite numbers"),
        ({"value_range": [0, 1]}, r"field value_range must be \[-1, 1\], the only output range"),
        ({"latent_dim": 64.5}, "field latent_dim must be an integer in 0..1048576, got a number"),
        ({"latent_dim": "64"}, "field latent_dim must be an integer .*, got a string '64'"),
        ({"latent_dim": 10**10}, "field latent_dim must be an integer in 0..1048576"),
        ({"noise_dim": 10**11}, "field noise_dim must be an integer in 0..1048576"),
        ({"height": None}, "field height must be an integer .*, got null"),
        ({"height": 32.0}, "field height must be an integer"),
        ({"num_classes": 10.5}, "field num_classes must be an integer"),
        ({"channels": True}, "field channels must be an integer .*, got a boolean"),
        ({"channels": "1"}, "field channels must be an integer"),
        ({"architecture": 5}, "field architecture must be a string, got an integer 5"),
        ({"version": 1}, "field version must be a string, got an integer 1"),
        ({"training_metrics": []}, "field training_metrics must be a JSON object, got a list"),
        ({"latent_scheme": "pcg64-v9"}, "latent_scheme 'pcg64-v9' is not supported"),
        # "\udcff" in JSON: a lone surrogate, which gRPC cannot send (GetModelInfo failed).
        (
            {"class_names": ["\udcff", *"123456789"]},
            r"class_names '\\udcff' is not valid UTF-8 text",
        ),
    ],
)
def test_metadata_of_the_wrong_type_names_the_field(
    repo: pathlib.Path, fields: dict[str, object], message: str
) -> None:
    edit_metadata(repo, **fields)
    with pytest.raises(ModelLoadError, match=f"metadata.json: {message}"):
        load(repo)


def test_an_input_of_the_wrong_dtype_is_refused_at_load(repo: pathlib.Path) -> None:
    """A model whose label input is float loads in ONNX Runtime but fails every run: refused
    with the input named, also when warm-up is off."""
    import onnx

    path = repo / "digits" / "1" / "model.onnx"
    model = onnx.load(str(path))
    (label,) = [i for i in model.graph.input if i.name == "label"]
    label.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    cast = onnx.helper.make_node("Cast", ["label"], ["label_int"], to=onnx.TensorProto.INT64)
    for node in model.graph.node:
        node.input[:] = ["label_int" if i == "label" else i for i in node.input]
    model.graph.node.insert(0, cast)
    onnx.save(model, str(path))
    for warmup in (True, False):
        with pytest.raises(
            ModelLoadError, match=r"input label is tensor\(float\), expected tensor\(int64\)"
        ):
            load(repo, warmup=warmup)


def test_an_engine_that_fails_at_warm_up_is_a_load_error(
    repo: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ganserve.serve.backends import cpu

    def fail(self: object, feeds: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : planted")

    monkeypatch.setattr(cpu.OnnxCpuEngine, "run", fail)
    with pytest.raises(ModelLoadError, match=r"v1: (warm-up|timing) .* failed \(.*planted\)"):
        load(repo)


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
    with pytest.raises(ModelLoadError, match=r"input z has shape .*, metadata implies \(N, 100\)"):
        load(repo)


@pytest.mark.parametrize("warmup", [True, False])
def test_metadata_with_more_classes_than_the_model_is_refused(
    repo: pathlib.Path, warmup: bool
) -> None:
    """Warm-up runs class 0 only: without the check, class 12 would load and then fail every
    request for it with INTERNAL."""
    edit_metadata(repo, num_classes=13, class_names=[str(c) for c in range(13)])
    with pytest.raises(
        ModelLoadError, match=r"an image of class 12 \(metadata\.json: num_classes 13\) failed"
    ):
        load(repo, warmup=warmup)


def test_metadata_naming_another_folder_is_refused(repo: pathlib.Path) -> None:
    shutil.move(repo / "digits", repo / "other")
    with pytest.raises(ModelLoadError, match="metadata says model 'digits'"):
        load(repo)


@pytest.mark.parametrize(
    "text",
    ["{not json", "[" * 100_000 + "]" * 100_000, '{"height": ' + "9" * 5000 + "}"],
    ids=["broken", "deep", "huge-int"],
)
def test_unreadable_metadata_json_is_named(repo: pathlib.Path, text: str) -> None:
    (repo / "digits" / "1" / "metadata.json").write_text(text)
    with pytest.raises(ModelLoadError, match=r"digits/1/metadata\.json: not readable JSON"):
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


def test_settings_for_a_model_the_repository_does_not_hold_are_refused(
    repo: pathlib.Path,
) -> None:
    """A typo in a [models.<name>] table would otherwise be ignored in silence."""
    with pytest.raises(ModelLoadError, match=r"settings for model\(s\) digts .*found: digits"):
        load(repo, models={"digts": ModelConfig(versions=(7,))})


def test_a_scan_that_fails_is_a_failed_reload_and_the_model_keeps_serving(
    repo: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root cannot make a folder unreadable, so the scan's OSError is planted."""

    async def run() -> tuple[list, str]:
        manager = ModelManager(make_config(repo), ServerMetrics(max_batch_size=64))
        await manager.start()
        try:

            def unreadable(root: pathlib.Path) -> list[str]:
                raise PermissionError(13, "Permission denied", str(root))

            monkeypatch.setattr(repository, "model_names", unreadable)
            return await manager.reload(), manager.resolve("digits").metadata.version
        finally:
            await manager.close(0)

    (status,), served = asyncio.run(run())
    assert status.state.name == "FAILED" and "Permission denied" in status.message
    assert served == "1"


def test_hidden_folders_are_not_models(repo: pathlib.Path) -> None:
    """An export-gan staging folder left by a killed export is not a second model."""
    shutil.copytree(repo / "digits", repo / ".export-x1y2")
    assert repository.model_names(repo) == ["digits"]
    assert load(repo) == {"digits": "1"}
