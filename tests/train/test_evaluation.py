"""Offline evaluation: each metric on cases with known answers, the extractor cache, gan-eval."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ganserve.train import features
from ganserve.train.data import ImageDataset
from ganserve.train.eval_cli import main
from ganserve.train.evaluation import (
    class_metrics,
    frechet_distance,
    inception_fid,
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


@pytest.mark.timeout(30, method="thread")  # scipy's sqrtm once looped forever on NaN
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_frechet_distance_of_non_finite_features_is_nan_at_once(bad: float) -> None:
    spoilt = A.copy()
    spoilt[:, 3] = bad
    assert math.isnan(frechet_distance(A, spoilt))
    wide = np.random.default_rng(1).standard_normal((100, 128))
    assert math.isnan(frechet_distance(wide, np.full((100, 128), bad)))


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


def test_extractor_is_trained_once_then_loaded_from_the_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_dataset()
    first, info = load_or_train(data, data, tmp_path)
    assert info["classifier_heldout_accuracy"] > 0.9
    (cached,) = tmp_path.glob("extractor-*.pt")

    def no_training(*args, **kwargs) -> None:  # seeded training would give the same weights
        raise AssertionError("trained the extractor again instead of loading the cached one")

    monkeypatch.setattr(features, "_train", no_training)
    second, info2 = load_or_train(data, data, tmp_path)
    assert info2 == info
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert cached.stat().st_size > 0


@pytest.mark.parametrize("damage", ["truncated", "a folder"])
def test_unreadable_cached_extractor_is_a_miss_retrained_with_a_warning(
    damage: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny_dataset()
    first, info = load_or_train(data, data, tmp_path)
    (cached,) = tmp_path.glob("extractor-*.pt")
    if damage == "truncated":  # what a non-atomic write interrupted mid-way leaves
        cached.write_bytes(cached.read_bytes()[:1000])
    else:
        cached.unlink()
        cached.mkdir()
    with caplog.at_level(logging.WARNING, logger="ganserve.train.features"):
        second, info2 = load_or_train(data, data, tmp_path)
    assert "unreadable cached extractor" in caplog.text and "training it again" in caplog.text
    assert info2 == info
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if damage == "truncated":  # replaced by a whole entry
        assert load_or_train(data, data, tmp_path)[1] == info
    else:  # left alone (someone else's folder), and said so
        assert cached.is_dir() and "cannot cache the extractor at" in caplog.text
    assert not list(tmp_path.glob(".*partial")), "a temp file was left behind"


def test_extractor_cache_is_written_whole_or_not_at_all(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def save_half(obj: object, f: object) -> None:
        pathlib.Path(f).write_bytes(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features.torch, "save", save_half)
    _, info = load_or_train(tiny_dataset(), tiny_dataset(), tmp_path)
    assert info["classifier_heldout_accuracy"] > 0.9  # the evaluation goes on
    assert list(tmp_path.iterdir()) == []
    assert "cannot cache the extractor at" in caplog.text and "No space left" in caplog.text


class CountingInception:
    """Stands in for InceptionFeatures (whose weight file is not here): 4 features per image."""

    sha256 = "0" * 64

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        self.calls += 1
        flat = images.flatten(1).double().numpy()
        return flat[:, :4] + RNG.standard_normal((len(flat), 4))


def test_unreadable_cached_inception_statistics_are_computed_again(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, inception = tiny_dataset(), CountingInception()
    inception_fid(inception, data.images, data, data, tmp_path)
    (cached,) = tmp_path.glob("inception-*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    inception.calls = 0
    fid = inception_fid(inception, data.images, data, data, tmp_path)
    assert inception.calls == 3 and math.isfinite(fid["generated"])  # train, held-out, samples
    assert "unreadable cached statistics" in caplog.text


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
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    # The wording is checkpoint.load's: "not a checkpoint (...)" or "not a loadable checkpoint".
    assert re.search(r"^Error: .*x\.pt: not a (loadable )?checkpoint", result.output)
