"""Offline evaluation of a generator in the domain classifier's feature space, every figure
beside a real-vs-real baseline (the training split against the held-out split).

* Fréchet distance (FD): between Gaussian fits of the features (FID's formula, our extractor).
* KID: unbiased MMD² with the cubic polynomial kernel, averaged over subsets, on features
  scaled to unit RMS (the kernel expects features of order 1, as Inception's are).
* Precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al. 2020),
  k = 5 nearest neighbours.
* Conditional accuracy: the classifier's accuracy on G(z, c) against c, overall and per class.
* Class coverage and KL(predicted-label histogram || training-label histogram).
* With a local Inception weight file, standard FID (train/inception.py).
* Memorisation ratio: median distance from each sample to its nearest training image,
  divided by the same for held-out images. Well below 1 means samples sit on training images.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import pathlib
import zipfile

import numpy as np
import torch
from scipy import linalg
from sklearn.metrics import pairwise_distances

from ganserve.train import sampling
from ganserve.train.data import HELDOUT_FRACTION, ImageDataset
from ganserve.train.features import FeatureNet
from ganserve.train.inception import PREPROCESS_VERSION, InceptionFeatures

LOGGER = logging.getLogger(__name__)
K = 5
FIRST_SEED = 20_000  # evaluation seeds never overlap training-time sample grids
MIN_SPLIT = K + 1  # images per split: each needs its K-th nearest neighbour besides itself


class EvaluationError(ValueError):
    """The generator and the data cannot be evaluated together; the message says why."""


def check_data(generator: torch.nn.Module, train: ImageDataset, heldout: ImageDataset) -> None:
    """EvaluationError unless ``generator`` can be judged against these splits: its images
    have the data's shape, a conditional generator has the data's classes, and each split has
    enough images for the nearest-neighbour metrics."""
    cfg = generator.config
    made = (cfg.channels, cfg.image_size, cfg.image_size)
    have = tuple(train.images.shape[1:])
    if have != made:
        kind = {1: "greyscale", 3: "RGB"}
        raise EvaluationError(
            f"the data's images are {kind.get(have[0], f'{have[0]}-channel')} {have} (C, H, W) "
            f"but the generator makes {kind.get(made[0], f'{made[0]}-channel')} {made}; "
            "evaluate on data like the training data"
        )
    classes = len(train.class_names)
    if cfg.num_classes and classes != cfg.num_classes:
        names = ", ".join(train.class_names[:5]) + (", ..." if classes > 5 else "")
        found = f"{classes} ({names})" if classes else "none (it is unlabelled)"
        raise EvaluationError(
            f"the generator has {cfg.num_classes} classes but the data has {found}; the class "
            "figures compare the class asked for with the class recognised, so the classes "
            "must match: evaluate on the data the checkpoint was trained on"
        )
    if min(len(train), len(heldout)) < MIN_SPLIT:
        held = lambda n: math.ceil(HELDOUT_FRACTION * n)  # noqa: E731  (the split's rule)
        needed = next(n for n in itertools.count(2) if min(held(n), n - held(n)) >= MIN_SPLIT)
        raise EvaluationError(
            f"the data has {len(train) + len(heldout)} images, split into {len(train)} for "
            f"training and {len(heldout)} held out; the {K}-nearest-neighbour metrics need at "
            f"least {MIN_SPLIT} in each: use at least {needed} images"
        )


def check_finite(images: torch.Tensor, seeds: list[int], labels: np.ndarray | None) -> None:
    """EvaluationError naming the first sample whose pixels are NaN or infinite: no figure
    means anything then, and some computations (a matrix square root) never finish on them."""
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)  # (N,)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        label = f", class {int(labels[i])}" if labels is not None else ""
        raise EvaluationError(
            f"the generator's output is not finite (NaN or infinity) for {int(bad.sum())} of "
            f"{len(images)} samples (first: seed {seeds[i]}{label}); its weights are probably "
            "NaN (training diverged): evaluate an earlier checkpoint"
        )


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> their mean (D,) and covariance (D, D)."""
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_from_stats(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    (mu_a, cov_a), (mu_b, cov_b) = a, b
    if not all(np.isfinite(x).all() for x in (mu_a, cov_a, mu_b, cov_b)):
        return float("nan")  # scipy's sqrtm can loop forever on a non-finite matrix
    # A small ridge keeps the square root defined when features are (nearly) constant, or
    # fewer than their dimension (2048 Inception features from a few hundred images).
    ridge = 1e-6 * np.eye(len(mu_a))
    cov_a, cov_b = cov_a + ridge, cov_b + ridge
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_from_stats(gaussian(a), gaussian(b))


def inception_fid(
    inception: InceptionFeatures,
    images: torch.Tensor,
    train: ImageDataset,
    heldout: ImageDataset,
    cache_dir: pathlib.Path | None,
) -> dict[str, float]:
    """Standard FID of ``images`` and of the held-out split, each against the training split.
    The real splits' statistics are cached by a hash of the data and the weight file."""
    digest = hashlib.sha256(
        f"{PREPROCESS_VERSION}:{inception.sha256}:{train.fingerprint()}:{heldout.fingerprint()}".encode()
    )
    path = cache_dir / f"inception-{digest.hexdigest()[:24]}.npz" if cache_dir else None
    cached = _load_inception_stats(path) if path is not None else None
    if cached is not None:
        real, held = cached
    else:
        real, held = gaussian(inception(train.images)), gaussian(inception(heldout.images))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial.npz")
            np.savez(
                partial, mu_train=real[0], cov_train=real[1], mu_held=held[0], cov_held=held[1]
            )
            partial.replace(path)
    return {
        "generated": frechet_from_stats(real, gaussian(inception(images))),
        "real_vs_real": frechet_from_stats(real, held),
    }


def _load_inception_stats(path: pathlib.Path) -> tuple[tuple, tuple] | None:
    """The cached (train, held-out) statistics; None when absent or unreadable (logged)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return (
                (saved["mu_train"], saved["cov_train"]),
                (saved["mu_held"], saved["cov_held"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        LOGGER.warning("%s: unreadable cached statistics (%s); computing them again", path, exc)
        return None


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 10, size: int = 300, seed: int = 0
) -> float:
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    size = min(size, len(a), len(b))
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        m = size
        total += (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return float(total / subsets)


def _kth_neighbour(x: np.ndarray, k: int, rows: int = 1024) -> np.ndarray:
    """Each point's distance to its k-th nearest neighbour (index 0 is the point itself), a
    block of rows at a time: the whole (N, N) matrix of 100,000 samples is 75 GiB."""
    out = np.empty(len(x))
    for start in range(0, len(x), rows):
        block = pairwise_distances(x[start : start + rows], x)
        out[start : start + rows] = np.partition(block, k, axis=1)[:, k]
    return out


def prdc(real: np.ndarray, fake: np.ndarray, k: int = K) -> dict[str, float]:
    """Precision, recall, density, coverage of ``fake`` against ``real``."""
    rf = pairwise_distances(real, fake)  # (R, F)
    r_radius = _kth_neighbour(real, k)
    f_radius = _kth_neighbour(fake, k)
    inside_real = rf < r_radius[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((f_radius[:, None] > rf.T).any(axis=0).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((rf.min(axis=1) < r_radius).mean()),
    }


def memorisation_ratio(train: np.ndarray, samples: np.ndarray, heldout: np.ndarray) -> float:
    nearest = lambda x: pairwise_distances(x, train).min(axis=1)  # noqa: E731
    return float(np.median(nearest(samples)) / np.median(nearest(heldout)))


def class_metrics(
    predicted: np.ndarray, asked: np.ndarray | None, num_classes: int, reference: np.ndarray
) -> dict[str, float]:
    """Conditional accuracy (overall, worst class), class coverage and label-histogram KL."""
    out: dict[str, float] = {}
    if asked is not None:
        out["conditional_accuracy"] = float((predicted == asked).mean())
        per_class = [float((predicted[asked == c] == c).mean()) for c in range(num_classes)]
        out["worst_class_accuracy"] = min(per_class)
        out.update({f"class_{c}_accuracy": a for c, a in enumerate(per_class)})
    hist = np.bincount(predicted, minlength=num_classes) / len(predicted)
    ref = np.bincount(reference, minlength=num_classes) / len(reference)
    out["class_coverage"] = float((hist > 0).mean())
    seen = hist > 0  # empty bins contribute 0 to the KL sum
    out["label_kl"] = float(np.sum(hist[seen] * np.log(hist[seen] / np.maximum(ref[seen], 1e-12))))
    return out


@torch.no_grad()
def _features(net: FeatureNet, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats, preds = [], []
    for start in range(0, len(images), 256):
        f = net(images[start : start + 256])
        feats.append(f.numpy())
        preds.append(net.head(f).argmax(1).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(preds)


@torch.no_grad()
def generate(generator: torch.nn.Module, per_class: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """per_class samples of every class (seeds FIRST_SEED..), as the server would make them.
    EvaluationError when any is not finite."""
    cfg = generator.config
    classes = max(cfg.num_classes, 1)
    seeds = list(range(FIRST_SEED, FIRST_SEED + per_class * classes))
    labels = np.repeat(np.arange(classes), per_class) if cfg.num_classes else None
    images = sampling.generate(generator, seeds, labels)
    check_finite(images, seeds, labels)
    return images, labels


def evaluate_generator(
    generator: torch.nn.Module,
    net: FeatureNet,
    train: ImageDataset,
    heldout: ImageDataset,
    *,
    per_class: int = 100,
    samples: tuple[torch.Tensor, np.ndarray | None] | None = None,
    inception: InceptionFeatures | None = None,
    cache_dir: pathlib.Path | None = None,
) -> dict[str, dict[str, float]]:
    """{"generated": {...}, "real_vs_real": {...}}: the same metrics for samples and for the
    held-out split, both against the training split; with ``inception``, standard FID too.
    ``samples`` is ``generate(generator, per_class)``'s result when the caller has it already.
    EvaluationError when the generator and the data do not fit (`check_data`) or the
    generator's output is not finite."""
    check_data(generator, train, heldout)
    generator.eval()
    net.eval()
    images, asked = samples if samples is not None else generate(generator, per_class)
    f_train, _ = _features(net, train.images)
    f_held, p_held = _features(net, heldout.images)
    f_gen, p_gen = _features(net, images)
    classes = max(len(train.class_names), 1)
    reference = train.labels.numpy()

    # KID's cubic kernel (x.y/d + 1)^3 is made for Inception's features, of order 1: scale ours
    # to unit RMS per dimension, or the figure comes out in units of 10^4 and reads as noise.
    unit = 1 / np.sqrt((f_train**2).mean())

    def against_train(f: np.ndarray) -> dict[str, float]:
        return {
            "frechet_distance": frechet_distance(f_train, f),
            "kid": kernel_inception_distance(f_train * unit, f * unit),
            **prdc(f_train, f),
            "memorisation_ratio": memorisation_ratio(f_train, f, f_held),
        }

    generated = {
        **against_train(f_gen),
        **class_metrics(p_gen, asked if generator.config.num_classes else None, classes, reference),
    }
    real = {
        **against_train(f_held),
        **class_metrics(
            p_held, heldout.labels.numpy() if train.class_names else None, classes, reference
        ),
    }
    if inception is not None:
        fid = inception_fid(inception, images, train, heldout, cache_dir)
        generated["inception_fid"], real["inception_fid"] = fid["generated"], fid["real_vs_real"]
    return {"generated": generated, "real_vs_real": real}
