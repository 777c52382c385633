"""Network configs, the factory that builds G and D for every generator family, and DCGAN.

Families (``GeneratorConfig.architecture``), all optionally class-conditional, all trained by
the same loop and exported by the same ``export-gan``:

* "dcgan" (Radford et al. 2016): z (+ label embedding) -> 4x4 by a 4x4 transposed conv, then
  stride-2 4x4 transposed convs with BatchNorm + ReLU doubling the resolution, Tanh output.
  Discriminator: the mirror image with stride-2 convs and LeakyReLU(0.2), spectral norm on
  every layer (Miyato et al. 2018) and a projection head for the label (Miyato & Koyama 2018).
* "gan" (Goodfellow et al. 2014): fully-connected G and D, see `networks_gan`.
* "stylegan" (Karras et al. 2019, 2020): mapping network, modulated convolutions, noise
  inputs, see `networks_stylegan`; its discriminator is the DCGAN one.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ganserve.train import networks_gan, networks_stylegan


class Architecture(enum.Enum):
    """Generator family."""

    DCGAN = "dcgan"
    GAN = "gan"
    STYLEGAN = "stylegan"


ARCHITECTURES = tuple(a.value for a in Architecture)

# The sizes gan-train's options allow (--latent-dim, --width, ...), (lowest, highest) each, and
# so what a checkpoint's generator_config may hold: well beyond them a network needs more
# memory than a machine has (a latent_dim of 10**9 is a 10**9-wide first layer), so the
# checkpoint loader refuses such a config before anything is built.
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "latent_dim": (1, 4096),
    "width": (1, 1024),
    "embed_dim": (1, 4096),
    "fc_layers": (1, 16),
    "w_dim": (1, 4096),
    "mapping_layers": (1, 16),
}
IMAGE_SIZES = (8, 16, 32, 64, 128)  # gan-train's --image-size choices


def _check_common(image_size: int, channels: int, width: int, num_classes: int) -> None:
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")


def check_sizes(config: GeneratorConfig) -> None:
    """ValueError naming the first size of ``config`` that gan-train's options do not allow
    (`SIZE_RANGES`, `IMAGE_SIZES`): what a checkpoint holds is checked before it is built."""
    for field, (low, high) in SIZE_RANGES.items():
        value = getattr(config, field)
        if field == "embed_dim" and not config.num_classes:
            continue  # an unconditional generator has no label embedding to size
        if not low <= value <= high:
            raise ValueError(
                f"generator_config {field} {value} is out of range: gan-train's "
                f"--{field.replace('_', '-')} allows {low}..{high}"
            )
    if config.image_size not in IMAGE_SIZES:
        raise ValueError(
            f"generator_config image_size {config.image_size} is out of range: gan-train's "
            f"--image-size allows {', '.join(map(str, IMAGE_SIZES))}"
        )


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a table of fields, got {type(data).__name__}")
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {', '.join(unknown)}")
    for name, value in data.items():
        kind = {"int": int, "str": str, "float": float}.get(str(kinds[name]))
        if kind is not None and not (type(value) is kind or (kind is float and type(value) is int)):
            raise ValueError(f"{what} field {name} must be {kind.__name__}, got {value!r}")
    return cls(**data)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Architecture of a generator of any family.

    The architecture is stored as its string value, so a checkpoint stays plain data (and
    checkpoints written before families existed, which lack it, load as "dcgan").

    Args:
        architecture: Family: "dcgan", "gan" or "stylegan" (see `Architecture`).
        latent_dim: Length of z.
        num_classes: Class labels; 0 for an unconditional generator.
        image_size: Output height and width, a power of two >= 8.
        channels: 1 (grayscale) or 3 (RGB).
        width: dcgan and stylegan: feature maps at the output resolution's layer; each layer
            nearer 4x4 has twice as many. gan: units of the first hidden layer; each next
            one has twice as many.
        embed_dim: Length of the label embedding (conditional only).
        fc_layers: gan only: hidden fully-connected layers of G (and of D).
        w_dim: stylegan only: length of the intermediate latent w (the style).
        mapping_layers: stylegan only: fully-connected layers of the mapping network z -> w.
    """

    architecture: str = "dcgan"
    latent_dim: int = 64
    num_classes: int = 10
    image_size: int = 32
    channels: int = 1
    width: int = 32
    embed_dim: int = 32
    fc_layers: int = 3
    w_dim: int = 128
    mapping_layers: int = 4

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}"
            )
        _check_common(self.image_size, self.channels, self.width, self.num_classes)
        for field in ("latent_dim", "fc_layers", "w_dim", "mapping_layers"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.num_classes and self.embed_dim < 1:
            raise ValueError(
                f"embed_dim must be >= 1 for a conditional model, got {self.embed_dim}"
            )

    @property
    def family(self) -> Architecture:
        return Architecture(self.architecture)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        return _from_dict(cls, data, "generator config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """Architecture of a discriminator with spectral norm and a projection head.

    Args:
        architecture: "dcgan" (convolutional; also the stylegan family's) or "gan"
            (fully-connected on the flattened image).
        num_classes: Class labels; 0 for an unconditional discriminator.
        image_size: Input height and width, a power of two >= 8.
        channels: 1 or 3.
        width: dcgan: feature maps of the first layer; each stride-2 layer doubles them.
            gan: units of the last hidden layer; each layer nearer the image has twice as many.
        fc_layers: gan only: hidden fully-connected layers.
    """

    architecture: str = "dcgan"
    num_classes: int = 10
    image_size: int = 32
    channels: int = 1
    width: int = 32
    fc_layers: int = 3

    def __post_init__(self) -> None:
        if self.architecture not in (Architecture.DCGAN.value, Architecture.GAN.value):
            raise ValueError(
                f"discriminator architecture must be dcgan or gan, got {self.architecture!r}"
            )
        _check_common(self.image_size, self.channels, self.width, self.num_classes)
        if self.fc_layers < 1:
            raise ValueError(f"fc_layers must be >= 1, got {self.fc_layers}")

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
    """DCGAN: (z, label) -> image in [-1, 1], (N, C, H, W)."""

    # The exported model's extra inputs (`ganserve.serve.inputs`): none; psi scales z.
    truncation_mode = "z-scale"
    noise_dim = 0
    style_layers = 0

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

    def forward_feeds(self, feeds: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The exported model's computation, from its named inputs."""
        return self(feeds["z"], feeds.get("label"))


class Discriminator(nn.Module):
    """DCGAN: (image, label) -> (N,) realness logits."""

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


def create_generator(config: GeneratorConfig) -> nn.Module:
    """The generator of ``config.architecture``.

    Every family's generator has ``config``, ``forward(z, label)`` (training, evaluation),
    ``forward_feeds(feeds)`` (the exported model's computation from its named inputs) and the
    attributes ``truncation_mode``, ``noise_dim`` and ``style_layers`` that the model's
    metadata and inputs follow (`ganserve.serve.inputs`).
    """
    family = config.family
    if family is Architecture.GAN:
        return networks_gan.FCGenerator(config)
    if family is Architecture.STYLEGAN:
        return networks_stylegan.StyleGenerator(config)
    return Generator(config)


def create_discriminator(config: DiscriminatorConfig) -> nn.Module:
    """The discriminator of ``config.architecture``."""
    if config.architecture == Architecture.GAN.value:
        return networks_gan.FCDiscriminator(config)
    return Discriminator(config)


def discriminator_config_for(config: GeneratorConfig) -> DiscriminatorConfig:
    """The discriminator trained against ``config``'s generator: the fully-connected one for
    "gan", the DCGAN one (spectral norm, projection) for "dcgan" and "stylegan"."""
    gan = config.family is Architecture.GAN
    return DiscriminatorConfig(
        architecture=Architecture.GAN.value if gan else Architecture.DCGAN.value,
        num_classes=config.num_classes,
        image_size=config.image_size,
        channels=config.channels,
        width=config.width,
        fc_layers=config.fc_layers,
    )
