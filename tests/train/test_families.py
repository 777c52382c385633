"""Generator families: each builds from its config, trains in the one loop, round-trips through
a checkpoint; the stylegan's pieces do what the papers say."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from conftest import BUNDLED_REPOSITORY
from ganserve.serve import inputs
from ganserve.train import checkpoint, sampling
from ganserve.train.data import load_digits_split
from ganserve.train.loop import TrainConfig, train
from ganserve.train.networks import (
    Architecture,
    Discriminator,
    Generator,
    GeneratorConfig,
    create_discriminator,
    create_generator,
    discriminator_config_for,
)
from ganserve.train.networks_gan import FCDiscriminator, FCGenerator
from ganserve.train.networks_stylegan import (
    StyleGenerator,
    modulated_conv2d,
    modulated_conv2d_grouped,
)

TINY = {
    "dcgan": GeneratorConfig(width=8, latent_dim=16, embed_dim=8),
    "gan": GeneratorConfig(architecture="gan", width=16, fc_layers=2, latent_dim=16, embed_dim=8),
    "stylegan": GeneratorConfig(
        architecture="stylegan", width=4, latent_dim=16, embed_dim=8, w_dim=16, mapping_layers=2
    ),
}


def tiny_run(tmp: pathlib.Path, arch: str, steps: int, **options: object) -> dict:
    data, heldout = load_digits_split(32)
    config = TrainConfig(steps=steps, batch_size=8, log_every=5, eval_per_class=0, **options)
    return train(TINY[arch], config, data, heldout, tmp / f"{arch}.pt")


@pytest.mark.parametrize(
    ("arch", "g_type", "d_type"),
    [
        ("dcgan", Generator, Discriminator),
        ("gan", FCGenerator, FCDiscriminator),
        ("stylegan", StyleGenerator, Discriminator),
    ],
)
@pytest.mark.parametrize(("size", "channels", "classes"), [(32, 1, 10), (64, 3, 0)])
def test_factory_builds_each_family_with_image_shaped_output(
    arch: str, g_type: type, d_type: type, size: int, channels: int, classes: int
) -> None:
    config = GeneratorConfig(
        **{**TINY[arch].to_dict(), "image_size": size, "channels": channels, "num_classes": classes}
    )
    g, d = create_generator(config), create_discriminator(discriminator_config_for(config))
    assert isinstance(g, g_type) and isinstance(d, d_type)
    labels = torch.tensor([0, 1, 2]) if classes else None
    images = g(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, size, size) and images.abs().max() <= 1
    assert d(images, labels).shape == (3,)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("architecture", "biggan", "architecture must be one of dcgan, gan, stylegan"),
        ("fc_layers", 0, "fc_layers must be >= 1"),
        ("w_dim", 0, "w_dim must be >= 1"),
        ("mapping_layers", 0, "mapping_layers must be >= 1"),
    ],
)
def test_family_config_names_bad_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**{field: value})


def test_checkpoints_from_before_families_load_as_dcgan() -> None:
    ckpt = checkpoint.load(BUNDLED_REPOSITORY / "digits" / "2" / "checkpoint.pt")
    assert "architecture" not in ckpt["generator_config"]
    generator = checkpoint.build_generator(ckpt)
    assert type(generator) is Generator and generator.config.family is Architecture.DCGAN


@pytest.mark.parametrize(("size", "noise_dim", "style_layers"), [(32, 2704, 7), (64, 10896, 9)])
def test_stylegan_signature_counts_noise_maps_and_style_layers(
    size: int, noise_dim: int, style_layers: int
) -> None:
    g = create_generator(GeneratorConfig(**{**TINY["stylegan"].to_dict(), "image_size": size}))
    # 4x4 once, then two convolutions per resolution: 16 + 2 * (64 + 256 + 1024 [+ 4096]).
    assert (g.noise_dim, g.style_layers, g.truncation_mode) == (noise_dim, style_layers, "w")


def test_modulated_convolution_equals_the_grouped_formulation() -> None:
    torch.manual_seed(0)
    x, weight, styles = torch.randn(5, 6, 8, 8), torch.randn(4, 6, 3, 3), torch.randn(5, 6)
    for demodulate in (True, False):
        a = modulated_conv2d(x, weight, styles, demodulate=demodulate)
        b = modulated_conv2d_grouped(x, weight, styles, demodulate=demodulate)
        assert torch.allclose(a, b, atol=1e-5), demodulate
    # Demodulated outputs have unit-norm effective weights: scaling a style changes nothing.
    scaled = modulated_conv2d(x, weight, styles * 3.0, demodulate=True)
    assert torch.allclose(scaled, modulated_conv2d(x, weight, styles, demodulate=True), atol=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "gan", "stylegan"])
def test_each_family_trains_and_round_trips_through_its_checkpoint(
    tmp_path: pathlib.Path, arch: str
) -> None:
    ckpt = tiny_run(tmp_path, arch, 6, **({"style_mixing": 0.5} if arch == "stylegan" else {}))
    assert ckpt["generator_config"]["architecture"] == arch
    loaded = checkpoint.load(tmp_path / f"{arch}.pt")
    rebuilt = checkpoint.build_generator(loaded)
    assert rebuilt.config == TINY[arch] and not rebuilt.training
    # The same feeds give the same image as the EMA weights the loop kept.
    ema = create_generator(TINY[arch]).eval()
    ema.load_state_dict(ckpt["generator_ema"])
    m = sampling.model_metadata(rebuilt)
    feeds = inputs.feeds_for_seeds(m, [1, 2, 3], [0, 4, 9])
    assert torch.equal(sampling.run_feeds(rebuilt, feeds), sampling.run_feeds(ema, feeds))


def test_stylegan_tracks_a_running_mean_of_w_per_class(tmp_path: pathlib.Path) -> None:
    ckpt = tiny_run(tmp_path, "stylegan", 5)
    w_avg = ckpt["generator_ema"]["w_avg"]
    assert w_avg.shape == (10, 16)
    assert (w_avg.abs().sum(dim=1) > 0).all(), "a class's mean never moved"
    assert not torch.allclose(w_avg[0], w_avg[1])
    assert torch.equal(w_avg, ckpt["generator"]["w_avg"])  # the EMA generator copies buffers


def test_stylegan_resume_continues_exactly(tmp_path: pathlib.Path) -> None:
    """Noise draws and style mixing come from the saved random streams too."""
    options = {"style_mixing": 0.9, "diffaugment": "translation"}
    straight = tiny_run(tmp_path / "a", "stylegan", 6, **options)
    tiny_run(tmp_path / "b", "stylegan", 3, **options)
    data, heldout = load_digits_split(32)
    config = TrainConfig(steps=6, batch_size=8, log_every=5, eval_per_class=0, **options)
    resumed = train(
        TINY["stylegan"],
        config,
        data,
        heldout,
        tmp_path / "b" / "stylegan.pt",
        resume=tmp_path / "b" / "stylegan.pt",
    )
    for name, tensor in straight["generator"].items():
        assert torch.equal(tensor, resumed["generator"][name]), name


@pytest.mark.parametrize("arch", ["dcgan", "gan"])
def test_style_mixing_is_refused_for_families_without_styles(
    tmp_path: pathlib.Path, arch: str
) -> None:
    with pytest.raises(ValueError, match=f"--style-mixing is for --arch stylegan, not {arch}"):
        tiny_run(tmp_path, arch, 1, style_mixing=0.5)


def test_stylegan_images_do_not_depend_on_the_rest_of_the_batch() -> None:
    torch.manual_seed(0)
    g = create_generator(TINY["stylegan"]).eval()
    m = sampling.model_metadata(g)
    feeds = inputs.feeds_for_seeds(m, [5, 6, 7, 8], [1, 2, 3, 4], truncation=0.6)
    batched = sampling.run_feeds(g, feeds)
    for i in range(4):
        alone = sampling.run_feeds(g, {k: v[i : i + 1] for k, v in feeds.items()})
        # Float32 rounding, not the batch: PyTorch's CPU kernels may take another path for
        # batch 1 than for 4 (up to 1.7e-6 apart on an AVX-512 machine). A batch that leaked
        # into an image (batch statistics, a mixed-up row) moves it by orders more.
        assert torch.allclose(alone[0], batched[i], rtol=0, atol=1e-5)


def test_stylegan_without_noise_draws_fresh_noise() -> None:
    torch.manual_seed(0)
    g = create_generator(TINY["stylegan"]).eval()
    with torch.no_grad():
        for layer in g.synthesis.layers:
            layer.noise_strength.fill_(1.0)
        z, y = torch.randn(2, 16), torch.tensor([3, 3])
        assert not torch.equal(g(z, y), g(z, y))
        zeros = torch.zeros(2, g.noise_dim)
        assert torch.equal(g(z, y, noise=zeros), g(z, y, noise=zeros))


def test_sample_grids_use_the_serving_seed_stream() -> None:
    """Seed s of class c is the image the server returns for (s, c): noise included."""
    torch.manual_seed(0)
    g = create_generator(TINY["stylegan"]).eval()
    seeds, labels = sampling.grid_seeds(10, 3)
    assert seeds[:4] == [0, 1, 2, 0] and labels.tolist()[:4] == [0, 0, 0, 1]
    images = sampling.generate(g, seeds, labels)
    m = sampling.model_metadata(g)
    one = sampling.run_feeds(g, inputs.feeds_for_seeds(m, [2], [0]))
    assert torch.allclose(images[2], one[0], atol=1e-6)  # PyTorch's conv may vary by batch
    assert np.array_equal(
        inputs.feeds_for_seeds(m, [2], [0])["noise"][0],
        inputs.seed_vector(m, 2)[m.latent_dim :],
    )


def test_gan_train_cli_picks_the_family_and_its_fields(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from ganserve.train.cli import main

    out = tmp_path / "style.pt"
    args = ["--out", str(out), "--steps", "2", "--batch-size", "4", "--eval-per-class", "0"]
    family = ["--arch", "stylegan", "--width", "4", "--latent-dim", "8", "--w-dim", "8"]
    family += ["--mapping-layers", "1", "--embed-dim", "4", "--style-mixing", "0.5"]
    result = CliRunner().invoke(main, args + family)
    assert result.exit_code == 0, result.output
    saved = checkpoint.load(out)
    config = saved["generator_config"]
    assert (config["architecture"], config["w_dim"], config["mapping_layers"]) == ("stylegan", 8, 1)
    assert saved["training_config"]["style_mixing"] == 0.5


def test_gan_train_cli_refuses_style_mixing_without_styles(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from ganserve.train.cli import main

    args = ["--out", str(tmp_path / "x.pt"), "--steps", "1", "--style-mixing", "0.5"]
    result = CliRunner().invoke(main, [*args, "--arch", "gan"])
    assert result.exit_code == 2  # a usage error, before any data is loaded
    assert "--style-mixing is for --arch stylegan, not --arch gan; drop --style-mixing" in (
        result.output
    )
