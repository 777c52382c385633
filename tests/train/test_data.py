"""Image folders and .npz files become training data, or fail with one clear message."""

from __future__ import annotations

import logging
import os
import pathlib
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from ganserve.train import data
from ganserve.train.data import DataError, _Decode, _decode_workers, load, load_image_folder


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


def decoding_pids(monkeypatch: pytest.MonkeyPatch, log: pathlib.Path) -> Callable[[], set[int]]:
    """Makes each decode append its process id to ``log`` (worker processes are forked, so
    they decode through the patched class too); returns what reads and clears the log."""
    getitem = _Decode.__getitem__

    def recording(self: _Decode, i: int):
        with log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return getitem(self, i)

    monkeypatch.setattr(_Decode, "__getitem__", recording)

    def pids() -> set[int]:
        seen = {int(line) for line in log.read_text().split()}
        log.unlink()
        return seen

    return pids


def test_decoding_workers_give_the_same_dataset(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataLoader worker processes decode the files; order and pixels do not change."""
    folder = tmp_path / "images"
    for name in ("a", "b"):
        write_images(folder / name, 12, size=16)
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    pids = decoding_pids(monkeypatch, tmp_path / "pids.txt")
    inline = load_image_folder(folder, 16, workers=0)
    assert pids() == {os.getpid()}
    parallel = load_image_folder(folder, 16, workers=2)
    workers = pids()
    assert len(workers) == 2 and os.getpid() not in workers
    for one, other in zip(inline, parallel, strict=True):
        assert np.array_equal(one.images.numpy(), other.images.numpy())
        assert one.labels.tolist() == other.labels.tolist()


def test_large_folders_are_decoded_by_workers_by_default(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker costs a process: none below 512 files, a few (at most 4) from there on."""
    assert _decode_workers(511) == 0
    assert 1 <= _decode_workers(512) <= 4 and 1 <= _decode_workers(1_000_000) <= 4
    # The count load_image_folder asks for (here 2 for its 10 files) is the one it uses.
    asked: list[int] = []
    monkeypatch.setattr(data, "_decode_workers", lambda files: asked.append(files) or 2)
    write_images(tmp_path / "images", 10)
    pids = decoding_pids(monkeypatch, tmp_path / "pids.txt")
    load_image_folder(tmp_path / "images", 8)
    workers = pids()
    assert asked == [10] and len(workers) == 2 and os.getpid() not in workers


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
    (tmp_path / "odd.ppm").write_bytes(b"P6\n2 2\n70000\nxxxx")  # Pillow raises ValueError
    with caplog.at_level(logging.WARNING):
        train, held = load(str(tmp_path), 8)
    assert len(train) + len(held) == 10
    assert "skipped 3 unreadable file(s)" in caplog.text


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


def test_an_upper_case_npz_suffix_is_a_npz_file(tmp_path: pathlib.Path) -> None:
    """It was 'not a folder of images'."""
    images = np.random.default_rng(0).integers(0, 256, (20, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=images)
    (tmp_path / "data.npz").rename(tmp_path / "DATA.NPZ")
    train, _ = load(str(tmp_path / "DATA.NPZ"), 8)
    assert train.images.shape[1:] == (1, 8, 8)


def test_folder_images_are_resized_where_they_are_decoded(tmp_path: pathlib.Path) -> None:
    """A folder of large images was held whole at full size, as float32, before one resize:
    9 MB a 512x512 RGB image. Each now arrives at the training size, and the result is the
    same as resizing them all together."""
    write_images(tmp_path / "big", 10, size=64)
    decoded = _Decode([(f, 0) for f in sorted((tmp_path / "big").iterdir())], 16)
    assert {decoded[i][3].shape for i in range(len(decoded))} == {(16, 16, 3)}
    whole = np.stack(
        [
            np.asarray(Image.open(f), dtype=np.float32) / 255
            for f in sorted((tmp_path / "big").iterdir())
        ]
    )
    expected = _resize_all(whole, 16)
    got = np.stack([decoded[i][3] for i in range(len(decoded))])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return x.permute(0, 2, 3, 1).numpy()


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


def corrupt(data: bytes, start: int, count: int = 16) -> bytes:
    """Flip every bit of ``count`` bytes from ``start``."""
    flipped = bytes(b ^ 0xFF for b in data[start : start + count])
    return data[:start] + flipped + data[start + count :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("npy", "a single .npy array"),
        ("empty", "empty"),
        ("text", "not a zip archive"),
        ("truncated", "File is not a zip file"),
        ("flipped", "Bad CRC-32"),
        ("compressed", "Error -3 while decompressing"),
    ],
)
def test_unreadable_npz_is_named(tmp_path: pathlib.Path, damage: str, reason: str) -> None:
    images = np.arange(20 * 8 * 8, dtype=np.uint8).reshape(20, 8, 8)
    good, path = tmp_path / "good.npz", tmp_path / "bad.npz"
    (np.savez_compressed if damage == "compressed" else np.savez)(good, images=images)
    data = good.read_bytes()
    if damage == "npy":
        np.save(tmp_path / "a.npy", images)
        data = (tmp_path / "a.npy").read_bytes()
    elif damage in ("empty", "text"):
        data = b"" if damage == "empty" else b"images: 1 2 3\n"
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data = corrupt(data, data.index(images.tobytes()))  # pixels, not the zip structure
    else:
        data = corrupt(data, 100)  # inside the deflate stream of images.npy
    path.write_bytes(data)
    with pytest.raises(DataError, match=f"bad.npz: not a readable .npz file \\({reason}"):
        load(str(path), 8)


@pytest.mark.parametrize("shape", [(10, 0, 0), (0, 8, 8), (4, 8, 8, 0)])
def test_npz_with_no_pixels_is_refused(tmp_path: pathlib.Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros(shape, dtype=np.uint8), labels=np.zeros(shape[0], dtype=int))
    with pytest.raises(DataError, match=re.escape(f"images has shape {shape}, which is empty")):
        load(str(path), 8)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": np.full((10, 8, 8), "a")}, "images has dtype <U1; expected integers 0..255"),
        ({"images": np.full((10, 8, 8), None)}, "'images' cannot be read \\(Object arrays"),
        (
            {"images": np.zeros((10, 8, 8), np.uint8), "labels": np.full(10, None)},
            "'labels' cannot be read \\(Object arrays.*save it as integers 0..K-1",
        ),
        (
            {"images": np.zeros((10, 8, 8), np.uint8), "labels": np.zeros(10)},
            "labels has dtype float64; expected integers 0..K-1",
        ),
    ],
)
def test_npz_arrays_of_the_wrong_dtype_name_the_key(
    tmp_path: pathlib.Path, arrays: dict, match: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load(str(path), 8)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([0] * 9 + [1], "need at least 2 images per class .*\\(class '1' has 1\\)"),
        (
            np.arange(10) % 5,
            "10 images for 5 classes leave 2 for the held-out split.* at least 21 images",
        ),
    ],
)
def test_npz_with_too_few_images_per_class_is_refused(
    tmp_path: pathlib.Path, labels: list[int], match: str
) -> None:
    path = tmp_path / "few.npz"
    np.savez(path, images=np.zeros((10, 8, 8), np.uint8), labels=np.array(labels))
    with pytest.raises(DataError, match=match):
        load(str(path), 8)


def test_folder_with_too_few_images_per_class_is_refused(tmp_path: pathlib.Path) -> None:
    for i in range(5):
        write_images(tmp_path / "data" / f"c{i}", 2, size=8)
    with pytest.raises(DataError, match="data: 10 images for 5 classes leave 2 for the held-out"):
        load(str(tmp_path / "data"), 8)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("huge", "found max 1000000000 with only 20 images"),
        ("negative", "found min -1"),
        ("gap", "class 2 has no images"),
    ],
)
def test_npz_labels_must_be_every_class_from_zero(
    tmp_path: pathlib.Path, case: str, match: str
) -> None:
    labels = np.arange(20) % 3
    if case == "gap":
        labels[labels == 2] = 3  # classes 0, 1, 3
    else:
        labels[0] = 10**9 if case == "huge" else -1
    path = tmp_path / "labels.npz"
    np.savez(path, images=np.zeros((20, 8, 8), np.uint8), labels=labels)
    with pytest.raises(DataError, match=f"labels must be 0..K-1 with every class present; {match}"):
        load(str(path), 8)


@pytest.mark.parametrize(
    ("images", "found"),
    [
        (np.arange(20 * 64, dtype=np.uint16).reshape(20, 8, 8) * 50, "\\(uint16\\) range 0..63950"),
        (
            np.linspace(0, 255, 20 * 64, dtype=np.float32).reshape(20, 8, 8),
            "\\(float32\\) range 0..255",
        ),
        (np.linspace(-1, 1, 20 * 64).reshape(20, 8, 8), "\\(float64\\) range -1..1"),
    ],
)
def test_npz_pixels_outside_the_range_are_refused(
    tmp_path: pathlib.Path, images: np.ndarray, found: str
) -> None:
    path = tmp_path / "range.npz"
    np.savez(path, images=images)
    with pytest.raises(DataError, match=f"images {found}; expected integers 0..255"):
        load(str(path), 8)


def test_npz_integer_images_of_any_type_are_8_bit(tmp_path: pathlib.Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=images)
    np.savez(tmp_path / "i64.npz", images=images.astype(np.int64))
    u8, i64 = load(str(tmp_path / "u8.npz"), 8), load(str(tmp_path / "i64.npz"), 8)
    for one, other in zip(u8, i64, strict=True):
        assert np.array_equal(one.images.numpy(), other.images.numpy())


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_pixels_are_refused(tmp_path: pathlib.Path, value: float) -> None:
    images = np.full((20, 8, 8), 0.5, dtype=np.float32)
    images[3, 4, 5] = value
    path = tmp_path / "nan.npz"
    np.savez(path, images=images)
    with pytest.raises(DataError, match=r"nan\.npz: images hold NaN or infinite values"):
        load(str(path), 8)


def test_image_too_large_to_decode_is_named(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's decompression-bomb limit, lowered so that a 20x20 image stands for a huge one."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    write_images(tmp_path / "data" / "a", 5, size=8)
    write_images(tmp_path / "data" / "b", 5, size=8)
    Image.new("L", (20, 20)).save(tmp_path / "data" / "b" / "huge.png")
    with pytest.raises(DataError, match=r"huge\.png: too large to load .*; shrink it"):
        load(str(tmp_path / "data"), 8)


def test_empty_class_folder_is_named(tmp_path: pathlib.Path) -> None:
    write_images(tmp_path / "data" / "a", 5, size=8)
    (tmp_path / "data" / "b").mkdir()
    with pytest.raises(DataError, match="data/b: empty class folder"):
        load(str(tmp_path / "data"), 8)


def test_a_class_folder_name_that_is_not_utf8_is_refused(tmp_path: pathlib.Path) -> None:
    """Such a name trained and exported, and then GetModelInfo failed with INTERNAL."""
    write_images(tmp_path / "data" / "a", 5, size=8)
    write_images(pathlib.Path(os.fsdecode(os.fsencode(tmp_path / "data") + b"/\xff")), 5, size=8)
    with pytest.raises(DataError, match=r"class name '\\udcff' is not valid UTF-8 text; rename"):
        load(str(tmp_path / "data"), 8)


def test_images_beside_class_folders_are_named(tmp_path: pathlib.Path) -> None:
    for name in ("a", "b"):
        write_images(tmp_path / "data" / name, 5, size=8)
    (tmp_path / "data" / "README.txt").write_text("not an image: ignored")
    train, _ = load(str(tmp_path / "data"), 8)
    assert train.class_names == ("a", "b")
    Image.new("L", (8, 8)).save(tmp_path / "data" / "stray.PNG")
    with pytest.raises(DataError, match=r"stray\.PNG: image outside the class folders"):
        load(str(tmp_path / "data"), 8)


@pytest.mark.parametrize("spec", ["", "  "])
def test_empty_data_spec_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    monkeypatch.chdir(tmp_path)  # an empty path would otherwise mean this folder
    write_images(tmp_path, 10, size=8)
    with pytest.raises(DataError, match="--data is empty"):
        load(spec, 8)


def test_hidden_folders_and_files_are_not_data(tmp_path: pathlib.Path) -> None:
    """Jupyter's .ipynb_checkpoints is not a class, nor a .cache folder inside a class."""
    for name in ("a", "b"):
        write_images(tmp_path / "data" / name, 5, size=8)
    write_images(tmp_path / "data" / ".ipynb_checkpoints", 5, size=8)
    write_images(tmp_path / "data" / "a" / ".cache", 3, size=8)
    train, heldout = load(str(tmp_path / "data"), 8)
    assert train.class_names == ("a", "b")
    assert len(train) + len(heldout) == 10
