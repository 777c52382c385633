"""Image folders and .npz files become training data, or fail with one clear message."""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

from ganserve.train.data import DataError, load, load_image_folder


def write_images(folder: pathlib.Path, count: int, mode: str = "RGB", size: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")


def test_subfolders_are_classes(tmp_path: pathlib.Path) -> None:
    for name in ("cats", "dogs"):
        write_images(tmp_path / name, 10)
    train, held = load(str(tmp_path), 16)
    assert train.class_names == ("cats", "dogs")
    assert train.images.shape[1:] == (3, 16, 16) and len(train) + len(held) == 20
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert set(held.labels.tolist()) == {0, 1}  # stratified


def test_decoding_workers_give_the_same_dataset(tmp_path: pathlib.Path) -> None:
    """DataLoader worker processes decode the files; order and pixels do not change."""
    for name in ("a", "b"):
        write_images(tmp_path / name, 12, size=16)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    inline = load_image_folder(tmp_path, 16, workers=0)
    parallel = load_image_folder(tmp_path, 16, workers=2)
    for one, other in zip(inline, parallel, strict=True):
        assert np.array_equal(one.images.numpy(), other.images.numpy())
        assert one.labels.tolist() == other.labels.tolist()


def test_flat_folder_is_unconditional(tmp_path: pathlib.Path) -> None:
    write_images(tmp_path, 10, mode="L")
    train, _ = load(str(tmp_path), 8)
    assert train.class_names == () and train.images.shape[1] == 1


def test_unreadable_files_are_skipped_with_a_count(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path, 10)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with caplog.at_level(logging.WARNING):
        train, held = load(str(tmp_path), 8)
    assert len(train) + len(held) == 10
    assert "skipped 2 unreadable file(s)" in caplog.text


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("empty", "no readable images"),
        ("mixed", "mixed image modes"),
        ("missing", "no such folder or .npz file"),
        ("rgba", "mode RGBA; convert images to L"),
    ],
)
def test_bad_folders_are_named(tmp_path: pathlib.Path, setup: str, match: str) -> None:
    folder = tmp_path / "data"
    if setup == "empty":
        folder.mkdir()
    elif setup == "mixed":
        write_images(folder, 3, mode="RGB")
        Image.new("L", (20, 20)).save(folder / "gray.png")
    elif setup == "rgba":
        folder.mkdir()
        Image.new("RGBA", (20, 20)).save(folder / "a.png")
    with pytest.raises(DataError, match=match):
        load(str(folder), 16)


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npz_images_and_labels(tmp_path: pathlib.Path, layout: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (20, 12, 12, 3), dtype=np.uint8)
    images = {"nhw": images[..., 0], "nhwc": images, "nchw": images.transpose(0, 3, 1, 2)}[layout]
    path = tmp_path / "data.npz"
    np.savez(path, images=images, labels=np.arange(20) % 4)
    train, _ = load(str(path), 8)
    assert train.class_names == ("0", "1", "2", "3")
    assert train.images.shape[1:] == ((1 if layout == "nhw" else 3), 8, 8)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"pixels": np.zeros((5, 8, 8))}, "no 'images' array"),
        ({"images": np.zeros((5, 8))}, "expected \\(N, H, W\\[, C\\]\\)"),
        ({"images": np.zeros((5, 8, 8, 4))}, "4 channels"),
        ({"images": np.zeros((5, 8, 8)), "labels": np.zeros(4, dtype=int)}, "labels must be 5"),
    ],
)
def test_bad_npz_is_named(tmp_path: pathlib.Path, arrays: dict, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load(str(path), 8)
