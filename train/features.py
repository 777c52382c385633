"""The domain feature extractor for offline evaluation: a small CNN classifier trained on the
training split (no downloaded weights), cached by a hash of the data and the extractor.

For labelled data it is trained to classify, and its penultimate layer (128 features) is the
space the distribution metrics work in. For unlabelled data there is nothing to train on: a
fixed, seeded random-init network of the same shape gives the features (a weaker but honest
baseline; its use is recorded in the result).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.train.data import ImageDataset

LOGGER = logging.getLogger(__name__)
EXTRACTOR_VERSION = "cnn128-v3"
INPUT_SIZE = 32
EPOCHS = 40


class FeatureNet(nn.Module):
    """(N, C, H, W) in [-1, 1] -> (N, 128) features; ``classify`` adds the class head."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4: keep where the strokes are; a global pool loses it
            nn.Flatten(),
            nn.Linear(64 * 16, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, max(num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != INPUT_SIZE:
            x = F.interpolate(
                x,
                size=(INPUT_SIZE, INPUT_SIZE),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self.body(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))


def _key(train: ImageDataset) -> str:
    digest = hashlib.sha256(f"{EXTRACTOR_VERSION}:{train.fingerprint()}".encode())
    return digest.hexdigest()[:24]


def _train(net: FeatureNet, train: ImageDataset, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    n = len(train)
    steps = EPOCHS * -(-n // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for _ in range(EPOCHS):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, 64):
            idx = order[start : start + 64]
            x = train.images[idx]
            # Shift by up to 1 pixel so the classifier does not key on exact positions.
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net.classify(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()


@torch.no_grad()
def accuracy(net: FeatureNet, data: ImageDataset) -> float:
    net.eval()
    return float((net.classify(data.images).argmax(1) == data.labels).float().mean())


def _load_cached(path: pathlib.Path, net: FeatureNet) -> dict[str, float | str] | None:
    """The cached extractor's info, its weights loaded into ``net``; None when there is no
    usable entry. An unreadable one (truncated, a folder, weights that do not fit) is a miss:
    it is logged, and the caller trains the extractor again and replaces it."""
    if not os.path.lexists(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["state_dict"])
        return dict(saved["info"])
    except Exception as exc:  # torch.load fails in many types (RuntimeError, pickle, OSError)
        reason = next((line for line in str(exc).splitlines() if line.strip()), "")
        reason = reason.split(". ")[0] or type(exc).__name__  # torch adds paragraphs of advice
        LOGGER.warning("%s: unreadable cached extractor (%s); training it again", path, reason)
        return None


def _save_cached(path: pathlib.Path, payload: dict) -> None:
    """Write atomically (a temp file, then a rename): an interrupted write never leaves a
    truncated entry. A cache that cannot be written is logged; the evaluation goes on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a bad path as RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        LOGGER.warning("cannot cache the extractor at %s: %s", path, reason)


def load_or_train(
    train: ImageDataset, heldout: ImageDataset, cache_dir: pathlib.Path | None
) -> tuple[FeatureNet, dict[str, float | str]]:
    """The extractor for ``train``, from the cache when there, else trained (and cached)."""
    labelled = bool(train.class_names)
    channels, classes = int(train.images.shape[1]), len(train.class_names)
    net = FeatureNet(channels, classes)
    key = _key(train)
    path = cache_dir / f"extractor-{key}.pt" if cache_dir else None
    if path is not None:
        cached = _load_cached(path, net)
        if cached is not None:
            return net.eval(), cached
    torch.manual_seed(0)
    net = FeatureNet(channels, classes)
    info: dict[str, float | str] = {"extractor": EXTRACTOR_VERSION, "key": key}
    if labelled:
        LOGGER.info("training the evaluation classifier on %d images (cached after)", len(train))
        _train(net, train)
        info["classifier_heldout_accuracy"] = accuracy(net, heldout)
    else:
        info["features"] = "random-init (unlabelled data)"
    if path is not None:
        _save_cached(path, {"state_dict": net.state_dict(), "info": info})
    return net.eval(), info
