"""The original GAN (Goodfellow et al. 2014): fully-connected generator and discriminator.

Generator: [z ; label embedding] -> ``fc_layers`` hidden layers (ReLU, ``width`` units doubling
per layer) -> C*H*W -> Tanh, reshaped to the image. The paper's generator mixed rectifier and
sigmoid units; Tanh gives the [-1, 1] range every family shares.
Discriminator: the flattened image -> hidden layers mirroring G's (LeakyReLU(0.2) instead of
the paper's maxout, spectral norm on every layer as for the other families) -> one logit, plus
a projection term for the label (Miyato & Koyama 2018). No BatchNorm anywhere: a sample's
image never depends on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ganserve.train.networks import DiscriminatorConfig, GeneratorConfig


class FCGenerator(nn.Module):
    """(z, label) -> image in [-1, 1], (N, C, H, W), through fully-connected layers."""

    truncation_mode = "z-scale"
    noise_dim = 0
    style_layers = 0

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.num_classes, c.embed_dim) if c.num_classes else None
        in_dim = c.latent_dim + (c.embed_dim if c.num_classes else 0)
        layers: list[nn.Module] = []
        for i in range(c.fc_layers):
            units = c.width * 2**i
            layers += [nn.Linear(in_dim, units), nn.ReLU(inplace=True)]
            in_dim = units
        layers += [nn.Linear(in_dim, c.channels * c.image_size**2), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        # z: (N, latent_dim) float32; label: (N,) int64
        if self.embed is not None:
            if label is None:
                raise ValueError("this generator is conditional: pass label")
            z = torch.cat([z, self.embed(label)], dim=1)  # (N, latent_dim + embed_dim)
        c = self.config
        return self.net(z).reshape(-1, c.channels, c.image_size, c.image_size)  # (N, C, H, W)

    def forward_feeds(self, feeds: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The exported model's computation, from its named inputs."""
        return self(feeds["z"], feeds.get("label"))


class FCDiscriminator(nn.Module):
    """(image, label) -> (N,) realness logits, on the flattened image."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = c = config
        sn = nn.utils.parametrizations.spectral_norm
        in_dim = c.channels * c.image_size**2
        layers: list[nn.Module] = []
        for i in reversed(range(c.fc_layers)):
            units = c.width * 2**i
            layers += [sn(nn.Linear(in_dim, units)), nn.LeakyReLU(0.2, inplace=True)]
            in_dim = units
        self.body = nn.Sequential(*layers)
        self.head = sn(nn.Linear(in_dim, 1))
        self.embed = sn(nn.Embedding(c.num_classes, in_dim)) if c.num_classes else None

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(image.flatten(1))  # (N, width)
        out = self.head(h).squeeze(1)  # (N,)
        if self.embed is not None:
            out = out + (self.embed(label) * h).sum(dim=1)  # projection term <e(y), h>
        return out
