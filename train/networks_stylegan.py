"""A StyleGAN-style generator (Karras et al. 2019, 2020), small enough to train on a CPU.

Mapping: z (pixel-normalised) [; label embedding, pixel-normalised] -> ``mapping_layers``
fully-connected layers -> w, with a running mean of w per class (``w_avg``, an EMA updated in
training) for the truncation trick w' = w_avg + psi (w - w_avg).

Synthesis (StyleGAN2's skip architecture): a learned constant 4x4 input; one modulated 3x3
convolution at 4x4, then per resolution up to ``image_size``: bilinear 2x upsampling and two
modulated 3x3 convolutions. Each convolution is weight-demodulated, adds its own noise map
scaled by a learned per-channel strength, a bias and LeakyReLU(0.2) * sqrt(2). Each resolution's
toRGB (a modulated 1x1 convolution without demodulation) is added to the upsampled image so
far; Tanh keeps the result in [-1, 1].

Style layers: index 0 is the 4x4 convolution (and its toRGB); resolution b = 1, 2, ... has its
convolutions at 2b - 1 and 2b (toRGB shares 2b). Layer l takes w_mix's style when
l >= mix_layer (style mixing). Equalised learning rate (Karras et al. 2018) everywhere:
weights are stored N(0, 1) and scaled at run time by 1/sqrt(fan_in); the mapping network's
learning rate is multiplied by 0.01.

Modulated convolution. The paper folds the batch into the groups of one grouped convolution
with per-sample weights (`modulated_conv2d_grouped`). That cannot be exported to ONNX with a
dynamic batch (ONNX Conv's ``group`` is a static attribute) and is slower on a CPU, so the
network uses the equivalent per-sample form StyleGAN2 also ships (``fused_modconv=False``):
scale the input channels by the style, convolve with the shared weight, scale the output
channels by the demodulation coefficients (`modulated_conv2d`). Both are per-sample, and a
test checks they agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ganserve.train.networks import GeneratorConfig

MAPPING_LR_MUL = 0.01
W_AVG_BETA = 0.995  # EMA decay of the tracked mean of w
ACT_GAIN = math.sqrt(2.0)  # keeps the variance through LeakyReLU with equalised weights


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pixel norm: each row scaled to unit mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool
) -> torch.Tensor:
    """Per-sample modulated convolution, ``weight`` shared by the batch.

    x: (N, Cin, H, W); weight: (Cout, Cin, k, k), already scaled; styles: (N, Cin).
    Equals convolving sample n with weight * styles[n] (over Cin), demodulated to unit norm per
    output channel.
    """
    out = F.conv2d(x * styles[:, :, None, None], weight, padding=weight.shape[-1] // 2)
    if demodulate:
        # ||weight[o] * s||^2 = sum_i s_i^2 sum_k weight[o, i, k]^2
        wsq = weight.square().sum(dim=(2, 3))  # (Cout, Cin)
        dcoefs = (styles.square() @ wsq.t() + 1e-8).rsqrt()  # (N, Cout)
        out = out * dcoefs[:, :, None, None]
    return out  # (N, Cout, H, W)


def modulated_conv2d_grouped(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool
) -> torch.Tensor:
    """The paper's formulation, as a grouped convolution with the batch folded into the
    groups; the reference `modulated_conv2d` is checked against."""
    n, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    wts = weight[None] * styles[:, None, :, None, None]  # (N, Cout, Cin, k, k)
    if demodulate:
        wts = wts * (wts.square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt()[:, :, None, None, None]
    out = F.conv2d(
        x.reshape(1, n * cin, h, w), wts.reshape(n * cout, cin, k, k), padding=k // 2, groups=n
    )
    return out.reshape(n, cout, h, w)


class EqualLinear(nn.Module):
    """Fully-connected layer with an equalised learning rate."""

    def __init__(
        self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), bias_init / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)


class MappingNetwork(nn.Module):
    """(z, label) -> w, (N, w_dim)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        c = config
        self.embed = nn.Embedding(c.num_classes, c.embed_dim) if c.num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight)
        in_dim = c.latent_dim + (c.embed_dim if c.num_classes else 0)
        self.layers = nn.ModuleList()
        for _ in range(c.mapping_layers):
            self.layers.append(EqualLinear(in_dim, c.w_dim, lr_mul=MAPPING_LR_MUL))
            in_dim = c.w_dim

    def forward(self, z: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        x = normalize_2nd_moment(z)  # (N, latent_dim)
        if self.embed is not None:
            if label is None:
                raise ValueError("this generator is conditional: pass label")
            y = normalize_2nd_moment(self.embed(label))  # (N, embed_dim)
            x = torch.cat([x, y], dim=1)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2) * ACT_GAIN
        return x  # (N, w_dim)


class SynthesisLayer(nn.Module):
    """Modulated, demodulated 3x3 conv + per-channel-scaled noise + bias + LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # w -> per-channel style
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.weight_gain = 1 / math.sqrt(in_ch * 9)
        self.noise_strength = nn.Parameter(torch.zeros(out_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # x: (N, in_ch, r, r); w: (N, w_dim); noise: (N, 1, r, r)
        styles = self.affine(w)  # (N, in_ch)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=True)
        x = x + noise * self.noise_strength[None, :, None, None]
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * ACT_GAIN


class ToRGB(nn.Module):
    """Modulated 1x1 conv to the image channels, without demodulation."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_ch)
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # (N, in_ch)
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return x + self.bias[None, :, None, None]  # (N, C, r, r)


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class SynthesisNetwork(nn.Module):
    """(ws (N, style_layers, w_dim), noise (N, noise_dim) or None) -> image (N, C, H, W)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        c = config
        blocks = int(math.log2(c.image_size)) - 2  # resolutions after 4x4

        def channels(resolution: int) -> int:
            return c.width * (c.image_size // resolution)

        self.const = nn.Parameter(torch.randn(channels(4), 4, 4))
        self.layers = nn.ModuleList([SynthesisLayer(channels(4), channels(4), c.w_dim, 4)])
        self.to_rgb = nn.ModuleList([ToRGB(channels(4), c.channels, c.w_dim)])
        for b in range(1, blocks + 1):
            r = 4 * 2**b
            self.layers.append(SynthesisLayer(channels(r // 2), channels(r), c.w_dim, r))
            self.layers.append(SynthesisLayer(channels(r), channels(r), c.w_dim, r))
            self.to_rgb.append(ToRGB(channels(r), c.channels, c.w_dim))
        self.style_layers = len(self.layers)  # 1 + 2 * blocks
        # Noise maps in layer order, flattened and concatenated: [offset, offset + r * r).
        self.noise_slices: list[tuple[int, int]] = []
        offset = 0
        for layer in self.layers:
            self.noise_slices.append((offset, offset + layer.resolution**2))
            offset += layer.resolution**2
        self.noise_dim = offset

    def forward(self, ws: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)  # (N, C4, 4, 4)
        img = None
        for i, layer in enumerate(self.layers):
            r = layer.resolution
            if i % 2 == 1:  # the first convolution of a resolution: upsample into it
                x = _upsample(x)
            if noise is None:  # training: fresh noise every call
                n = torch.randn(x.shape[0], 1, r, r, device=x.device)
            else:
                start, stop = self.noise_slices[i]
                n = noise[:, start:stop].reshape(-1, 1, r, r)  # (N, 1, r, r)
            x = layer(x, ws[:, i], n)
            if i % 2 == 0:  # the resolution's last convolution: its toRGB, skip connection
                rgb = self.to_rgb[i // 2](x, ws[:, i])
                img = rgb if img is None else _upsample(img) + rgb
        return torch.tanh(img)


class StyleGenerator(nn.Module):
    """StyleGAN-style generator: (z, label, truncation, noise, z_mix, mix_layer) -> image."""

    truncation_mode = "w"

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)
        self.noise_dim = self.synthesis.noise_dim
        self.style_layers = self.synthesis.style_layers
        # Running mean of w, one row per class (row 0 when unconditional): psi = 0 draws each
        # class's average image rather than one image for every class.
        self.register_buffer("w_avg", torch.zeros(max(config.num_classes, 1), config.w_dim))

    def _center(self, label: torch.Tensor | None) -> torch.Tensor:
        return self.w_avg[label] if self.config.num_classes else self.w_avg[0]  # (N|1, w_dim)

    @torch.no_grad()
    def _track_w_avg(self, w: torch.Tensor, label: torch.Tensor | None) -> None:
        rows = (
            label
            if self.config.num_classes
            else torch.zeros(len(w), dtype=torch.long, device=w.device)
        )
        sums = torch.zeros_like(self.w_avg).index_add_(0, rows, w.float())  # (classes, w_dim)
        counts = torch.bincount(rows, minlength=len(self.w_avg)).to(w.dtype)  # (classes,)
        seen = counts > 0
        means = sums[seen] / counts[seen, None]
        self.w_avg[seen] = means.lerp(self.w_avg[seen], W_AVG_BETA)

    def _styles(
        self, z: torch.Tensor, label: torch.Tensor | None, truncation: torch.Tensor | None
    ) -> torch.Tensor:
        w = self.mapping(z, label)  # (N, w_dim)
        if truncation is not None:
            center = self._center(label)
            w = center + truncation[:, None] * (w - center)  # w' = w_avg + psi (w - w_avg)
        return w

    def forward(
        self,
        z: torch.Tensor,
        label: torch.Tensor | None = None,
        *,
        truncation: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        z_mix: torch.Tensor | None = None,
        mix_layer: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z, z_mix: (N, latent_dim); label, mix_layer: (N,) int64; truncation: (N,) psi;
        noise: (N, noise_dim), or None for fresh noise. Layers l >= mix_layer take z_mix's
        style. Returns (N, C, H, W) in [-1, 1]."""
        w = self._styles(z, label, truncation)
        if self.training:
            self._track_w_avg(w.detach(), label)
        ws = w[:, None, :].expand(-1, self.style_layers, -1)  # (N, L, w_dim)
        if z_mix is not None:
            if mix_layer is None:
                raise ValueError("z_mix needs mix_layer")
            w_mix = self._styles(z_mix, label, truncation)
            layer = torch.arange(self.style_layers, device=z.device)  # (L,)
            use_mix = layer[None, :] >= mix_layer[:, None]  # (N, L)
            ws = torch.where(use_mix[:, :, None], w_mix[:, None, :], ws)  # (N, L, w_dim)
        return self.synthesis(ws, noise)

    def forward_feeds(self, feeds: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The exported model's computation, from its named inputs."""
        return self(
            feeds["z"],
            feeds.get("label"),
            truncation=feeds.get("truncation"),
            noise=feeds.get("noise"),
            z_mix=feeds.get("z_mix"),
            mix_layer=feeds.get("mix_layer"),
        )
