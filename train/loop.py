"""The training loop: alternate D and G steps, keep an EMA generator, evaluate, checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pathlib
import time
from typing import Any

import torch

from ganserve.train import checkpoint
from ganserve.train.data import ImageDataset
from ganserve.train.losses import Loss, discriminator_loss, generator_loss
from ganserve.train.metrics import DigitClassifier, evaluate
from ganserve.train.networks import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
)

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run.

    Args:
        steps: Generator updates (one discriminator update each).
        batch_size: Real images per step (and as many fakes).
        lr_g, lr_d: Adam learning rates.
        beta1, beta2: Adam betas (DCGAN: 0.5, 0.999).
        loss: Adversarial objective.
        ema_decay: Decay of the generator's exponential moving average (the exported weights).
        seed: Seeds torch for weights, batches and latents.
        log_every: Steps between loss records (and log lines).
        eval_per_class: Generated samples per class in the final evaluation; 0 skips it.
    """

    steps: int = 3000
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: Loss = Loss.NONSATURATING
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 100
    eval_per_class: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "loss": self.loss.value}


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)  # BatchNorm statistics follow the live generator


def train(
    gen_config: GeneratorConfig,
    train_config: TrainConfig,
    data: ImageDataset,
    heldout: ImageDataset,
    out: pathlib.Path,
) -> dict[str, Any]:
    """Train, evaluate, write the checkpoint to ``out``; return the checkpoint dict."""
    cfg = train_config
    if gen_config.num_classes not in (0, len(data.class_names)):
        raise ValueError(
            f"--num-classes {gen_config.num_classes} does not match the data "
            f"({len(data.class_names)} classes)"
        )
    torch.manual_seed(cfg.seed)
    disc_config = DiscriminatorConfig(
        num_classes=gen_config.num_classes,
        image_size=gen_config.image_size,
        channels=gen_config.channels,
        width=gen_config.width,
    )
    G, D = Generator(gen_config), Discriminator(disc_config)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    conditional = gen_config.num_classes > 0
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    started = time.monotonic()

    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(data), (cfg.batch_size,), generator=batch_gen)
        real, real_y = data.images[idx], data.labels[idx]  # (B, C, H, W), (B,)
        z = torch.randn(cfg.batch_size, gen_config.latent_dim, generator=batch_gen)
        fake_y = torch.randint(
            max(gen_config.num_classes, 1), (cfg.batch_size,), generator=batch_gen
        )
        real_y = real_y if conditional else None
        fake_y = fake_y if conditional else None

        # Discriminator step: fakes detached so G gets no gradient here.
        fake = G(z, fake_y)
        d_loss = discriminator_loss(cfg.loss, D(real, real_y), D(fake.detach(), fake_y))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        # Generator step on the same fakes.
        g_loss = generator_loss(cfg.loss, D(fake, fake_y))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        update_ema(G_ema, G, cfg.ema_decay)

        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {
                "step": step,
                "d_loss": d_loss.item(),
                "g_loss": g_loss.item(),
                "seconds": round(time.monotonic() - started, 2),
            }
            history.append(record)
            LOGGER.info(
                "step %d/%d  d_loss %.4f  g_loss %.4f  (%.1fs)",
                step,
                cfg.steps,
                record["d_loss"],
                record["g_loss"],
                record["seconds"],
            )

    metrics: dict[str, float] = {"train_seconds": round(time.monotonic() - started, 2)}
    if cfg.eval_per_class and conditional:
        metrics.update(
            evaluate(G_ema, DigitClassifier(data), heldout, per_class=cfg.eval_per_class)
        )
        LOGGER.info("evaluation: %s", metrics)

    payload = {
        "generator_config": dataclasses.asdict(gen_config),
        "discriminator_config": dataclasses.asdict(disc_config),
        "training_config": cfg.to_dict(),
        "dataset": {
            "name": data.name,
            "fingerprint": data.fingerprint(),
            "size": len(data),
            "class_names": list(data.class_names),
        },
        "step": cfg.steps,
        "metrics": metrics,
        "history": history,
        "generator": G.state_dict(),
        "generator_ema": G_ema.state_dict(),
        "discriminator": D.state_dict(),
        "optimizer_g": opt_g.state_dict(),
        "optimizer_d": opt_d.state_dict(),
        "torch_version": str(torch.__version__),
    }
    checkpoint.save(payload, out)
    LOGGER.info("wrote %s", out)
    return payload
