"""The DCGAN family: shapes for each config, validation of configs, losses, data split."""

from __future__ import annotations

import pytest
import torch

from ganserve.train.data import load_digits_split
from ganserve.train.losses import Loss, discriminator_loss, generator_loss
from ganserve.train.networks import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
)


@pytest.mark.parametrize(
    ("size", "channels", "classes"), [(8, 1, 10), (32, 1, 10), (32, 1, 0), (64, 3, 0), (64, 3, 5)]
)
def test_generator_and_discriminator_shapes(size: int, channels: int, classes: int) -> None:
    g = Generator(
        GeneratorConfig(
            image_size=size, channels=channels, num_classes=classes, width=8, latent_dim=16
        )
    )
    d = Discriminator(
        DiscriminatorConfig(image_size=size, channels=channels, num_classes=classes, width=8)
    )
    labels = torch.tensor([0, 1, 2]) % max(classes, 1) if classes else None
    images = g(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, size, size)
    assert d(images, labels).shape == (3,)


def test_dcgan_64_generator_doubles_width_towards_4x4() -> None:
    g = Generator(
        GeneratorConfig(image_size=64, channels=3, num_classes=0, width=64, latent_dim=100)
    )
    convs = [m for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [512, 256, 128, 64, 3]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("image_size", 30, "power of two"),
        ("channels", 2, "channels must be 1 or 3"),
        ("latent_dim", 0, "latent_dim must be >= 1"),
        ("width", 0, "width must be >= 1"),
    ],
)
def test_generator_config_names_bad_field(field: str, value: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**{field: value})


def test_conditional_generator_requires_label() -> None:
    with pytest.raises(ValueError, match="pass label"):
        Generator(GeneratorConfig(width=4))(torch.randn(1, 64))


@pytest.mark.parametrize("loss", list(Loss))
def test_losses_reward_the_right_side(loss: Loss) -> None:
    confident = discriminator_loss(loss, torch.full((4,), 5.0), torch.full((4,), -5.0))
    fooled = discriminator_loss(loss, torch.full((4,), -5.0), torch.full((4,), 5.0))
    assert confident < fooled
    fooling, caught = torch.full((4,), 5.0), torch.full((4,), -5.0)
    assert generator_loss(loss, fooling) < generator_loss(loss, caught)


def test_digits_split_is_fixed_stratified_and_scaled() -> None:
    train, heldout = load_digits_split(32)
    assert (len(train), len(heldout)) == (1437, 360)
    assert train.images.shape == (1437, 1, 32, 32)
    assert train.images.min() >= -1 and train.images.max() <= 1
    counts = torch.bincount(heldout.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    assert train.fingerprint() == load_digits_split(32)[0].fingerprint()
