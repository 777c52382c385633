"""A model's inputs, built the one way train, export and serve all use.

Every exported generator takes ``z`` (N, latent_dim) float32, plus, as its metadata says:

* ``label`` (N,) int64 when it is class-conditional;
* ``truncation`` (N,) float32 when its truncation_mode is "w" (StyleGAN: psi applied to w
  inside the model); for "z-scale" models the server scales z by psi instead;
* ``noise`` (N, noise_dim) float32: per-layer noise, drawn from the same seed's stream right
  after z, so (model version, seed, class) still fixes the image;
* ``z_mix`` (N, latent_dim) float32 and ``mix_layer`` (N,) int64 when style_layers > 0: style
  mixing, where layers from mix_layer on take z_mix's style; mix_layer == style_layers (and
  z_mix == z) mixes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ganserve.serve import latent
from ganserve.serve.metadata import ModelMetadata


def input_names(m: ModelMetadata) -> list[str]:
    """The model's input names, in a fixed order."""
    names = ["z"]
    if m.conditional:
        names.append("label")
    if m.truncation_mode == "w":
        names.append("truncation")
    if m.noise_dim:
        names.append("noise")
    if m.style_layers:
        names += ["z_mix", "mix_layer"]
    return names


def input_specs(m: ModelMetadata) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each input's dtype and shape after the batch dimension, in `input_names` order."""
    specs = {
        "z": (np.float32, (m.latent_dim,)),
        "label": (np.int64, ()),
        "truncation": (np.float32, ()),
        "noise": (np.float32, (m.noise_dim,)),
        "z_mix": (np.float32, (m.latent_dim,)),
        "mix_layer": (np.int64, ()),
    }
    return {name: (np.dtype(specs[name][0]), specs[name][1]) for name in input_names(m)}


def seed_vector(m: ModelMetadata, seed: int) -> np.ndarray:
    """The (latent_dim + noise_dim,) float32 draw of ``seed``: z, then the noise."""
    return latent.seed_to_latent(seed, m.latent_dim + m.noise_dim)


def assemble(
    m: ModelMetadata,
    draws: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    truncation: np.ndarray | None = None,
    mix: np.ndarray | None = None,
    mix_layer: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Feeds from per-row seed draws (N, latent_dim + noise_dim).

    Args:
        labels: (N,) int64 class labels (conditional models).
        truncation: (N,) psi per row; None means 1 (no truncation).
        mix: (N, latent_dim) style-mixing latents; None means no mixing.
        mix_layer: (N,) crossover layer per row (with ``mix``).
    """
    n, d = len(draws), m.latent_dim
    z = np.ascontiguousarray(draws[:, :d], dtype=np.float32)
    psi = np.ones(n, np.float32) if truncation is None else truncation.astype(np.float32)
    feeds: dict[str, np.ndarray] = {}
    if m.truncation_mode == "w":
        feeds["truncation"] = psi
    else:
        z *= psi[:, None]  # z' = psi z: the z-space mean is 0
    feeds["z"] = z
    if m.conditional:
        if labels is None:
            raise ValueError(f"model {m.name!r} is conditional: labels are required")
        feeds["label"] = labels.astype(np.int64)
    if m.noise_dim:
        feeds["noise"] = np.ascontiguousarray(draws[:, d:], dtype=np.float32)
    if m.style_layers:
        if mix is None:
            feeds["z_mix"] = z
            feeds["mix_layer"] = np.full(n, m.style_layers, np.int64)
        else:
            feeds["z_mix"] = mix.astype(np.float32)
            feeds["mix_layer"] = mix_layer.astype(np.int64)
    return feeds


def feeds_for_seeds(
    m: ModelMetadata,
    seeds: Sequence[int],
    labels: Sequence[int] | None = None,
    *,
    truncation: float = 1.0,
    mix_seeds: Sequence[int] | None = None,
    mix_layer: int | None = None,
) -> dict[str, np.ndarray]:
    """Feeds for whole seeds, as the server builds them for Generate (export checks, tests)."""
    draws = np.stack([seed_vector(m, s) for s in seeds])
    mix = layer = None
    if mix_seeds is not None:
        mix = np.stack([latent.seed_to_latent(s, m.latent_dim) for s in mix_seeds])
        layer = np.full(len(seeds), m.style_layers if mix_layer is None else mix_layer)
    return assemble(
        m,
        draws,
        labels=None if labels is None else np.asarray(labels, np.int64),
        truncation=np.full(len(seeds), truncation, np.float32),
        mix=mix,
        mix_layer=layer,
    )


def zero_feeds(m: ModelMetadata, n: int) -> dict[str, np.ndarray]:
    """Feeds of batch size ``n`` for warm-up and shape checks."""
    return assemble(
        m,
        np.zeros((n, m.latent_dim + m.noise_dim), np.float32),
        labels=np.zeros(n, np.int64) if m.conditional else None,
    )
