"""Training data: scikit-learn's digits, upscaled, with a fixed stratified train/held-out split."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images in [-1, 1] (N, C, H, W) float32 with (N,) int64 labels."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def fingerprint(self) -> str:
        """SHA-256 of the pixels and labels: names the exact data a model saw."""
        digest = hashlib.sha256(self.images.numpy().tobytes())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.labels)


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # shipped inside scikit-learn: no download
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    return train_test_split(
        images,
        digits.target,
        test_size=HELDOUT_FRACTION,
        stratify=digits.target,
        random_state=SPLIT_SEED,
    )


def load_digits_split(image_size: int = 32) -> tuple[ImageDataset, ImageDataset]:
    """(train, held-out): 80% / 20% of a fixed stratified split of the 1797 8x8 digits."""
    x_train, x_held, y_train, y_held = _digits_split()
    return (
        _to_dataset("digits-train", x_train, y_train, image_size),
        _to_dataset("digits-heldout", x_held, y_held, image_size),
    )


def _to_dataset(name: str, images: np.ndarray, labels: np.ndarray, size: int) -> ImageDataset:
    x = torch.from_numpy(images)[:, None]  # (N, 1, 8, 8) in [0, 1]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()  # (N, 1, size, size) in [-1, 1]
    return ImageDataset(name, x, torch.from_numpy(labels.astype(np.int64)), DIGITS_CLASS_NAMES)
