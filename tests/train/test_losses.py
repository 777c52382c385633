"""Each loss and regulariser does what it should, checked on cases with known answers."""

from __future__ import annotations

import torch
from torch import nn

from ganserve.train.loop import update_ema
from ganserve.train.losses import (
    Loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from ganserve.train.networks import Discriminator, DiscriminatorConfig


def linear_critic(scale: float):
    u = torch.randn(1 * 4 * 4)
    u = u / u.norm()
    return lambda x: scale * (x.flatten(1) @ u)


def test_gradient_penalty_is_zero_for_a_1_lipschitz_critic_and_grows_off_it() -> None:
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    assert gradient_penalty(linear_critic(1.0), real, fake).item() < 1e-10
    assert abs(gradient_penalty(linear_critic(3.0), real, fake).item() - 4.0) < 1e-4  # (3-1)^2


def test_r1_is_the_squared_gradient_norm_on_real_images() -> None:
    real = torch.randn(8, 1, 4, 4)
    assert abs(r1_penalty(linear_critic(2.0), real).item() - 4.0) < 1e-4


def test_penalties_push_the_critic_gradient_towards_their_targets() -> None:
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with torch.no_grad():
        critic[1].weight.mul_(10)
    opt = torch.optim.SGD(critic.parameters(), lr=0.05)
    real, fake = torch.randn(32, 1, 4, 4), torch.randn(32, 1, 4, 4)
    first = None
    for _ in range(200):
        gp = gradient_penalty(lambda x: critic(x).squeeze(1), real, fake)
        first = first if first is not None else gp.item()
        opt.zero_grad()
        gp.backward()
        opt.step()
    assert gp.item() < 0.1 * first


def test_hinge_is_zero_beyond_the_margin() -> None:
    confident = discriminator_loss(Loss.HINGE, torch.full((4,), 2.0), torch.full((4,), -2.0))
    assert confident.item() == 0.0


def test_least_squares_targets_are_one_and_zero() -> None:
    assert discriminator_loss(Loss.LEAST_SQUARES, torch.ones(4), torch.zeros(4)).item() == 0.0
    assert generator_loss(Loss.LEAST_SQUARES, torch.ones(4)).item() == 0.0


def test_wgan_losses_are_mean_differences() -> None:
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([0.0, -2.0])
    assert discriminator_loss(Loss.WGAN_GP, real, fake).item() == -3.0
    assert generator_loss(Loss.WGAN_GP, fake).item() == 1.0


def test_label_smoothing_penalises_overconfident_real_logits() -> None:
    real, fake = torch.full((4,), 8.0), torch.full((4,), -8.0)
    plain = discriminator_loss(Loss.NONSATURATING, real, fake)
    smoothed = discriminator_loss(Loss.NONSATURATING, real, fake, label_smoothing=0.1)
    assert smoothed > plain + 0.5


def test_spectral_norm_keeps_each_discriminator_layer_near_one() -> None:
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(num_classes=10, width=8)).train()
    x, y = torch.randn(16, 1, 32, 32), torch.randint(10, (16,))
    for _ in range(20):  # power iteration converges over forward passes
        d(x, y)
    normed = [m for m in d.modules() if hasattr(m, "parametrizations")]
    weighted = [m for m in d.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)]
    # Every layer with weights (each conv, the head, the projection embedding) is normalised.
    assert len(normed) == len(weighted) >= 5
    for module in normed:
        w = module.weight.detach().flatten(1)
        assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1.0) < 0.05


def test_ema_lags_the_live_weights_by_its_decay() -> None:
    live, ema = nn.Linear(3, 3), nn.Linear(3, 3)
    ema.load_state_dict(live.state_dict())
    before = live.weight.detach().clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    update_ema(ema, live, decay=0.9)
    torch.testing.assert_close(ema.weight, before + 0.1)
