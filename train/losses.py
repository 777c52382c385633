"""Adversarial losses, selected by one option."""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F


class Loss(enum.Enum):
    """Adversarial objective."""

    NONSATURATING = "nonsaturating"  # Goodfellow et al. 2014, the practical form for G
    HINGE = "hinge"  # Lim & Ye 2017; Miyato et al. 2018


def discriminator_loss(
    loss: Loss,
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
) -> torch.Tensor:
    if loss is Loss.NONSATURATING:
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if loss is Loss.HINGE:
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown loss {loss}")


def generator_loss(loss: Loss, fake_logits: torch.Tensor) -> torch.Tensor:
    if loss is Loss.NONSATURATING:
        return F.softplus(-fake_logits).mean()
    if loss is Loss.HINGE:
        return -fake_logits.mean()
    raise ValueError(f"unknown loss {loss}")
