"""`gan-eval`: evaluate a checkpoint's EMA generator offline, beside a real-vs-real baseline.

No weights are downloaded: the feature extractor is a small classifier trained on the
training split, cached under --cache-dir by a hash of the data and the extractor. Standard
FID needs an Inception weight file you already have (--inception): pytorch-fid's
pt_inception-2015-12-05-6726825d.pth or NVIDIA's inception-2015-12-05.pt.

Examples:

\b
    gan-eval models/digits/1/checkpoint.pt
    gan-eval build/digits.pt --per-class 200 --json build/digits-eval.json
    gan-eval ckpt/faces.pt --data ~/faces          # the image size comes from the checkpoint
    gan-eval build/digits.pt --inception ~/weights/pt_inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import sys
import tempfile

import click
import numpy as np
import torch

from ganserve.train import checkpoint
from ganserve.train.data import DataError, ImageDataset, load
from ganserve.train.evaluation import EvaluationError, check_data, evaluate_generator, generate
from ganserve.train.extras import BEFORE_EVALUATION, ctrl_c_raises, exit_on_ctrl_c
from ganserve.train.features import load_or_train
from ganserve.train.inception import InceptionError, InceptionFeatures
from ganserve.train.monitor import same_file

ORDER = [
    "conditional_accuracy",
    "worst_class_accuracy",
    "frechet_distance",
    "inception_fid",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "class_coverage",
    "label_kl",
    "memorisation_ratio",
]


def _writable_folder(folder: pathlib.Path, what: str) -> None:
    """Make ``folder`` (with its parents) and check a file can be created in it, so a bad
    output location fails before the work, not after it. ``what`` names it in the error."""
    for p in [*reversed(folder.parents), folder]:
        if os.path.lexists(p) and not p.is_dir():
            raise click.ClickException(f"cannot write {what}: {p} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        where = "" if what.endswith(str(folder)) else f"folder {folder}: "
        raise click.ClickException(f"cannot write {what}: {where}{exc.strerror or exc}") from None


def _write_json(path: pathlib.Path, payload: dict) -> None:
    """Write atomically (a temp file, then a rename): a failed write leaves no half file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _refuse_overwriting_inputs(
    json_path: pathlib.Path,
    checkpoint_path: pathlib.Path,
    data: str,
    inception_path: pathlib.Path | None,
) -> None:
    """A usage error when --json names one of the files the evaluation reads: the figures
    would replace it (a checkpoint overwritten with JSON, exit 0)."""
    inputs = [("the CHECKPOINT", checkpoint_path)]
    if inception_path is not None:
        inputs.append(("the --inception weight file", inception_path))
    if data != "digits":
        inputs.append(("the --data file", pathlib.Path(data)))
    for what, path in inputs:
        if same_file(json_path, path):
            raise click.BadParameter(
                f"{json_path} is {what}, which the figures would overwrite; give another file",
                param_hint="'--json'",
            )


@click.command(help=__doc__, context_settings={"show_default": True})
@click.argument(
    "checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False, path_type=pathlib.Path)
)
@click.option("--data", default="digits", help="The data the model was trained on.")
@click.option(
    "--per-class", type=click.IntRange(10, 2000), default=100, help="Generated samples per class."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=pathlib.Path.home() / ".cache" / "ganserve" / "eval",
)
@click.option(
    "--inception",
    "inception_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="A local Inception weight file: also report standard FID (2048 pool3 features).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Also write the figures as JSON.",
)
def main(
    checkpoint_path: pathlib.Path,
    data: str,
    per_class: int,
    cache_dir: pathlib.Path,
    inception_path: pathlib.Path | None,
    json_path: pathlib.Path | None,
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if json_path is not None:  # a usage error, before any folder is made
        _refuse_overwriting_inputs(json_path, checkpoint_path, data, inception_path)
    _writable_folder(cache_dir, f"--cache-dir {cache_dir}")
    if json_path is not None:
        _writable_folder(json_path.parent, f"--json {json_path}")
    try:
        ckpt = checkpoint.load(checkpoint_path)  # its messages name the file
        try:
            generator = checkpoint.build_generator(ckpt)
        except checkpoint.CheckpointError as exc:
            raise checkpoint.CheckpointError(f"{checkpoint_path}: {exc}") from None
        train, heldout = load(data, generator.config.image_size)
        inception = InceptionFeatures(inception_path) if inception_path else None
    except (checkpoint.CheckpointError, DataError, InceptionError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        check_data(generator, train, heldout)
    except EvaluationError as exc:
        raise click.ClickException(f"--data {data} does not fit {checkpoint_path}: {exc}") from None
    try:  # before the extractor's training: a generator that makes NaN is refused at once
        samples = generate(generator, per_class)
    except EvaluationError as exc:
        raise click.ClickException(f"{checkpoint_path}: {exc}") from None
    trained_on = ckpt.get("dataset", {}).get("fingerprint")
    if trained_on and trained_on != train.fingerprint():
        click.echo(
            f"warning: {checkpoint_path} was trained on other data than --data {data}", err=True
        )
    # From here on files are written (the extractor and statistics caches, --json), each through
    # a temporary file that KeyboardInterrupt removes: Ctrl-C raises it instead of exiting.
    ctrl_c_raises()
    try:
        _evaluate(generator, train, heldout, samples, inception, cache_dir, json_path)
    except KeyboardInterrupt:
        error = click.ClickException(BEFORE_EVALUATION)
        error.exit_code = 130  # ended by SIGINT, as shells say
        raise error from None


def _evaluate(
    generator: torch.nn.Module,
    train: ImageDataset,
    heldout: ImageDataset,
    samples: tuple[torch.Tensor, np.ndarray | None],
    inception: InceptionFeatures | None,
    cache_dir: pathlib.Path,
    json_path: pathlib.Path | None,
) -> None:
    """Measure, print the table, and write --json."""
    net, info = load_or_train(train, heldout, cache_dir)
    if inception is not None:
        info.update(inception.info())
    try:
        result = evaluate_generator(
            generator,
            net,
            train,
            heldout,
            samples=samples,
            inception=inception,
            cache_dir=cache_dir,
        )
    except (InceptionError, EvaluationError) as exc:
        raise click.ClickException(str(exc)) from None
    gen, real = result["generated"], result["real_vs_real"]
    click.echo(f"{'metric':<24} {'generated':>10} {'real vs real':>13}")
    for key in ORDER:
        if key in gen:
            click.echo(f"{key:<24} {gen[key]:>10.4f} {real.get(key, float('nan')):>13.4f}")
    for key, value in info.items():
        click.echo(f"{key}: {value}")
    if json_path:
        try:
            _write_json(json_path, {**result, "extractor": info})
        except OSError as exc:
            raise click.ClickException(
                f"cannot write --json {json_path}: {exc.strerror or exc} (the figures are above)"
            ) from None


if __name__ == "__main__":
    exit_on_ctrl_c(BEFORE_EVALUATION)
    sys.exit(main())
