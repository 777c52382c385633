"""Offline evaluation: do samples look like digits of the class they were asked for?

A logistic-regression classifier is fit on the training split, seen at the digits' native
8x8 (images are average-pooled down), and scored on the held-out split (the reference) and
on generated samples of every class. "sample_class_accuracy" near the held-out figure means the
generator draws legible digits of the requested class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ganserve.train.data import ImageDataset
from ganserve.train.sampling import generate, grid_seeds


def _features(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] -> (N, 64) in [0, 1] at 8x8."""
    small = F.adaptive_avg_pool2d((images + 1) / 2, 8)
    return small.flatten(1).numpy()


class DigitClassifier:
    """The judge of legibility, fit once on the training split."""

    def __init__(self, train: ImageDataset) -> None:
        from sklearn.linear_model import LogisticRegression

        self._model = LogisticRegression(max_iter=2000)
        self._model.fit(_features(train.images), train.labels.numpy())

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self._model.predict(_features(images)) == labels.numpy()).mean())


@torch.no_grad()
def evaluate(
    generator: torch.nn.Module,
    classifier: DigitClassifier,
    heldout: ImageDataset,
    *,
    per_class: int = 100,
) -> dict[str, float]:
    """Class accuracy of held-out real digits and of generated ones, seeds 10000.. per class."""
    seeds, labels = grid_seeds(generator.config.num_classes, per_class, first_seed=10_000)
    generator.eval()
    fake = generate(generator, seeds, labels)  # through the serving inputs, noise included
    return {
        "heldout_class_accuracy": classifier.accuracy(heldout.images, heldout.labels),
        "sample_class_accuracy": classifier.accuracy(fake, torch.from_numpy(labels)),
    }
