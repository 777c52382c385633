"""Seed -> latent vector: a frozen part of the contract, shared by train, export and serve.

Scheme ``mt19937-randn-v1``:

* seed < 2**32: ``numpy.random.RandomState(seed).randn(latent_dim)`` cast to float32, which
  is StyleGAN's convention (``gen_images.py``). NumPy's legacy ``RandomState`` stream is
  frozen across NumPy versions, so the mapping is stable.
* 2**32 <= seed < 2**64: the 64-bit seed is split into two 32-bit words, low word first, and
  the generator is seeded from that array: ``RandomState([seed & 0xFFFFFFFF, seed >> 32])``
  (MT19937's ``init_by_array``), then ``randn(latent_dim)`` as above.

Any change to this mapping is a new scheme name, recorded in every model's metadata.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

LATENT_SCHEME = "mt19937-randn-v1"
MAX_SEED = 2**64 - 1
_WORD = 2**32
# Constructing a RandomState costs ~125 us; re-seeding one costs 3-12 us and yields the same
# stream. RandomState is not thread-safe, so each thread keeps its own.
_LOCAL = threading.local()


def _generator() -> np.random.RandomState:
    rng = getattr(_LOCAL, "rng", None)
    if rng is None:
        rng = _LOCAL.rng = np.random.RandomState()
    return rng


def seed_to_latent(seed: int, latent_dim: int) -> np.ndarray:
    """Return the (latent_dim,) float32 latent vector for ``seed`` (0 <= seed < 2**64)."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} is out of range: seeds are unsigned 64-bit, 0..{MAX_SEED}")
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    rng = _generator()
    if seed < _WORD:
        rng.seed(seed)
    else:
        rng.seed(np.array([seed % _WORD, seed // _WORD], dtype=np.uint32))
    return rng.randn(latent_dim).astype(np.float32)


def seeds_to_latents(seeds: Sequence[int], latent_dim: int) -> np.ndarray:
    """Return the (len(seeds), latent_dim) float32 latents, row i for seeds[i]."""
    out = np.empty((len(seeds), latent_dim), dtype=np.float32)
    for i, seed in enumerate(seeds):
        out[i] = seed_to_latent(seed, latent_dim)
    return out
