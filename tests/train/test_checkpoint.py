"""Checkpoints are data: they rebuild the generator, refuse foreign files and never run code."""

from __future__ import annotations

import pathlib
import pickle

import pytest
import torch

from ganserve.train import checkpoint
from ganserve.train.checkpoint import CheckpointError


def test_checkpoint_holds_what_rebuilds_and_describes_the_generator(
    tiny_checkpoint: pathlib.Path,
) -> None:
    ckpt = checkpoint.load(tiny_checkpoint)
    for key in (
        "generator_config",
        "discriminator_config",
        "training_config",
        "dataset",
        "metrics",
        "history",
        "generator",
        "generator_ema",
        "discriminator",
        "optimizer_g",
        "optimizer_d",
    ):
        assert key in ckpt, key
    assert ckpt["step"] == 20 and ckpt["training_config"]["loss"] == "nonsaturating"
    assert len(ckpt["dataset"]["fingerprint"]) == 64 and ckpt["dataset"]["size"] == 1437
    generator = checkpoint.build_generator(ckpt)
    assert not generator.training
    with torch.no_grad():
        out = generator(torch.randn(3, 16), torch.tensor([0, 5, 9]))
    assert out.shape == (3, 1, 32, 32) and out.abs().max() <= 1


class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: pathlib.Path, writer: str) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"format": "ganserve-checkpoint", "x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(CheckpointError, match="weights_only=True refused"):
        checkpoint.load(path)
    assert not marker.exists(), "the pickle payload executed"


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04truncated"])
def test_unreadable_files_are_refused(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        checkpoint.load(path)


def test_truncated_checkpoint_is_refused(
    tmp_path: pathlib.Path, tiny_checkpoint: pathlib.Path
) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        checkpoint.load(path)


def test_foreign_torch_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a ganserve checkpoint"):
        checkpoint.load(path)


def test_missing_file_is_named(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        checkpoint.load(tmp_path / "absent.pt")


def test_missing_keys_are_named(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "partial.pt"
    torch.save({"format": "ganserve-checkpoint", "format_version": 1, "step": 1}, path)
    with pytest.raises(CheckpointError, match="missing generator_config, generator_ema"):
        checkpoint.load(path)


def test_weights_not_fitting_the_config_are_named(tiny_checkpoint: pathlib.Path) -> None:
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["generator_config"] = {**ckpt["generator_config"], "width": 16}
    with pytest.raises(CheckpointError, match="generator_ema does not fit its generator_config"):
        checkpoint.build_generator(ckpt)


def test_unknown_config_field_is_named(tiny_checkpoint: pathlib.Path) -> None:
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["generator_config"] = {**ckpt["generator_config"], "depth": 3}
    with pytest.raises(CheckpointError, match=r"unknown field.*depth"):
        checkpoint.build_generator(ckpt)
