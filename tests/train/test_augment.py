"""DiffAugment: differentiable, shape-preserving, random per image, policy errors named."""

from __future__ import annotations

import pytest
import torch

from ganserve.train.augment import diff_augment, parse_policy


@pytest.mark.parametrize(
    "policy", [("translation",), ("cutout",), ("color",), ("color", "translation", "cutout")]
)
def test_augmentations_keep_shape_and_pass_gradients(policy: tuple[str, ...]) -> None:
    leaf = torch.rand(6, 3, 16, 16, requires_grad=True)
    x = leaf * 2 - 1
    out = diff_augment(x, policy, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_translation_shifts_content_and_fills_black() -> None:
    x = torch.ones(64, 1, 16, 16)
    out = diff_augment(x, ("translation",), torch.Generator().manual_seed(1))
    shifted = (out == -1).flatten(1).any(dim=1)
    assert 0 < shifted.sum() < 64  # most images moved, a few drew a zero shift


def test_cutout_blacks_out_a_square_of_about_a_quarter() -> None:
    x = torch.ones(32, 1, 16, 16)
    out = diff_augment(x, ("cutout",), torch.Generator().manual_seed(2))
    share = (out == -1).float().mean().item()
    assert 0.1 < share < 0.3


def test_cutout_is_a_square_of_exactly_half_the_size() -> None:
    """It was 17x17 at 32x32: |y - cy| <= 8 spans 17 rows."""
    x = torch.ones(256, 1, 32, 32)
    cut = diff_augment(x, ("cutout",), torch.Generator().manual_seed(3)) == -1
    rows, cols = cut.any(dim=3).sum(dim=(1, 2)), cut.any(dim=2).sum(dim=(1, 2))
    assert rows.max() == cols.max() == 16  # whole squares: 16 by 16
    assert cut.sum(dim=(1, 2, 3)).max() == 256 and (cut.sum(dim=(1, 2, 3)) == rows * cols).all()


def test_same_generator_state_gives_the_same_augmentation() -> None:
    x = torch.rand(4, 3, 8, 8)
    policy = ("color", "translation", "cutout")
    a = diff_augment(x, policy, torch.Generator().manual_seed(5))
    b = diff_augment(x, policy, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("text", "channels", "match"),
    [
        ("translation,flip", 1, "policy 'flip' is unknown"),
        ("color", 1, "'color' needs RGB"),
        (",,", 1, "policy ',,' has an empty name; use comma-separated names from color, "),
        ("translation,,cutout", 1, "has an empty name"),
        ("translation,", 1, "has an empty name"),
    ],
)
def test_bad_policies_are_named(text: str, channels: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_policy(text, channels)


@pytest.mark.parametrize("text", ["", " "])
def test_an_empty_policy_is_no_augmentation(text: str) -> None:
    assert parse_policy(text, 1) == ()
