"""DCGAN-family generator and discriminator, optionally class-conditional.

Generator (Radford et al. 2016): z (+ label embedding) -> 4x4 by a 4x4 transposed conv, then
stride-2 4x4 transposed convs with BatchNorm + ReLU doubling the resolution, Tanh output.
Discriminator: the mirror image with stride-2 convs and LeakyReLU(0.2), spectral norm on every
layer (Miyato et al. 2018) and a projection head for the label (Miyato & Koyama 2018).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn


def _check_common(image_size: int, channels: int, width: int, num_classes: int) -> None:
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {', '.join(unknown)}")
    return cls(**data)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Architecture of a DCGAN generator.

    Args:
        latent_dim: Length of z.
        num_classes: Class labels; 0 for an unconditional generator.
        image_size: Output height and width, a power of two >= 8.
        channels: 1 (grayscale) or 3 (RGB).
        width: Feature maps of the last hidden layer; each layer nearer 4x4 has twice as many.
        embed_dim: Length of the label embedding concatenated to z (conditional only).
    """

    latent_dim: int = 64
    num_classes: int = 10
    image_size: int = 32
    channels: int = 1
    width: int = 32
    embed_dim: int = 32

    def __post_init__(self) -> None:
        _check_common(self.image_size, self.channels, self.width, self.num_classes)
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.num_classes and self.embed_dim < 1:
            raise ValueError(
                f"embed_dim must be >= 1 for a conditional model, got {self.embed_dim}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        return _from_dict(cls, data, "generator config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """Architecture of a DCGAN discriminator with spectral norm and a projection head.

    Args:
        num_classes: Class labels; 0 for an unconditional discriminator.
        image_size: Input height and width, a power of two >= 8.
        channels: 1 or 3.
        width: Feature maps of the first layer; each stride-2 layer doubles them.
    """

    num_classes: int = 10
    image_size: int = 32
    channels: int = 1
    width: int = 32

    def __post_init__(self) -> None:
        _check_common(self.image_size, self.channels, self.width, self.num_classes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscriminatorConfig:
        return _from_dict(cls, data, "discriminator config")


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02), BatchNorm gamma ~ N(1, 0.02), beta = 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """(z, label) -> image in [-1, 1], (N, C, H, W)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        n_up = int(math.log2(c.image_size)) - 2  # stride-2 layers after the 4x4 stem
        in_dim = c.latent_dim + (c.embed_dim if c.num_classes else 0)
        self.embed = nn.Embedding(c.num_classes, c.embed_dim) if c.num_classes else None
        features = c.width * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, features, 4, 1, 0, bias=False),  # 1x1 -> 4x4
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(features // 2),
                nn.ReLU(inplace=True),
            ]
            features //= 2
        layers += [nn.ConvTranspose2d(features, c.channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        # z: (N, latent_dim) float32; label: (N,) int64
        if self.embed is not None:
            if label is None:
                raise ValueError("this generator is conditional: pass label")
            z = torch.cat([z, self.embed(label)], dim=1)  # (N, latent_dim + embed_dim)
        return self.net(z[:, :, None, None])  # (N, C, H, W)


class Discriminator(nn.Module):
    """(image, label) -> (N,) realness logits."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        sn = nn.utils.parametrizations.spectral_norm
        n_down = int(math.log2(c.image_size)) - 2  # stride-2 layers down to 4x4
        layers: list[nn.Module] = []
        in_ch, features = c.channels, c.width
        for _ in range(n_down):
            layers += [sn(nn.Conv2d(in_ch, features, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            in_ch, features = features, features * 2
        self.body = nn.Sequential(*layers)
        self.head = sn(nn.Linear(in_ch * 16, 1))  # on the flattened 4x4 features
        self.embed = sn(nn.Embedding(c.num_classes, in_ch * 16)) if c.num_classes else None
        self.apply(init_weights)

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(image).flatten(1)  # (N, features * 16)
        out = self.head(h).squeeze(1)  # (N,)
        if self.embed is not None:
            out = out + (self.embed(label) * h).sum(dim=1)  # projection term <e(y), h>
        return out
