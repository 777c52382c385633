"""Standard FID from a local Inception file: the 2015 graph's shape, both file kinds, clear
errors for the wrong file, and gan-eval's FID beside its real-vs-real baseline.

The real weights cannot be downloaded here, so the files are the right network with seeded
random weights: the tests check the plumbing and the architecture, not FID's values."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.datasets import load_digits
from torch import nn

from ganserve.train.data import ImageDataset
from ganserve.train.eval_cli import main
from ganserve.train.evaluation import (
    frechet_distance,
    frechet_from_stats,
    gaussian,
    inception_fid,
)
from ganserve.train.inception import FIDInception, InceptionError, InceptionFeatures


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """pytorch-fid's file layout: a state dict of FIDInception, here with seeded random weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(FIDInception().state_dict(), path)
    return path


def test_network_has_the_2015_graphs_parameter_count() -> None:
    # torchvision documents 27,161,264 for Inception v3 with its auxiliary head and 1000 logits;
    # FID's graph has no auxiliary head (3,326,696) and 1008 logits (+8 x 2049).
    assert sum(p.numel() for p in FIDInception().parameters()) == 27_161_264 - 3_326_696 + 16_392


def test_state_dict_file_gives_2048_features_and_grey_is_rgb_repeated(
    weights: pathlib.Path,
) -> None:
    inception = InceptionFeatures(weights)
    assert inception.kind == "state-dict" and len(inception.sha256) == 64
    grey = torch.rand(3, 1, 16, 16) * 2 - 1
    feats = inception(grey)
    assert feats.shape == (3, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    np.testing.assert_allclose(feats, inception(grey.expand(-1, 3, -1, -1)), rtol=1e-5)


def test_images_are_quantised_to_8_bits_as_a_png_holds_them(weights: pathlib.Path) -> None:
    inception = InceptionFeatures(weights)
    levels = torch.randint(1, 255, (2, 3, 16, 16)).float() / 127.5 - 1
    jitter = (torch.rand_like(levels) - 0.5) * 0.8 / 127.5  # under half an 8-bit level
    np.testing.assert_array_equal(inception(levels), inception(levels + jitter))
    assert not np.array_equal(inception(levels), inception(levels + 1 / 127.5))


def test_missing_misshapen_and_foreign_weights_are_named(
    weights: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    state = torch.load(weights, weights_only=True)
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"}, broken)
    with pytest.raises(InceptionError, match=r"1 missing weights \(Mixed_7c.branch_pool.conv"):
        InceptionFeatures(broken)
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048)}, broken)
    with pytest.raises(InceptionError, match=r"misshapen weights \(fc.weight \(1000, 2048\)"):
        InceptionFeatures(broken)
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1)}, broken)
    with pytest.raises(InceptionError, match=r"unexpected weights \(AuxLogits\.fc\.weight"):
        InceptionFeatures(broken)
    broken.write_bytes(b"not a weight file")
    with pytest.raises(InceptionError, match=r"not a readable weight file .*pt_inception"):
        InceptionFeatures(broken)
    with pytest.raises(InceptionError, match="no such file"):
        InceptionFeatures(tmp_path / "absent.pth")


class MeanColour(nn.Module):
    """NVIDIA's detector's calling convention (0..255 images, return_features=True), with a
    trivial body: each feature is a channel's mean."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if not return_features:
            return torch.zeros(x.shape[0], 1008)
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


def test_torchscript_file_is_called_with_0_255_images_for_features(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(MeanColour()).save(str(path))
    inception = InceptionFeatures(path)
    assert inception.kind == "torchscript"
    white_black = torch.stack([torch.ones(1, 8, 8), -torch.ones(1, 8, 8)])
    feats = inception(white_black)
    assert feats.shape == (2, 2048)
    assert (feats[0] == 255).all() and (feats[1] == 0).all()


def test_a_torchscript_module_of_another_shape_is_refused_by_name(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.pt"
    torch.jit.script(nn.Conv2d(3, 4, 1)).save(str(path))  # no return_features argument
    with pytest.raises(InceptionError, match="failed on a batch"):
        InceptionFeatures(path)(torch.zeros(1, 3, 8, 8))


def test_frechet_from_stats_is_the_frechet_distance() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 6)), rng.standard_normal((300, 6)) + 0.5
    assert frechet_from_stats(gaussian(a), gaussian(b)) == pytest.approx(frechet_distance(a, b))


@pytest.mark.slow
def test_gan_eval_reports_inception_fid_beside_the_baseline(
    tiny_checkpoint: pathlib.Path, weights: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # 60 digits keep the 299x299 Inception passes short: 48 train, 12 held out, 100 samples.
    digits = load_digits()
    images = np.kron(digits.images[:60], np.ones((4, 4))) * (255 / 16)
    data = tmp_path / "digits60.npz"
    np.savez(data, images=images.astype(np.uint8), labels=digits.target[:60])
    out = tmp_path / "eval.json"
    args = [str(tiny_checkpoint), "--data", str(data), "--per-class", "10", "--json", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--inception", str(weights)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "inception_fid" in result.output and "pytorch-fid" in result.output
    figures = json.loads(out.read_text())
    assert (
        figures["generated"]["inception_fid"] > 0 and figures["real_vs_real"]["inception_fid"] > 0
    )
    assert figures["extractor"]["inception_sha256"] == InceptionFeatures(weights).sha256[:16]
    assert len(list((tmp_path / "cache").glob("inception-*.npz"))) == 1


class CountingFeatures:
    """Stands in for InceptionFeatures to count the images it is asked to embed."""

    sha256 = "0" * 64

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        self.seen += len(images)
        return images.flatten(1).double().numpy()


def test_real_statistics_are_cached_by_data_and_weight_file(tmp_path: pathlib.Path) -> None:
    g = torch.Generator().manual_seed(0)
    train = ImageDataset("a", torch.rand(40, 1, 4, 4, generator=g), torch.zeros(40), ())
    heldout = ImageDataset("b", torch.rand(10, 1, 4, 4, generator=g), torch.zeros(10), ())
    samples = torch.rand(8, 1, 4, 4, generator=g)
    counter = CountingFeatures()
    first = inception_fid(counter, samples, train, heldout, tmp_path)
    assert counter.seen == 40 + 10 + 8
    again = inception_fid(counter, samples, train, heldout, tmp_path)
    assert counter.seen == 58 + 8 and again == pytest.approx(first)
    counter.sha256 = "1" * 64  # another weight file: its own statistics
    inception_fid(counter, samples, train, heldout, tmp_path)
    assert counter.seen == 66 + 58 and len(list(tmp_path.glob("inception-*.npz"))) == 2


def test_gan_eval_names_a_wrong_inception_file(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    bogus = tmp_path / "inception.pth"
    bogus.write_bytes(b"nope")
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "--inception", str(bogus)])
    assert result.exit_code == 1 and "not a readable weight file" in result.output
