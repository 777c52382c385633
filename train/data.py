"""Training data: scikit-learn's digits (built in), an image folder, or a .npz file; each split
80% / 20% into train / held-out by a fixed stratified split."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import pathlib
import zipfile
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from ganserve.serve.metadata import is_utf8

DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))
LOGGER = logging.getLogger(__name__)
# A training set is named after its data with this suffix ("digits-train"; the held-out part
# "-heldout"): checkpoints record it, and export-gan names a model after it.
TRAIN_SUFFIX = "-train"
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0
NPZ_HINT = "save it with numpy.savez(file, images=..., labels=...)"
IMAGES_DTYPES = "integers 0..255 (e.g. uint8) or floats 0..1"  # what .npz images may hold


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images in [-1, 1] (N, C, H, W) float32 with (N,) int64 labels. ``builtin``: the
    built-in digits (a user's digits.npz gets the same name, not this flag)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    builtin: bool = False

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
        _to_dataset(f"digits{TRAIN_SUFFIX}", x_train, y_train, image_size),
        _to_dataset("digits-heldout", x_held, y_held, image_size),
    )


def _to_dataset(name: str, images: np.ndarray, labels: np.ndarray, size: int) -> ImageDataset:
    x = torch.from_numpy(images)[:, None]  # (N, 1, 8, 8) in [0, 1]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()  # (N, 1, size, size) in [-1, 1]
    labels_t = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(name, x, labels_t, DIGITS_CLASS_NAMES, builtin=True)


class DataError(ValueError):
    """Training data that cannot be used; the message names the file or folder and the fix."""


def _finish(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    size: int,
    *,
    source: pathlib.Path,
) -> tuple[ImageDataset, ImageDataset]:
    """(N, H, W, C) float in [0, 1] -> resized (train, held-out) datasets, 80/20 stratified."""
    from sklearn.model_selection import train_test_split

    for class_name in class_names:  # a folder name the file system gave as undecodable bytes
        if not is_utf8(class_name):
            raise DataError(
                f"{source}: class name {class_name!r} is not valid UTF-8 text; rename it "
                "(served models name their classes over gRPC, which carries UTF-8 only)"
            )
    _check_split(source, labels, class_names)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    idx_train, idx_held = train_test_split(
        np.arange(len(x)),
        test_size=HELDOUT_FRACTION,
        stratify=labels if class_names else None,
        random_state=SPLIT_SEED,
    )
    return (
        ImageDataset(f"{name}{TRAIN_SUFFIX}", x[idx_train], y[idx_train], class_names),
        ImageDataset(f"{name}-heldout", x[idx_held], y[idx_held], class_names),
    )


def _check_split(source: pathlib.Path, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    """Enough images for the stratified split to put every class in both train and held-out."""
    if len(labels) < 5:
        raise DataError(
            f"{source}: {len(labels)} images; at least 5 are needed for a held-out split"
        )
    if not class_names:
        return
    counts = np.bincount(labels, minlength=len(class_names))
    k = int(counts.argmin())
    if counts[k] < 2:
        raise DataError(
            f"{source}: need at least 2 images per class for the held-out split "
            f"(class '{class_names[k]}' has {counts[k]})"
        )
    # scikit-learn holds out ceil(fraction * N) images and needs one of every class among them.
    held = math.ceil(HELDOUT_FRACTION * len(labels))
    if held < len(class_names):
        needed = len(labels)
        while math.ceil(HELDOUT_FRACTION * needed) < len(class_names):
            needed += 1
        raise DataError(
            f"{source}: {len(labels)} images for {len(class_names)} classes leave {held} for the "
            f"held-out split, which needs one image of every class: use at least {needed} images "
            "(5 per class always suffice)"
        )


class _Decode(torch.utils.data.Dataset):
    """(file, label) -> (file, label, mode, (size, size, C) float32 array in [0, 1], or the
    reason to skip the file, or the DataError that stops loading). Each image is resized where
    it is decoded (in the worker processes), so a folder of large images is never held at full
    size: 9 MB a 512x512 RGB image as float32, against 12 kB at 32x32."""

    def __init__(self, items: list[tuple[pathlib.Path, int]], size: int) -> None:
        self.items = items
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[pathlib.Path, int, str, np.ndarray | str | DataError]:
        from PIL import Image, UnidentifiedImageError

        file, label = self.items[i]
        try:
            with Image.open(file) as im:
                im.load()
                array = np.asarray(im, dtype=np.float32) / 255.0
                mode = im.mode
            if array.ndim == 2:
                array = array[:, :, None]
            if array.shape[:2] != (self.size, self.size):
                array = _resize(array, self.size)
            return file, label, mode, array
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            return file, label, "", str(exc)  # Pillow's plugins raise all of these for bad bytes
        except Image.DecompressionBombError as exc:  # a real image, too large to decode safely
            return file, label, "", DataError(f"{file}: too large to load ({exc}); shrink it")


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
    All images must share one mode (L or RGB): mixed modes are an error naming two files. An
    empty class folder, or an image beside the class folders, is an error naming it."""
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of images")
    # Hidden entries (.ipynb_checkpoints, .DS_Store, .git) are tools' files, not data.
    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        groups = [
            (i, sorted(f for f in d.rglob("*") if f.is_file() and not _hidden(f, d)))
            for i, d in enumerate(subfolders)
        ]
        class_names = tuple(d.name for d in subfolders)
        for i, files in groups:
            if not files:
                raise DataError(f"{subfolders[i]}: empty class folder; add images or remove it")
        _refuse_loose_images(path)
    else:
        groups = [(0, sorted(f for f in path.iterdir() if f.is_file() and not _hidden(f, path)))]
        class_names = ()
    items = [(file, label) for label, files in groups for file in files]
    loader = torch.utils.data.DataLoader(
        _Decode(items, image_size),
        batch_size=None,  # one file at a time, in order
        collate_fn=_as_is,  # keep numpy arrays (the default converts them to tensors)
        num_workers=_decode_workers(len(items)) if workers is None else workers,
    )
    arrays, labels, skipped, modes = [], [], 0, {}
    for file, label, mode, array in loader:
        if isinstance(array, DataError):
            raise array
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
    images = np.stack(arrays)  # each already at the training size
    return _finish(path.name, images, np.array(labels), class_names, image_size, source=path)


def _hidden(file: pathlib.Path, root: pathlib.Path) -> bool:
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def _refuse_loose_images(path: pathlib.Path) -> None:
    """Beside class subfolders, an image file would be silently left out of training."""
    from PIL import Image

    extensions = Image.registered_extensions()
    loose = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in extensions)
    if loose:
        raise DataError(
            f"{loose[0]}: image outside the class folders of {path} ({len(loose)} such "
            "image(s)); move it into a class folder or remove it"
        )


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(array).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).numpy()


def load_npz(path: pathlib.Path, image_size: int) -> tuple[ImageDataset, ImageDataset]:
    """``images`` (N, H, W), (N, H, W, C) or (N, C, H, W), integers 0..255 (e.g. uint8) or
    finite floats 0..1, and optional integer ``labels`` (N,) 0..K-1, every class present, for a
    conditional model."""
    images, labels = _read_npz(path)
    images = _check_images(path, images)  # (N, H, W, C) float32 in [0, 1]
    if labels is None:
        labels, class_names = np.zeros(len(images), dtype=np.int64), ()
    else:
        labels = _check_labels(path, labels, len(images))
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    return _finish(path.stem, images, labels, class_names, image_size, source=path)


def _read_npz(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``images`` and ``labels`` (or None) arrays, or a DataError saying why not."""
    try:
        with path.open("rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc.strerror or exc})") from None
    if not magic.startswith(b"PK"):  # np.load would read it as a .npy array or a pickle
        kind = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
        raise DataError(
            f"{path}: not a readable .npz file ({kind if magic else 'empty'}); {NPZ_HINT}"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); {NPZ_HINT}") from None
    with data:
        if "images" not in data:
            raise DataError(f"{path}: no 'images' array (found: {', '.join(data.files) or 'none'})")
        images = _read_member(path, data, "images", IMAGES_DTYPES)
        labels = _read_member(path, data, "labels", "integers 0..K-1") if "labels" in data else None
    return images, labels


def _read_member(
    path: pathlib.Path, data: np.lib.npyio.NpzFile, key: str, dtype: str
) -> np.ndarray:
    try:
        return data[key]
    except ValueError as exc:  # an object (pickled) array, a broken .npy header
        raise DataError(f"{path}: '{key}' cannot be read ({exc}); save it as {dtype}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # damaged bytes
        raise DataError(f"{path}: not a readable .npz file ({exc}); {NPZ_HINT}") from None


def _check_images(path: pathlib.Path, images: np.ndarray) -> np.ndarray:
    """Any accepted layout and dtype -> (N, H, W, C) float32 in [0, 1]."""
    shape, integer = images.shape, np.issubdtype(images.dtype, np.integer)
    if not (integer or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{path}: images has dtype {images.dtype}; expected {IMAGES_DTYPES}")
    if images.ndim not in (3, 4):
        raise DataError(f"{path}: images has shape {shape}; expected (N, H, W[, C])")
    if images.size == 0:
        raise DataError(
            f"{path}: images has shape {shape}, which is empty; expected (N, H, W[, C])"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: images has {images.shape[-1]} channels; use 1 or 3")
    if not integer and not np.isfinite(images).all():
        raise DataError(f"{path}: images hold NaN or infinite values")
    low, high = images.min().item(), images.max().item()
    top = 255 if integer else 1
    if low < 0 or high > top:
        raise DataError(
            f"{path}: images ({images.dtype}) range {low:g}..{high:g}; expected {IMAGES_DTYPES}: "
            "rescale them"
        )
    return images.astype(np.float32) / np.float32(top)


def _check_labels(path: pathlib.Path, labels: np.ndarray, count: int) -> np.ndarray:
    """``labels`` (N,) 0..K-1 with every class present (K class names come from them)."""
    if labels.shape != (count,):
        raise DataError(
            f"{path}: labels must be {count} integers, one per image; found shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels has dtype {labels.dtype}; expected integers 0..K-1")
    rule = "labels must be 0..K-1 with every class present"
    low, high = labels.min().item(), labels.max().item()
    if low < 0:
        raise DataError(f"{path}: {rule}; found min {low}")
    if high >= count:  # K classes need at least K images; also bounds the class list
        raise DataError(f"{path}: {rule}; found max {high} with only {count} images")
    labels = labels.astype(np.int64)
    missing = np.flatnonzero(np.bincount(labels, minlength=high + 1) == 0)
    if len(missing):
        raise DataError(
            f"{path}: {rule}; class {missing[0]} has no images ({len(missing)} of 0..{high} empty)"
        )
    return labels


def load(spec: str, image_size: int) -> tuple[ImageDataset, ImageDataset]:
    """'digits' (built in), a folder of images, or a .npz file."""
    if not spec.strip():
        raise DataError("--data is empty: give 'digits', a folder of images, or a .npz file")
    if spec == "digits":
        return load_digits_split(image_size)
    path = pathlib.Path(spec)
    if path.suffix.lower() == ".npz":  # data.NPZ too
        return load_npz(path, image_size)
    if not path.exists():
        raise DataError(f"{spec}: no such folder or .npz file (or use 'digits')")
    return load_image_folder(path, image_size)
