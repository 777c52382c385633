"""The bundled model draws legible digits of the asked class and matches its checkpoint."""

from __future__ import annotations

import pytest
import torch

from conftest import BUNDLED_REPOSITORY
from ganserve.serve import repository
from ganserve.serve.backends import EngineOptions
from ganserve.serve.backends.cpu import OnnxCpuEngine
from ganserve.serve.inputs import feeds_for_seeds
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
    labels = torch.arange(10).repeat_interleave(per_class)
    images = engine.run(
        feeds_for_seeds(VERSION.metadata, list(range(per_class)) * 10, labels.numpy())
    )
    train, heldout = load_digits_split(32)
    judge = DigitClassifier(train)
    real_accuracy = judge.accuracy(heldout.images, heldout.labels)
    sample_accuracy = judge.accuracy(torch.from_numpy(images), labels)
    assert real_accuracy > 0.9
    assert sample_accuracy >= 0.9, f"only {sample_accuracy:.1%} of samples read as their class"


@pytest.mark.parametrize("digit", range(10))
def test_every_class_is_recognised(digit: int) -> None:
    engine = OnnxCpuEngine(VERSION.path, VERSION.metadata, EngineOptions())
    images = engine.run(feeds_for_seeds(VERSION.metadata, range(20), [digit] * 20))
    judge = DigitClassifier(load_digits_split(32)[0])
    assert judge.accuracy(torch.from_numpy(images), torch.full((20,), digit)) >= 0.7


@pytest.mark.slow
def test_bundled_model_meets_the_evaluation_bar(tmp_path_factory: pytest.TempPathFactory) -> None:
    """gan-eval's figures for the shipped model (docs/training.md), each against real data."""
    from ganserve.train.evaluation import evaluate_generator
    from ganserve.train.features import load_or_train

    train, heldout = load_digits_split(32)
    net, info = load_or_train(train, heldout, tmp_path_factory.mktemp("eval-cache"))
    generator = checkpoint.build_generator(checkpoint.load(VERSION.path / "checkpoint.pt"))
    result = evaluate_generator(generator, net, train, heldout, per_class=100)
    gen, real = result["generated"], result["real_vs_real"]
    assert info["classifier_heldout_accuracy"] >= 0.97
    assert gen["conditional_accuracy"] >= 0.97
    assert gen["worst_class_accuracy"] >= 0.93
    assert gen["coverage"] >= 0.9 * real["coverage"]
    assert gen["class_coverage"] == 1.0
    assert gen["memorisation_ratio"] > 0.8  # samples are not copies of training digits
