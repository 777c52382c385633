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

import json
import logging
import pathlib
import sys

import click

from ganserve.train import checkpoint
from ganserve.train.data import DataError, load
from ganserve.train.evaluation import evaluate_generator
from ganserve.train.features import load_or_train
from ganserve.train.inception import InceptionError, InceptionFeatures

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


@click.command(help=__doc__, context_settings={"show_default": True})
@click.argument(
    "checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False, path_type=pathlib.Path)
)
@click.option("--data", default="digits", help="The data the model was trained on.")
@click.option(
    "--per-class", type=click.IntRange(10, 10_000), default=100, help="Generated samples per class."
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
    try:
        ckpt = checkpoint.load(checkpoint_path)
        generator = checkpoint.build_generator(ckpt)
        train, heldout = load(data, generator.config.image_size)
        inception = InceptionFeatures(inception_path) if inception_path else None
    except (checkpoint.CheckpointError, DataError, InceptionError) as exc:
        raise click.ClickException(str(exc)) from None
    trained_on = ckpt.get("dataset", {}).get("fingerprint")
    if trained_on and trained_on != train.fingerprint():
        click.echo(
            f"warning: {checkpoint_path} was trained on other data than --data {data}", err=True
        )
    net, info = load_or_train(train, heldout, cache_dir)
    if inception is not None:
        info.update(inception.info())
    try:
        result = evaluate_generator(
            generator,
            net,
            train,
            heldout,
            per_class=per_class,
            inception=inception,
            cache_dir=cache_dir,
        )
    except InceptionError as exc:
        raise click.ClickException(str(exc)) from None
    gen, real = result["generated"], result["real_vs_real"]
    click.echo(f"{'metric':<24} {'generated':>10} {'real vs real':>13}")
    for key in ORDER:
        if key in gen:
            click.echo(f"{key:<24} {gen[key]:>10.4f} {real.get(key, float('nan')):>13.4f}")
    for key, value in info.items():
        click.echo(f"{key}: {value}")
    if json_path:
        json_path.write_text(json.dumps({**result, "extractor": info}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
