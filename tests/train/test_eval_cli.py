"""gan-eval from the shell on bad input: one clear line naming what to fix and a non-zero
exit, before the work (training the feature extractor, generating, measuring), never a
traceback, a hang, or figures that mean nothing."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from ganserve.train import checkpoint
from ganserve.train.eval_cli import main
from ganserve.train.networks import GeneratorConfig, create_generator

SIZE = 8  # small images: every checkpoint and data folder here is 8x8


def make_checkpoint(path: pathlib.Path, *, nan: bool = False, **config: object) -> pathlib.Path:
    """An untrained generator saved as gan-train saves one (the tests judge the input
    checks, not the figures); ``nan`` sets every weight to NaN, as a diverged run would."""
    cfg = GeneratorConfig(width=8, latent_dim=8, embed_dim=4, image_size=SIZE, **config)
    generator = create_generator(cfg)
    state = generator.state_dict()
    if nan:
        state = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in state.items()
        }
    checkpoint.save({"generator_config": cfg.to_dict(), "generator_ema": state, "step": 0}, path)
    return path


def make_folder(path: pathlib.Path, *, images: int, classes: int, mode: str = "L") -> str:
    """``images`` random images, spread over ``classes`` subfolders (0: flat, unlabelled)."""
    rng = np.random.default_rng(0)
    shape = (SIZE, SIZE, 3) if mode == "RGB" else (SIZE, SIZE)
    for i in range(images):
        folder = path / f"class{i % classes}" if classes else path
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random(shape) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"{i}.png")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval-input")
    (root / "afile").write_text("")
    return {
        "digits": str(make_checkpoint(root / "digits.pt", num_classes=10)),
        "four": str(make_checkpoint(root / "four.pt", num_classes=4)),
        "plain": str(make_checkpoint(root / "plain.pt", num_classes=0)),
        "nan": str(make_checkpoint(root / "nan.pt", num_classes=10, nan=True)),
        "rgb": make_folder(root / "rgb", images=60, classes=10, mode="RGB"),
        "two": make_folder(root / "two", images=40, classes=2),
        "five": make_folder(root / "five", images=5, classes=0),
        "afile": str(root / "afile"),
    }


def gan_eval(tmp_path: pathlib.Path, *args: str) -> Result:
    args = ("--per-class", "10", *args)
    if "--cache-dir" not in args:
        args = (*args, "--cache-dir", str(tmp_path / "cache"))
    return CliRunner().invoke(main, list(args))


def refused(result: Result) -> str:
    """The one error line of a clean refusal (exit 1, no exception escaped)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (
        result.output,
        result.exception,
    )
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.timeout(120)
def test_generator_that_makes_nan_is_refused_not_a_hang(
    files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    error = refused(gan_eval(tmp_path, files["nan"]))
    assert "the generator's output is not finite (NaN or infinity) for 100 of 100 samples" in error
    assert "(first: seed 20000, class 0)" in error and "evaluate an earlier checkpoint" in error
    assert not list((tmp_path / "cache").glob("extractor-*")), "refused after the work"


def test_rgb_data_for_a_greyscale_checkpoint_is_refused_with_both_shapes(
    files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    error = refused(gan_eval(tmp_path, files["digits"], "--data", files["rgb"]))
    assert f"--data {files['rgb']} does not fit {files['digits']}" in error
    assert (
        "the data's images are RGB (3, 8, 8) (C, H, W) but the generator makes greyscale " in error
    )
    assert "(1, 8, 8)" in error


def test_data_with_other_classes_than_a_conditional_checkpoint_is_refused(
    files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    error = refused(gan_eval(tmp_path, files["four"], "--data", files["two"]))
    assert "the generator has 4 classes but the data has 2 (class0, class1)" in error
    assert "the classes must match" in error


def test_too_few_images_are_refused_with_the_minimum(
    files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    error = refused(gan_eval(tmp_path, files["plain"], "--data", files["five"]))
    assert "the data has 5 images, split into 4 for training and 1 held out" in error
    assert "need at least 6 in each: use at least 26 images" in error


@pytest.mark.parametrize(
    ("option", "where", "message"),
    [
        ("--cache-dir", "{afile}/c", "cannot write --cache-dir {afile}/c: {afile} is a file"),
        ("--cache-dir", "/proc/c", "cannot write --cache-dir /proc/c: No such file or directory"),
        ("--json", "{afile}/e.json", "cannot write --json {afile}/e.json: {afile} is a file"),
        ("--json", "/proc/x/e.json", "cannot write --json /proc/x/e.json: folder /proc/x: "),
    ],
)
def test_unwritable_output_is_refused_before_the_work(
    option: str, where: str, message: str, files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    if "/proc/" in where and not pathlib.Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, where no folder can be made")
    where, message = (s.format(afile=files["afile"]) for s in (where, message))
    error = refused(gan_eval(tmp_path, files["digits"], option, where))
    assert error.startswith(f"Error: {message}"), error
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_size_gan_train_does_not_allow_is_one_line_before_anything_is_built(
    files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    """A latent_dim of 10**9 was a traceback ending in "can't allocate memory"."""
    ckpt = torch.load(files["digits"], weights_only=True)
    ckpt["generator_config"] = {**ckpt["generator_config"], "latent_dim": 10**9}
    path = tmp_path / "huge.pt"
    torch.save(ckpt, path)
    assert refused(gan_eval(tmp_path, str(path))) == (
        f"Error: {path}: checkpoint generator_config latent_dim 1000000000 is out of range: "
        "gan-train's --latent-dim allows 1..4096"
    )


@pytest.mark.parametrize("how", ["same-path", "other-spelling", "symbolic-link", "hard-link"])
def test_json_that_names_the_checkpoint_is_a_usage_error_and_leaves_it_whole(
    how: str, files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    """--json CHECKPOINT overwrote the checkpoint with the figures, exit 0."""
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(pathlib.Path(files["digits"]).read_bytes())
    before = ckpt.read_bytes()
    json_path = {
        "same-path": ckpt,
        "other-spelling": tmp_path / "sub" / ".." / "m.pt",
        "symbolic-link": tmp_path / "link.json",
        "hard-link": tmp_path / "hard.json",
    }[how]
    if how == "symbolic-link":
        json_path.symlink_to(ckpt)
    elif how == "hard-link":
        json_path.hardlink_to(ckpt)
    result = gan_eval(tmp_path, str(ckpt), "--json", str(json_path))
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--json': {json_path} is the CHECKPOINT, which the figures " in (
        result.output
    )
    assert ckpt.read_bytes() == before
    assert not (tmp_path / "cache").exists()


def test_json_that_names_the_inception_weights_is_a_usage_error(
    files: dict[str, str], tmp_path: pathlib.Path
) -> None:
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"weights")
    result = gan_eval(
        tmp_path, files["digits"], "--inception", str(weights), "--json", str(weights)
    )
    assert result.exit_code == 2, result.output
    assert "is the --inception weight file, which the figures would overwrite" in result.output
    assert weights.read_bytes() == b"weights"
