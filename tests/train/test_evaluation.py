"""Offline evaluation: each metric on cases with known answers, the extractor cache, gan-eval."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ganserve.train.data import ImageDataset
from ganserve.train.eval_cli import main
from ganserve.train.evaluation import (
    class_metrics,
    frechet_distance,
    kernel_inception_distance,
    memorisation_ratio,
    prdc,
)
from ganserve.train.features import load_or_train

RNG = np.random.default_rng(0)
A = RNG.standard_normal((400, 8))
B = RNG.standard_normal((400, 8))


def test_frechet_distance_is_zero_for_equal_sets_and_the_squared_mean_shift() -> None:
    assert abs(frechet_distance(A, A)) < 1e-6
    assert frechet_distance(A, A + 3.0) == pytest.approx(8 * 9.0, rel=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_grows_apart() -> None:
    same, apart = kernel_inception_distance(A, B), kernel_inception_distance(A, A + 2.0)
    assert abs(same) < 0.1 * apart


def test_prdc_sees_identical_and_disjoint_sets() -> None:
    assert prdc(A, A) == {
        "precision": 1.0,
        "recall": 1.0,
        "density": pytest.approx(1.2, abs=0.3),
        "coverage": 1.0,
    }
    far = prdc(A, A + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_copies_of_training_data_have_a_memorisation_ratio_near_zero() -> None:
    train, heldout = A[:300], A[300:]
    assert memorisation_ratio(train, train[:50] + 1e-6, heldout) < 0.01
    assert memorisation_ratio(train, B[:100], heldout) > 0.5


def test_class_metrics_for_perfect_and_collapsed_generators() -> None:
    asked = np.repeat(np.arange(10), 20)
    perfect = class_metrics(asked, asked, 10, asked)
    assert perfect["conditional_accuracy"] == 1.0 and perfect["worst_class_accuracy"] == 1.0
    assert perfect["class_coverage"] == 1.0 and perfect["label_kl"] == pytest.approx(0.0)
    collapsed = class_metrics(np.zeros(200, dtype=int), asked, 10, asked)
    assert collapsed["class_coverage"] == 0.1
    assert collapsed["label_kl"] == pytest.approx(math.log(10))
    assert collapsed["worst_class_accuracy"] == 0.0


def tiny_dataset(n: int = 48) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 1, 8, 8, generator=g) * 0.2 - 1
    images[labels == 1, :, :4] += 1.5  # class 1: bright top half
    return ImageDataset("tiny", images.clamp(-1, 1), labels, ("dark", "top"))


def test_extractor_is_trained_once_then_loaded_from_the_cache(tmp_path: pathlib.Path) -> None:
    data = tiny_dataset()
    first, info = load_or_train(data, data, tmp_path)
    assert info["classifier_heldout_accuracy"] > 0.9
    (cached,) = tmp_path.glob("extractor-*.pt")
    second, info2 = load_or_train(data, data, tmp_path)
    assert info2 == info
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert cached.stat().st_size > 0


@pytest.mark.slow
def test_gan_eval_reports_each_metric_beside_the_baseline(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        main,
        [
            str(tiny_checkpoint),
            "--per-class",
            "20",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "frechet_distance" in result.output and "real vs real" in result.output
    figures = json.loads(out.read_text())
    for side in ("generated", "real_vs_real"):
        assert {
            "conditional_accuracy",
            "frechet_distance",
            "kid",
            "precision",
            "recall",
            "density",
            "coverage",
            "class_coverage",
            "label_kl",
            "memorisation_ratio",
        } <= set(figures[side])
    assert figures["real_vs_real"]["conditional_accuracy"] > 0.95  # the judge reads real digits
    assert figures["extractor"]["classifier_heldout_accuracy"] > 0.95


def test_gan_eval_refuses_a_non_checkpoint_in_one_line(tmp_path: pathlib.Path) -> None:
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(b"nope")
    result = CliRunner().invoke(main, [str(bogus)])
    assert result.exit_code == 1 and "not a loadable checkpoint" in result.output
