"""The bundled model draws legible digits of the asked class and matches its checkpoint."""

from __future__ import annotations

import pytest
import torch

from conftest import BUNDLED_REPOSITORY
from ganserve.serve import repository
from ganserve.serve.backends import EngineOptions
from ganserve.serve.backends.cpu import OnnxCpuEngine
from ganserve.serve.latent import seeds_to_latents
from ganserve.train import checkpoint
from ganserve.train.data import load_digits_split
from ganserve.train.metrics import DigitClassifier

VERSION = repository.latest(BUNDLED_REPOSITORY, "digits")


def test_metadata_names_the_committed_checkpoint() -> None:
    ckpt_path = VERSION.path / "checkpoint.pt"
    assert VERSION.metadata.source_checkpoint_sha256 == checkpoint.file_sha256(ckpt_path)
    ckpt = checkpoint.load(ckpt_path)
    assert ckpt["generator_config"]["num_classes"] == VERSION.metadata.num_classes == 10


def test_served_samples_are_legible_digits_of_the_asked_class() -> None:
    """A classifier fit on real training digits reads the served samples as the asked class."""
    engine = OnnxCpuEngine(VERSION.path, VERSION.metadata, EngineOptions())
    per_class = 50
    z = seeds_to_latents(list(range(per_class)) * 10, VERSION.metadata.latent_dim)
    labels = torch.arange(10).repeat_interleave(per_class)
    images = engine.run(z, labels.numpy())
    train, heldout = load_digits_split(32)
    judge = DigitClassifier(train)
    real_accuracy = judge.accuracy(heldout.images, heldout.labels)
    sample_accuracy = judge.accuracy(torch.from_numpy(images), labels)
    assert real_accuracy > 0.9
    assert sample_accuracy >= 0.9, f"only {sample_accuracy:.1%} of samples read as their class"


@pytest.mark.parametrize("digit", range(10))
def test_every_class_is_recognised(digit: int) -> None:
    engine = OnnxCpuEngine(VERSION.path, VERSION.metadata, EngineOptions())
    z = seeds_to_latents(range(20), VERSION.metadata.latent_dim)
    images = engine.run(z, torch.full((20,), digit).numpy())
    judge = DigitClassifier(load_digits_split(32)[0])
    assert judge.accuracy(torch.from_numpy(images), torch.full((20,), digit)) >= 0.7
