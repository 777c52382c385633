"""Adversarial losses and regularisers, selected by one option.

Logits are the discriminator's raw outputs, (N,). Conventions follow the papers:
non-saturating (Goodfellow et al. 2014), hinge (Lim & Ye 2017), WGAN-GP (Gulrajani et al.
2017), least-squares (Mao et al. 2017), R1 (Mescheder et al. 2018).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch
import torch.nn.functional as F


class Loss(enum.Enum):
    """Adversarial objective."""

    NONSATURATING = "nonsaturating"
    HINGE = "hinge"
    WGAN_GP = "wgan-gp"
    LEAST_SQUARES = "least-squares"


def discriminator_loss(
    loss: Loss,
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """D's loss. ``label_smoothing`` (one-sided, Salimans et al. 2016) lowers the real target
    from 1 to 1 - smoothing for the losses that have targets."""
    if loss is Loss.NONSATURATING:
        real_target = torch.full_like(real_logits, 1.0 - label_smoothing)
        return (
            F.binary_cross_entropy_with_logits(real_logits, real_target)
            + F.softplus(fake_logits).mean()
        )
    if loss is Loss.HINGE:
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if loss is Loss.WGAN_GP:
        return fake_logits.mean() - real_logits.mean()  # + gradient_penalty, added by the loop
    if loss is Loss.LEAST_SQUARES:
        return (
            0.5 * ((real_logits - (1.0 - label_smoothing)) ** 2).mean()
            + 0.5 * (fake_logits**2).mean()
        )
    raise ValueError(f"unknown loss {loss}")


def generator_loss(loss: Loss, fake_logits: torch.Tensor) -> torch.Tensor:
    if loss is Loss.NONSATURATING:
        return F.softplus(-fake_logits).mean()
    if loss in (Loss.HINGE, Loss.WGAN_GP):
        return -fake_logits.mean()
    if loss is Loss.LEAST_SQUARES:
        return 0.5 * ((fake_logits - 1.0) ** 2).mean()
    raise ValueError(f"unknown loss {loss}")


Critic = Callable[[torch.Tensor], torch.Tensor]  # images -> (N,) logits (labels bound)


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: E[(||grad_x D(x)||_2 - 1)^2] at random points between real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)  # (N, 1, 1, 1)
    mixed = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(critic: Critic, real: torch.Tensor) -> torch.Tensor:
    """R1: E[||grad_x D(x)||^2] on real images (multiply by gamma / 2)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(real).sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()
