"""Training data: scikit-learn's digits (built in), an image folder, or a .npz file; each split
80% / 20% into train / held-out by a fixed stratified split."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))
LOGGER = logging.getLogger(__name__)
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


class DataError(ValueError):
    """Training data that cannot be used; the message names the file or folder and the fix."""


def _finish(
    name: str, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], size: int
) -> tuple[ImageDataset, ImageDataset]:
    """(N, H, W, C) float in [0, 1] -> resized (train, held-out) datasets, 80/20 stratified."""
    from sklearn.model_selection import train_test_split

    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    if len(x) < 5:
        raise DataError(f"{name}: {len(x)} images; at least 5 are needed for a held-out split")
    stratify = labels if class_names and np.bincount(labels).min() >= 2 else None
    idx_train, idx_held = train_test_split(
        np.arange(len(x)), test_size=HELDOUT_FRACTION, stratify=stratify, random_state=SPLIT_SEED
    )
    return (
        ImageDataset(f"{name}-train", x[idx_train], y[idx_train], class_names),
        ImageDataset(f"{name}-heldout", x[idx_held], y[idx_held], class_names),
    )


class _Decode(torch.utils.data.Dataset):
    """(file, label) -> (file, label, mode, (H, W, C) float32 array in [0, 1] or the error)."""

    def __init__(self, items: list[tuple[pathlib.Path, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[pathlib.Path, int, str, np.ndarray | str]:
        from PIL import Image, UnidentifiedImageError

        file, label = self.items[i]
        try:
            with Image.open(file) as im:
                im.load()
                array = np.asarray(im, dtype=np.float32) / 255.0
                return file, label, im.mode, array if array.ndim == 3 else array[:, :, None]
        except (UnidentifiedImageError, OSError) as exc:
            return file, label, "", str(exc)


def _as_is(item: object) -> object:
    return item


def _decode_workers(files: int) -> int:
    """DataLoader workers for decoding: none for small folders (a worker costs a process)."""
    return 0 if files < 512 else min(4, len(os.sched_getaffinity(0)))


def load_image_folder(
    path: pathlib.Path, image_size: int, *, workers: int | None = None
) -> tuple[ImageDataset, ImageDataset]:
    """Images from a folder: one subfolder per class (conditional) or all in the folder
    (unconditional). Any format Pillow reads, decoded by ``workers`` DataLoader processes
    (default: 0 for small folders, else up to 4); unreadable files are skipped with a warning.
    All images must share one mode (L or RGB): mixed modes are an error naming two files."""
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of images")
    subfolders = sorted(p for p in path.iterdir() if p.is_dir())
    if subfolders:
        groups = [
            (i, sorted(f for f in d.rglob("*") if f.is_file())) for i, d in enumerate(subfolders)
        ]
        class_names = tuple(d.name for d in subfolders)
    else:
        groups = [(0, sorted(f for f in path.iterdir() if f.is_file()))]
        class_names = ()
    items = [(file, label) for label, files in groups for file in files]
    loader = torch.utils.data.DataLoader(
        _Decode(items),
        batch_size=None,  # one file at a time, in order
        collate_fn=_as_is,  # keep numpy arrays (the default converts them to tensors)
        num_workers=_decode_workers(len(items)) if workers is None else workers,
    )
    arrays, labels, skipped, modes = [], [], 0, {}
    for file, label, mode, array in loader:
        if isinstance(array, str):
            LOGGER.warning("skipping %s: %s", file, array)
            skipped += 1
            continue
        if mode not in ("L", "RGB"):
            raise DataError(f"{file}: mode {mode}; convert images to L (grayscale) or RGB")
        modes.setdefault(mode, file)
        if len(modes) > 1:
            (m1, f1), (m2, f2) = modes.items()
            raise DataError(
                f"{path}: mixed image modes ({f1} is {m1}, {f2} is {m2}); "
                "convert all images to one mode"
            )
        arrays.append(array)
        labels.append(label)
    if skipped:
        LOGGER.warning("%s: skipped %d unreadable file(s)", path, skipped)
    if not arrays:
        raise DataError(f"{path}: no readable images ({skipped} file(s) skipped)")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:  # resize each to the training size first, then stack
        arrays = [_resize(a, image_size) for a in arrays]
    return _finish(path.name, np.stack(arrays), np.array(labels), class_names, image_size)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(array).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).numpy()


def load_npz(path: pathlib.Path, image_size: int) -> tuple[ImageDataset, ImageDataset]:
    """``images`` (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 0..255 or float 0..1, and
    optional integer ``labels`` (N,) for a conditional model."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if "images" not in data:
        raise DataError(f"{path}: no 'images' array (found: {', '.join(data.files) or 'none'})")
    images = data["images"]
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{path}: images has shape {images.shape}; expected (N, H, W[, C])")
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: images has {images.shape[-1]} channels; use 1 or 3")
    images = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    if "labels" in data:
        labels = data["labels"]
        if (
            labels.shape != (len(images),)
            or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0
        ):
            raise DataError(f"{path}: labels must be {len(images)} non-negative integers")
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    else:
        labels, class_names = np.zeros(len(images), dtype=np.int64), ()
    return _finish(path.stem, images, labels, class_names, image_size)


def load(spec: str, image_size: int) -> tuple[ImageDataset, ImageDataset]:
    """'digits' (built in), a folder of images, or a .npz file."""
    if spec == "digits":
        return load_digits_split(image_size)
    path = pathlib.Path(spec)
    if path.suffix == ".npz":
        return load_npz(path, image_size)
    if not path.exists():
        raise DataError(f"{spec}: no such folder or .npz file (or use 'digits')")
    return load_image_folder(path, image_size)
