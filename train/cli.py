"""`gan-train`: train a class-conditional DCGAN on scikit-learn's digits and write a checkpoint.

Examples:

    gan-train --out checkpoints/digits.pt
    gan-train --out /tmp/tiny.pt --steps 20 --width 8 --eval-per-class 0
    gan-train --out checkpoints/digits-hinge.pt --loss hinge --steps 5000
"""

from __future__ import annotations

import logging
import pathlib
import sys

import click
import torch

from ganserve.train.data import load_digits_split
from ganserve.train.loop import TrainConfig, train
from ganserve.train.losses import Loss
from ganserve.train.networks import GeneratorConfig


@click.command(help=__doc__, context_settings={"show_default": True})
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    required=True,
    help="Checkpoint file to write.",
)
@click.option("--steps", type=click.IntRange(1), default=3000, help="Training steps.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64)
@click.option(
    "--loss",
    type=click.Choice([x.value for x in Loss]),
    default="nonsaturating",
    help="Adversarial loss.",
)
@click.option("--lr-g", type=click.FloatRange(0, min_open=True), default=2e-4)
@click.option("--lr-d", type=click.FloatRange(0, min_open=True), default=2e-4)
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=0.999)
@click.option("--latent-dim", type=click.IntRange(1, 4096), default=64)
@click.option(
    "--width",
    type=click.IntRange(1, 1024),
    default=32,
    help="Feature maps of the generator's last hidden layer (and D's first).",
)
@click.option(
    "--image-size",
    type=click.Choice(["8", "16", "32", "64"]),
    default="32",
    help="Digits are upscaled from 8x8 to this size.",
)
@click.option("--unconditional", is_flag=True, help="Train without class labels.")
@click.option("--seed", type=click.IntRange(0), default=0)
@click.option(
    "--threads", type=click.IntRange(0), default=0, help="torch CPU threads (0 = torch's default)."
)
@click.option("--log-every", type=click.IntRange(1), default=100)
@click.option(
    "--eval-per-class",
    type=click.IntRange(0),
    default=100,
    help="Generated samples per class for the final evaluation (0 = skip).",
)
def main(
    out: pathlib.Path,
    steps: int,
    batch_size: int,
    loss: str,
    lr_g: float,
    lr_d: float,
    ema_decay: float,
    latent_dim: int,
    width: int,
    image_size: str,
    unconditional: bool,
    seed: int,
    threads: int,
    log_every: int,
    eval_per_class: int,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if threads:
        torch.set_num_threads(threads)
    size = int(image_size)
    data, heldout = load_digits_split(size)
    try:
        gen_config = GeneratorConfig(
            latent_dim=latent_dim,
            num_classes=0 if unconditional else len(data.class_names),
            image_size=size,
            channels=1,
            width=width,
        )
        train_config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr_g=lr_g,
            lr_d=lr_d,
            loss=Loss(loss),
            ema_decay=ema_decay,
            seed=seed,
            log_every=log_every,
            eval_per_class=eval_per_class,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    ckpt = train(gen_config, train_config, data, heldout, out)
    click.echo(f"wrote {out} (step {ckpt['step']}, metrics {ckpt['metrics']})")


if __name__ == "__main__":
    sys.exit(main())
