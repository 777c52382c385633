"""Seeds -> images exactly as the server makes them, for every generator family.

The server builds a model's inputs with `ganserve.serve.inputs` (z, then a stylegan's noise,
from the seed's stream; truncation and style mixing as its metadata says). Here the same
feeds go through the PyTorch generator, so sample grids, evaluation and export verification
see what a client would get.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ganserve.serve import inputs
from ganserve.serve.latent import LATENT_SCHEME
from ganserve.serve.metadata import ModelMetadata

CHUNK = 256


def model_metadata(generator: nn.Module, **fields: Any) -> ModelMetadata:
    """The metadata a model exported from ``generator`` has: its input signature (family,
    truncation mode, noise_dim, style_layers) and shape; ``fields`` fill in or override the
    rest (name, version, provenance)."""
    cfg = generator.config
    classes = tuple(str(i) for i in range(cfg.num_classes))
    return ModelMetadata(
        **{
            "name": "checkpoint",
            "version": "0",
            "latent_dim": cfg.latent_dim,
            "num_classes": cfg.num_classes,
            "class_names": classes,
            "height": cfg.image_size,
            "width": cfg.image_size,
            "channels": cfg.channels,
            "latent_scheme": LATENT_SCHEME,
            "architecture": cfg.architecture,
            "truncation_mode": generator.truncation_mode,
            "noise_dim": generator.noise_dim,
            "style_layers": generator.style_layers,
            **fields,
        }
    )


@torch.no_grad()
def run_feeds(generator: nn.Module, feeds: dict[str, np.ndarray]) -> torch.Tensor:
    """The generator on a model's feeds (input name -> (N, ...) array): (N, C, H, W) on the
    CPU, wherever the generator runs."""
    device = next(generator.parameters()).device
    out = generator.forward_feeds({k: torch.from_numpy(v).to(device) for k, v in feeds.items()})
    return out.cpu()


def grid_seeds(
    num_classes: int, per_class: int, first_seed: int = 0
) -> tuple[list[int], np.ndarray | None]:
    """Seeds first_seed.. for every class: (seeds, (N,) int64 labels, or None if
    unconditional), class-major."""
    seeds = list(range(first_seed, first_seed + per_class)) * max(num_classes, 1)
    labels = np.repeat(np.arange(num_classes), per_class) if num_classes else None
    return seeds, labels


@torch.no_grad()
def generate(
    generator: nn.Module,
    seeds: Sequence[int],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    truncation: float = 1.0,
) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] for ``seeds`` (and ``labels``), as served."""
    m = model_metadata(generator)
    out = []
    for i in range(0, len(seeds), CHUNK):
        feeds = inputs.feeds_for_seeds(
            m,
            list(seeds[i : i + CHUNK]),
            None if labels is None else labels[i : i + CHUNK],
            truncation=truncation,
        )
        out.append(run_feeds(generator, feeds))
    return torch.cat(out)
