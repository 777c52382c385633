"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real and fake
images alike before the discriminator, so D cannot overfit a small dataset and G still gets
gradients through the augmentation.

Policies: "translation" (shift by up to 1/8 of the size), "cutout" (blank a square of half
the size), "color" (brightness, saturation, contrast; RGB only). Images are in [-1, 1]; what
translation uncovers and cutout blanks is black (-1), where the reference code's zeros are
mid-grey: the built-in digits are white on black, and grey squares would be a feature no real
image has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(text: str, channels: int) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'), '' -> () (off); names what is
    wrong."""
    if not text.strip():
        return ()
    names = tuple(p.strip() for p in text.split(","))
    if "" in names:  # ",,", "translation,": a typo, not a request for no augmentation
        raise ValueError(
            f"diffaugment policy {text!r} has an empty name; use comma-separated names from "
            f"{', '.join(POLICIES)}"
        )
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"diffaugment policy {unknown[0]!r} is unknown; use {', '.join(POLICIES)}")
    if "color" in names and channels != 3:
        raise ValueError("diffaugment policy 'color' needs RGB images (channels 3)")
    return names


def diff_augment(
    x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply ``policy`` to a batch (N, C, H, W); a new random draw per image."""
    for name in policy:
        x = _OPS[name](x, generator)
    return x.contiguous()


def _draw_device(g: torch.Generator | None, x: torch.Tensor) -> torch.device:
    """Where to draw: the generator's device (the loop's is on the CPU, so a run draws the
    same numbers on any device), else x's."""
    return g.device if g is not None else x.device


def _rand(n: int, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    draw = torch.rand(n, 1, 1, 1, generator=g, device=_draw_device(g, x), dtype=x.dtype)
    return draw.to(x.device)


def _color(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_rand(n, x, g) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, x, g) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, x, g) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, g: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    at = _draw_device(g, x)
    dy = torch.randint(-sh, sh + 1, (n,), generator=g, device=at).to(x.device)
    dx = torch.randint(-sw, sw + 1, (n,), generator=g, device=at).to(x.device)
    padded = F.pad(x, (sw, sw, sh, sh), value=-1.0)  # pad with black in [-1, 1]
    rows = (torch.arange(h, device=x.device)[None, :] - dy[:, None] + sh).clamp(0, h + 2 * sh - 1)
    cols = (torch.arange(w, device=x.device)[None, :] - dx[:, None] + sw).clamp(0, w + 2 * sw - 1)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, g: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    at = _draw_device(g, x)
    cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=g, device=at).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=g, device=at).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    # ch rows from cy - ch // 2 and cw columns from cx - cw // 2, cut at the borders, as in
    # the reference code (|y - cy| <= ch // 2 would be ch + 1 rows for an even ch).
    row = ys - cy[:, None, None] + ch // 2
    col = xs - cx[:, None, None] + cw // 2
    inside = (row >= 0) & (row < ch) & (col >= 0) & (col < cw)  # (N, H, W)
    return torch.where(inside[:, None], torch.full_like(x, -1.0), x)


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}
