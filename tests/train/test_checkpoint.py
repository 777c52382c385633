"""Checkpoints are data: they rebuild the generator, refuse foreign files and never run code."""

from __future__ import annotations

import json
import pathlib
import pickle
import struct
import zipfile

import pytest
import torch

from conftest import BUNDLED_REPOSITORY
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
    # A bare pickle is not even a zip archive; either way, it is refused unread.
    with pytest.raises(CheckpointError, match=r"weights_only=True refused|not a checkpoint"):
        checkpoint.load(path)
    assert not marker.exists(), "the pickle payload executed"


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 100, b"PK\x03\x04truncated", b"#!/bin/sh\necho hi\n"]
)
def test_unreadable_files_are_refused(tmp_path: pathlib.Path, content: bytes) -> None:
    """Not torch's 'please file an issue' text: the file is simply not a checkpoint."""
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"not a checkpoint \(torch.save writes a zip"):
        checkpoint.load(path)


def test_truncated_checkpoint_is_refused(
    tmp_path: pathlib.Path, tiny_checkpoint: pathlib.Path
) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"not a (loadable )?checkpoint"):
        checkpoint.load(path)


def test_a_checkpoint_with_damaged_bytes_is_refused_naming_the_member(
    tmp_path: pathlib.Path, tiny_checkpoint: pathlib.Path
) -> None:
    """torch.load does not check the archive's CRCs: weights overwritten on disk were
    accepted, exported and served."""
    with zipfile.ZipFile(tiny_checkpoint) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor
    data = bytearray(tiny_checkpoint.read_bytes())
    with tiny_checkpoint.open("rb") as f:  # the member's bytes start after its local header
        f.seek(member.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    start = member.header_offset + 30 + name_len + extra_len
    data[start : start + 16] = struct.pack("<4f", 10.0, 10.0, 10.0, 10.0)
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"damaged: {member.filename} does not match"):
        checkpoint.load(path)


def test_a_pickle_torch_cannot_read_is_refused_with_torchs_reason(
    tmp_path: pathlib.Path, tiny_checkpoint: pathlib.Path
) -> None:
    """The reason torch gives (on the line after 'WeightsUnpickler error:') was dropped, and
    its 'Please file an issue' text shown instead."""
    path = tmp_path / "garbled.pt"
    with zipfile.ZipFile(tiny_checkpoint) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():  # rewritten with valid CRCs: only the pickle is wrong
            data = src.read(info)
            dst.writestr(info, b"\x00" * len(data) if info.filename.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    assert "WeightsUnpickler error: " in str(caught.value)
    assert "Please file an issue" not in str(caught.value)
    assert not str(caught.value).endswith("error: )")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"generator_ema": None}, "generator_ema must be a table, got NoneType"),
        ({"dataset": "x"}, "dataset must be a table, got str"),
        ({"metrics": [1, 2]}, "metrics must be a table, got list"),
        ({"history": 3}, "history must be a list, got int"),
        ({"step": "abc"}, "step must be a non-negative integer, got 'abc'"),
        ({"step": -1}, "step must be a non-negative integer, got -1"),
        ({"generator_ema": {"w": 1}}, "generator_ema must map parameter names to tensors"),
        ({"generator_config": "x"}, "generator_config must be a table, got str"),
        ({"width": "8"}, "generator config field width must be int, got '8'"),
        ({"class_names": ["a"]}, "dataset.class_names has 1 names for the generator's 10"),
        ({"class_names": [1] * 10}, "dataset.class_names must be a list of strings"),
        ({"metrics_step": "20"}, "metrics_step must be a step from 0 to 20 or None, got '20'"),
        ({"metrics_step": 21}, "metrics_step must be a step from 0 to 20 or None, got 21"),
    ],
)
def test_contents_of_the_wrong_type_are_named(
    tmp_path: pathlib.Path, tiny_checkpoint: pathlib.Path, change: dict, message: str
) -> None:
    """export-gan, gan-eval and --resume read these keys; each would fail with a traceback."""
    ckpt = checkpoint.load(tiny_checkpoint)
    for key, value in change.items():
        if key == "width":
            ckpt["generator_config"] = {**ckpt["generator_config"], "width": value}
        elif key == "class_names":
            ckpt["dataset"] = {**ckpt["dataset"], "class_names": value}
        else:
            ckpt[key] = value
    path = tmp_path / "odd.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"odd.pt: checkpoint {message}"):
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


def test_checkpoints_from_before_metrics_step_still_load_and_export(
    tmp_path: pathlib.Path, tiny_checkpoint: pathlib.Path
) -> None:
    """metrics_step (the step `metrics` was measured at) is newer than the bundled checkpoints;
    a checkpoint without the key exports as before, its metrics' step unknown (null)."""
    from ganserve.export.pipeline import ExportConfig, TensorRTMode, export_checkpoint

    bundled = checkpoint.load(BUNDLED_REPOSITORY / "digits" / "1" / "checkpoint.pt")
    assert "metrics_step" not in bundled and bundled["metrics"]
    ckpt = checkpoint.load(tiny_checkpoint)
    assert ckpt["metrics_step"] is None  # trained with evaluation off
    del ckpt["metrics_step"]
    ckpt["metrics"] = {"sample_class_accuracy": 0.5}
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    config = ExportConfig(
        repository=tmp_path / "repo",
        name="old",
        max_batch=2,
        verify_batch_sizes=(1, 2),
        tensorrt=TensorRTMode.OFF,
    )
    result = export_checkpoint(old, config)
    meta = json.loads((result.version.path / "metadata.json").read_text())
    assert meta["training_metrics"] == {"sample_class_accuracy": 0.5}
    assert meta["extra"]["metrics_step"] is None


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("latent_dim", 10**9, "--latent-dim allows 1..4096"),
        ("width", 10**6, "--width allows 1..1024"),  # grew export-gan to 22 GB, then OOM
        ("embed_dim", 10**6, "--embed-dim allows 1..4096"),
        ("fc_layers", 64, "--fc-layers allows 1..16"),
        ("w_dim", 10**6, "--w-dim allows 1..4096"),
        ("mapping_layers", 1000, "--mapping-layers allows 1..16"),
        ("image_size", 2**20, "--image-size allows 8, 16, 32, 64, 128"),
    ],
)
def test_sizes_gan_train_does_not_allow_are_refused_on_loading(
    tmp_path: pathlib.Path, tiny_checkpoint: pathlib.Path, field: str, value: int, allowed: str
) -> None:
    """export-gan and gan-eval built the network first: a traceback (can't allocate memory),
    or the machine's memory filled until the kernel killed them."""
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["generator_config"] = {**ckpt["generator_config"], field: value}
    path = tmp_path / "huge.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    assert str(caught.value) == (
        f"{path}: checkpoint generator_config {field} {value} is out of range: gan-train's "
        f"{allowed}"
    )
    with pytest.raises(CheckpointError, match=f"generator_config {field} {value} is out of"):
        checkpoint.build_generator(ckpt)  # a table that did not come through `load`


def test_the_sizes_a_checkpoint_may_hold_are_gan_trains_option_ranges() -> None:
    from ganserve.train.cli import main
    from ganserve.train.networks import IMAGE_SIZES, SIZE_RANGES

    options = {p.name: p.type for p in main.params}
    for field, (low, high) in SIZE_RANGES.items():
        assert (options[field].min, options[field].max) == (low, high), field
    assert list(options["image_size"].choices) == [str(s) for s in IMAGE_SIZES]


def test_a_class_count_its_weights_do_not_have_is_refused_before_allocating(
    tiny_checkpoint: pathlib.Path,
) -> None:
    """num_classes has no gan-train option to bound it (the data gives it): the config is
    checked against the weights' shapes on the meta device, not by allocating the table."""
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["generator_config"] = {**ckpt["generator_config"], "num_classes": 10**12}
    with pytest.raises(CheckpointError) as caught:
        checkpoint.build_generator(ckpt)
    assert str(caught.value) == (
        "checkpoint generator_ema does not fit its generator_config: embed.weight is (10, 8), "
        "the config makes (1000000000000, 8)"
    )
