"""export-gan writes a verified, self-describing model version, or nothing at all."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ganserve.export import onnx_export
from ganserve.export.onnx_export import ExportConfig, ExportError, export_checkpoint
from ganserve.serve.latent import LATENT_SCHEME, seeds_to_latents
from ganserve.train import checkpoint


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: pathlib.Path, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    return repo, export_checkpoint(tiny_checkpoint, ExportConfig(repository=repo, name="tiny"))


def test_export_writes_a_single_file_model_and_metadata(exported, tiny_checkpoint) -> None:
    repo, written = exported
    assert written.path == repo / "tiny" / "1"
    assert sorted(p.name for p in written.path.iterdir()) == ["metadata.json", "model.onnx"]
    meta = json.loads((written.path / "metadata.json").read_text())
    assert meta["name"] == "tiny" and meta["version"] == "1"
    assert (meta["latent_dim"], meta["num_classes"], meta["height"], meta["channels"]) == (
        16,
        10,
        32,
        1,
    )
    assert meta["latent_scheme"] == LATENT_SCHEME
    assert meta["source_checkpoint_sha256"] == checkpoint.file_sha256(tiny_checkpoint)
    assert meta["extra"]["verification"]["max_abs_diff"] <= 1e-4
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["tool_versions"])


def test_onnx_is_checker_clean_with_dynamic_batch_and_embedded_metadata(exported) -> None:
    _, written = exported
    model = onnx.load(str(written.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i for i in model.graph.input}
    assert set(inputs) == {"z", "label"}
    assert inputs["z"].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert inputs["label"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["ganserve.metadata"])["name"] == "tiny"


def test_onnx_matches_pytorch_at_several_batch_sizes(exported, tiny_checkpoint) -> None:
    _, written = exported
    generator = checkpoint.build_generator(checkpoint.load(tiny_checkpoint))
    session = ort.InferenceSession(str(written.onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 64):
        z = seeds_to_latents(range(batch), 16)
        labels = (np.arange(batch) % 10).astype(np.int64)
        got = session.run(None, {"z": z, "label": labels})[0]
        with torch.no_grad():
            want = generator(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
        assert np.abs(got - want).max() <= 1e-4


def test_next_export_is_the_next_version_and_existing_is_kept(exported, tiny_checkpoint) -> None:
    repo, _ = exported
    second = export_checkpoint(tiny_checkpoint, ExportConfig(repository=repo, name="tiny"))
    assert second.version == 2
    with pytest.raises(ExportError, match="already exists; pass --version N"):
        export_checkpoint(tiny_checkpoint, ExportConfig(repository=repo, name="tiny", version=1))


def test_export_out_of_tolerance_fails_loudly_and_writes_nothing(
    tiny_checkpoint: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_export = onnx_export._export_onnx

    def export_perturbed(generator, path, opset):
        broken = checkpoint.build_generator(checkpoint.load(tiny_checkpoint))
        with torch.no_grad():
            broken.net[0].weight.add_(0.05)
        real_export(broken, path, opset)

    monkeypatch.setattr(onnx_export, "_export_onnx", export_perturbed)
    with pytest.raises(ExportError, match=r"ONNX differs from PyTorch by .* at batch size 1, seed"):
        export_checkpoint(tiny_checkpoint, ExportConfig(repository=tmp_path, name="tiny"))
    assert list(tmp_path.rglob("*")) == []


def test_cli_refuses_a_non_checkpoint_with_one_line(tmp_path: pathlib.Path) -> None:
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"hello")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganserve.export.cli",
            str(bogus),
            "--repository",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Error: " in result.stderr and "not a loadable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "repo" / "digits").exists()
