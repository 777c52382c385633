"""`gan-client`: call a ganserve server from the shell.

Examples:

    gan-client generate --seed 42 --class 7 -o seven.png
    gan-client generate --seed 42 --class 7 --target localhost:50051 --model digits -o seven.png
    gan-client info
"""

from __future__ import annotations

import pathlib
import sys

import click
import grpc
from google.protobuf import json_format

from ganserve.client.client import GeneratorClient, ImageEncoding

_target = click.option(
    "--target",
    default="localhost:50051",
    envvar="GANSERVE_TARGET",
    show_default=True,
    help="host:port of the server.",
)
_model = click.option("--model", default="", help="Model name [default: the server's default].")
_timeout = click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Deadline in seconds.",
)


@click.group(context_settings={"show_default": True})
def main() -> None:
    """Call a ganserve server."""


@main.command(help=__doc__)
@_target
@_model
@_timeout
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    required=True,
    help="Seed of the latent vector (unsigned 64-bit).",
)
@click.option(
    "--class",
    "class_label",
    type=int,
    default=None,
    help="Class label (required for conditional models).",
)
@click.option("--raw", is_flag=True, help="Ask for raw uint8 pixels instead of PNG on the wire.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    required=True,
    help="Where to write the image (.png, .jpg, ...).",
)
def generate(
    target: str,
    model: str,
    timeout: float,
    seed: int,
    class_label: int | None,
    raw: bool,
    output: pathlib.Path,
) -> None:
    encoding = ImageEncoding.RAW_UINT8 if raw else ImageEncoding.PNG
    with GeneratorClient(target, timeout=timeout) as client:
        try:
            result = client.generate(seed, class_label, model=model, encoding=encoding)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None
    result.save(output)
    r = result.response
    click.echo(
        f"{output}: {r.width}x{r.height}x{r.channels} from {r.model} v{r.model_version} "
        f"(seed {r.seed}, class {r.class_label})"
    )


@main.command()
@_target
@_model
@_timeout
def info(target: str, model: str, timeout: float) -> None:
    """Print a model's ModelInfo as JSON."""
    with GeneratorClient(target, timeout=timeout) as client:
        try:
            response = client.model_info(model)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None
    click.echo(json_format.MessageToJson(response, always_print_fields_with_no_presence=True))


if __name__ == "__main__":
    sys.exit(main())
