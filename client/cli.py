"""`gan-client`: call a ganserve server from the shell.

Examples:

\b
    gan-client generate --seed 42 --class 7 -o seven.png
    gan-client --target host:50051 generate --seed 42 --class 7 --truncation 0.7 -o seven.png
    gan-client batch --seeds 0-9 --class 3 -o threes.png          # a grid in one round trip
    gan-client interpolate --from 1 --to 2 --class 5 --frames 16 -o walk.gif
    gan-client info
    gan-client models
    gan-client reload

Connection options go before the command: gan-client --target host:50051 --token-file t info.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import click
import grpc
import numpy as np
from google.protobuf import json_format
from PIL import Image

from ganserve.client.client import GeneratedImage, GeneratorClient, ImageEncoding
from ganserve.v1 import admin_pb2

_path = click.Path(dir_okay=False, path_type=pathlib.Path)
_existing = click.Path(exists=True, dir_okay=False, readable=True, path_type=pathlib.Path)


MAX_SEED = 2**64 - 1
INT32 = click.IntRange(-(2**31), 2**31 - 1)


def _seeds(value: str) -> list[int]:
    """'0-9' or '1,5,9' or '0-3,10'; ValueError when malformed or outside 0..2**64-1."""
    out = []
    for part in value.split(","):
        low, _, high = part.strip().partition("-")
        out += range(int(low), int(high) + 1) if high else [int(low)]
    if not out or min(out) < 0 or max(out) > MAX_SEED:
        raise ValueError(value)
    return out


def _image_path(ctx: click.Context, param: click.Parameter, value: pathlib.Path) -> pathlib.Path:
    """Refuse a file suffix Pillow cannot write, before any RPC runs."""
    if value.suffix.lower() not in Image.registered_extensions():
        raise click.BadParameter(
            f"cannot write images with suffix {value.suffix!r}; use .png, .jpg, .gif, ..."
        )
    return value


def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a failed RPC into one line naming the status, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            hint = ""
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:  # only ModelAdmin can be off
                hint = " (the server does not serve it: ModelAdmin needs `ganserve serve --admin`)"
            raise click.ClickException(f"{exc.code().name}: {exc.details()}{hint}") from None

    return wrapper


@click.group(help=__doc__, context_settings={"show_default": True})
@click.option(
    "--target",
    default="localhost:50051",
    envvar="GANSERVE_TARGET",
    show_envvar=True,
    help="host:port of the server.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    help="Deadline of each call in seconds.",
)
@click.option(
    "--token-file",
    type=_existing,
    default=None,
    envvar="GANSERVE_TOKEN_FILE",
    show_envvar=True,
    help="File holding the bearer token (or set GANSERVE_TOKEN).",
)
@click.option("--tls-ca", type=_existing, default=None, help="PEM CA bundle: use TLS.")
@click.option("--tls-cert", type=_existing, default=None, help="PEM client certificate (mTLS).")
@click.option("--tls-key", type=_existing, default=None, help="PEM client key (mTLS).")
@click.pass_context
def main(
    ctx: click.Context,
    target: str,
    timeout: float,
    token_file: pathlib.Path | None,
    tls_ca: pathlib.Path | None,
    tls_cert: pathlib.Path | None,
    tls_key: pathlib.Path | None,
) -> None:
    """Call a ganserve server."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    token = token_file.read_text().strip() if token_file else os.environ.get("GANSERVE_TOKEN")
    ctx.obj = ctx.with_resource(
        GeneratorClient(
            target,
            timeout=timeout,
            token=token,
            root_certificates=tls_ca.read_bytes() if tls_ca else None,
            client_certificate=tls_cert.read_bytes() if tls_cert else None,
            client_key=tls_key.read_bytes() if tls_key else None,
        )
    )


_model = click.option("--model", default="", help="Model name [default: the server's default].")
_version = click.option("--model-version", default="", help="Version [default: newest].")
_class = click.option(
    "--class",
    "class_label",
    type=INT32,
    default=None,
    help="Class label (required for conditional models).",
)
_truncation = click.option(
    "--truncation", type=click.FloatRange(0, 2), default=None, help="Truncation psi (1 = none)."
)


@main.command()
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    required=True,
    help="Seed of the latent vector (unsigned 64-bit).",
)
@_class
@_model
@_version
@_truncation
@click.option(
    "--mix-seed",
    type=click.IntRange(0, 2**64 - 1),
    default=None,
    help="Style mixing (StyleGAN-style models): a second seed for the later style layers.",
)
@click.option(
    "--mix-layer", type=click.IntRange(0), default=0, help="First style layer from --mix-seed."
)
@click.option("--raw", is_flag=True, help="Ask for raw uint8 pixels instead of PNG on the wire.")
@click.option(
    "-o",
    "--output",
    type=_path,
    callback=_image_path,
    required=True,
    help="Image file (.png, .jpg, ...).",
)
@click.pass_obj
@_rpc
def generate(
    client: GeneratorClient,
    seed: int,
    class_label: int | None,
    model: str,
    model_version: str,
    truncation: float | None,
    mix_seed: int | None,
    mix_layer: int,
    raw: bool,
    output: pathlib.Path,
) -> None:
    """One image for one seed."""
    encoding = ImageEncoding.RAW_UINT8 if raw else ImageEncoding.PNG
    result = client.generate(
        seed,
        class_label,
        model=model,
        model_version=model_version,
        encoding=encoding,
        truncation=truncation,
        style_mix_seed=mix_seed,
        style_mix_layer=mix_layer,
    )
    result.save(output)
    r = result.response
    click.echo(
        f"{output}: {r.width}x{r.height}x{r.channels} from {r.model} v{r.model_version} "
        f"(seed {r.seed}, class {r.class_label})"
    )


def _grid(images: list[GeneratedImage], columns: int) -> Image.Image:
    tiles = [img.pixels for img in images]  # (H, W, C) each
    h, w, c = tiles[0].shape
    rows = -(-len(tiles) // columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = tile
    return Image.fromarray(grid[:, :, 0] if c == 1 else grid)


@main.command()
@click.option("--seeds", required=True, help="Seeds: '0-9', '1,5,9' or '0-3,10'.")
@_class
@_model
@_version
@_truncation
@click.option("--columns", type=click.IntRange(1), default=10, help="Grid columns.")
@click.option(
    "-o", "--output", type=_path, callback=_image_path, required=True, help="Grid image file."
)
@click.pass_obj
@_rpc
def batch(
    client: GeneratorClient,
    seeds: str,
    class_label: int | None,
    model: str,
    model_version: str,
    truncation: float | None,
    columns: int,
    output: pathlib.Path,
) -> None:
    """Many seeds in one GenerateBatch call, saved as a grid."""
    try:
        seed_list = _seeds(seeds)
    except ValueError:
        raise click.BadParameter(f"{seeds!r} is not a seed list like '0-9' or '1,5,9'") from None
    images = client.generate_batch(
        [(s, class_label) for s in seed_list],
        model=model,
        model_version=model_version,
        truncation=truncation,
    )
    _grid(images, columns).save(output)
    click.echo(
        f"{output}: {len(images)} images from {images[0].response.model} "
        f"v{images[0].response.model_version}"
    )


@main.command()
@click.option("--from", "seed_start", type=click.IntRange(0, 2**64 - 1), required=True)
@click.option("--to", "seed_end", type=click.IntRange(0, 2**64 - 1), required=True)
@click.option("--frames", type=click.IntRange(2), default=16, help="Frames, ends included.")
@_class
@_model
@_version
@_truncation
@click.option(
    "-o",
    "--output",
    type=_path,
    callback=_image_path,
    required=True,
    help="Animated .gif, or any other image format for a strip of frames.",
)
@click.pass_obj
@_rpc
def interpolate(
    client: GeneratorClient,
    seed_start: int,
    seed_end: int,
    frames: int,
    class_label: int | None,
    model: str,
    model_version: str,
    truncation: float | None,
    output: pathlib.Path,
) -> None:
    """A latent walk between two seeds (streamed)."""
    walk = list(
        client.interpolate(
            seed_start,
            seed_end,
            frames,
            class_label,
            model=model,
            model_version=model_version,
            truncation=truncation,
        )
    )
    if output.suffix.lower() == ".gif":
        pictures = [f.to_pil() for f in walk]
        pictures[0].save(output, save_all=True, append_images=pictures[1:], duration=80, loop=0)
    else:
        _grid(walk, len(walk)).save(output)
    click.echo(f"{output}: {len(walk)} frames from seed {seed_start} to {seed_end}")


@main.command()
@_model
@click.pass_obj
@_rpc
def info(client: GeneratorClient, model: str) -> None:
    """Print a model's ModelInfo as JSON."""
    response = client.model_info(model)
    click.echo(json_format.MessageToJson(response, always_print_fields_with_no_presence=True))


def _print_statuses(statuses: Any) -> None:
    for s in statuses:
        state = admin_pb2.ModelState.Name(s.state).removeprefix("MODEL_STATE_")
        line = f"{s.name:<16} v{s.version:<4} {state:<9} {s.backend}"
        click.echo(f"{line}  {s.message}".rstrip())


@main.command()
@click.pass_obj
@_rpc
def models(client: GeneratorClient) -> None:
    """List model versions and their state."""
    _print_statuses(client.list_models())


@main.command()
@click.pass_obj
@_rpc
def reload(client: GeneratorClient) -> None:
    """Ask the server to re-scan its model repository."""
    response = client.reload_models()
    if not response.changes:
        click.echo("no changes")
    _print_statuses(response.changes)
    failed = [s for s in response.changes if s.state == admin_pb2.MODEL_STATE_FAILED]
    if failed:
        raise click.ClickException(f"{len(failed)} version(s) failed to load")


if __name__ == "__main__":
    sys.exit(main())
