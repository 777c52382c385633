"""What one training run does: `TrainConfig`, and the device it runs on."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch

from ganserve.train.augment import parse_policy
from ganserve.train.losses import Loss

PRECISIONS = ("fp32", "bf16")


def check_device(device: str) -> None:
    """ValueError unless ``device`` is auto, cpu, cuda or cuda:N."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (
        index and (kind != "cuda" or not (index.isascii() and index.isdigit()))
    ):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run.

    Args:
        steps: Generator updates.
        batch_size: Real images per discriminator step (and as many fakes).
        lr_g, lr_d: Adam learning rates.
        beta1, beta2: Adam betas (DCGAN: 0.5, 0.999; WGAN-GP: 0.0, 0.9).
        loss: Adversarial objective.
        n_critic: Discriminator steps per generator step (WGAN-GP uses 5).
        gp_weight: Gradient-penalty weight (WGAN-GP only).
        r1_gamma: R1 penalty weight on real images; 0 disables it.
        label_smoothing: One-sided: real targets become 1 - smoothing (non-saturating, LS).
        diffaugment: Comma-separated DiffAugment policy ("translation,cutout[,color]"); empty
            disables it.
        ema_decay: Decay of the generator's exponential moving average (the exported weights).
        style_mixing: stylegan only: probability that a generated sample takes a second
            latent's style from a random layer on (mixing regularisation, Karras et al. 2019).
        seed: Seeds torch for weights, batches and latents.
        log_every: Steps between log records.
        sample_every: Steps between sample grids and loss curves (run folder only).
        checkpoint_every: Steps between evaluated checkpoints (run folder only).
        keep_last: Checkpoints kept in the run folder, besides best.pt.
        eval_per_class: Generated samples per class for evaluation; 0 skips it.
        device: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N".
            Random draws stay on the CPU, so a seed gives the same batches on any device.
        precision: "fp32", or "bf16": G and D forward passes under bfloat16 autocast (weights,
            optimiser state, EMA and penalties stay fp32; no loss scaling is needed).
    """

    steps: int = 3000
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: Loss = Loss.NONSATURATING
    n_critic: int = 1
    gp_weight: float = 10.0
    r1_gamma: float = 0.0
    label_smoothing: float = 0.0
    diffaugment: str = ""
    ema_decay: float = 0.999
    style_mixing: float = 0.0
    seed: int = 0
    log_every: int = 100
    sample_every: int = 500
    checkpoint_every: int = 1000
    keep_last: int = 3
    eval_per_class: int = 100
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "n_critic",
            "log_every",
            "sample_every",
            "checkpoint_every",
            "keep_last",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_g", "lr_d"):
            rate = getattr(self, name)
            if not (math.isfinite(rate) and rate > 0.0):
                raise ValueError(f"{name} must be a finite number > 0, got {rate}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.style_mixing <= 1.0:
            raise ValueError(f"style_mixing must be in [0, 1], got {self.style_mixing}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.gp_weight < 0 or self.r1_gamma < 0:
            raise ValueError("gp_weight and r1_gamma must be >= 0")
        parse_policy(self.diffaugment, channels=3)  # names an unknown policy early
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "loss": self.loss.value}


def resolve_device(name: str, rank: int = 0) -> torch.device:
    """The torch device for a TrainConfig.device; under torchrun each process takes the GPU
    of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name}: torch sees no CUDA GPU; use --device cpu")
        if name == "cuda":
            local = int(os.environ.get("LOCAL_RANK", rank))
            return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device(name)
