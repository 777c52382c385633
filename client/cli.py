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
import math
import os
import pathlib
import re
import ssl
import stat
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import click
import grpc
import numpy as np
from click.core import ParameterSource
from google.protobuf import json_format
from PIL import Image

from ganserve.client import arguments
from ganserve.client.arguments import check_target, metadata_value
from ganserve.client.client import GeneratedImage, GeneratorClient, ImageEncoding
from ganserve.v1 import admin_pb2

_path = click.Path(dir_okay=False, path_type=pathlib.Path)
_existing = click.Path(exists=True, dir_okay=False, readable=True, path_type=pathlib.Path)


MAX_SEED = 2**64 - 1
INT32 = click.IntRange(-(2**31), 2**31 - 1)


# The most items one GenerateBatch call can carry (the server's --max-items-per-call cap).
MAX_SEEDS = 65536
# Formats that write both grayscale and RGB pictures (Pillow reads many more than it writes).
MAX_TOKEN_BYTES = 4096
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")


_DIGITS = re.compile("[0-9]+")  # not str.isdigit(), which takes '²' and Arabic-Indic digits


def _seeds(value: str) -> list[int]:
    """'0-9' or '1,5,9' or '0-3,10'; ValueError saying what is wrong with ``value``."""
    ranges = []
    for part in value.split(","):
        low, dash, high = part.strip().partition("-")
        if not _DIGITS.fullmatch(low) or (dash and not _DIGITS.fullmatch(high)):
            raise ValueError(f"{part.strip()!r} is not a seed or a range like 0-9")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"range {part.strip()} runs backwards; write {last}-{first}")
        if last > MAX_SEED:
            raise ValueError(f"seed {last} is over the largest seed, 2**64-1")
        ranges.append((first, last))
    count = sum(last - first + 1 for first, last in ranges)  # len(range) stops at 2**63
    if count > MAX_SEEDS:
        raise ValueError(f"that is {count} seeds; one call carries at most {MAX_SEEDS}")
    return [seed for first, last in ranges for seed in range(first, last + 1)]


def _image_path(ctx: click.Context, param: click.Parameter, value: pathlib.Path) -> pathlib.Path:
    """Refuse a file the images could not be saved to, before any RPC runs."""
    if value.suffix.lower() not in IMAGE_SUFFIXES:
        raise click.BadParameter(
            f"cannot write images with suffix {value.suffix!r}; use {', '.join(IMAGE_SUFFIXES)}"
        )
    folder = value.parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"folder {folder} is not writable")
    return value


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses inf and nan (nan compares false with every bound, and
    an infinite timeout or rate passes a lower one)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


def checked_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: a --target whose port gRPC can dial."""
    try:
        check_target(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _read_token(token_file: pathlib.Path | None) -> str | None:
    """The bearer token from --token-file or GANSERVE_TOKEN, checked so gRPC can send it."""
    if token_file is None:
        token, source = os.environ.get("GANSERVE_TOKEN"), "GANSERVE_TOKEN"
        if token is None:
            return None
    else:
        source = f"--token-file {token_file}"
        with token_file.open("rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
        if len(data) > MAX_TOKEN_BYTES:
            raise click.BadParameter(f"{source} is over {MAX_TOKEN_BYTES} bytes")
        try:
            token = data.decode()
        except UnicodeDecodeError:
            raise click.BadParameter(f"{source} is not UTF-8 text") from None
    token = token.strip()
    if not token:
        raise click.BadParameter(f"{source} is empty")
    try:
        return metadata_value(f"the token in {source}", token)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _pem(path: pathlib.Path | None, key: pathlib.Path | None = None) -> bytes | None:
    """Read a PEM file gRPC will use, checking it first: gRPC's own error is only UNAVAILABLE
    'failed to create security handshaker'."""
    if path is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if key is None:
            context.load_verify_locations(cafile=path)
        else:
            context.load_cert_chain(path, key, password=b"")
    except ssl.SSLError as exc:
        what = (
            "a PEM CA certificate"
            if key is None
            else f"a PEM certificate matching the unencrypted PEM private key {key}"
        )
        raise click.BadParameter(f"{path} is not {what} ({exc.reason or exc})") from None
    return path.read_bytes()


ADMIN_COMMANDS = ("models", "reload")  # ModelAdmin's, served only with `ganserve serve --admin`


def _hint(exc: grpc.RpcError, ctx: click.Context | None) -> str:
    """What to fix, for the statuses whose gRPC details do not say."""
    details = exc.details() or ""
    client = getattr(ctx, "obj", None)
    tls = isinstance(client, GeneratorClient) and client.tls
    if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
        if ctx is not None and ctx.info_name in ADMIN_COMMANDS:  # only these can be off
            return " (the server does not serve ModelAdmin: start it with `--admin`)"
        return " (the server has no ganserve Generator service: is --target right?)"
    if exc.code() is not grpc.StatusCode.UNAVAILABLE:
        return ""
    if "Hostname Verification" in details or "hostname mismatch" in details:
        return (
            " (the server's certificate is not made out to the --target host: give the name "
            "it carries with --server-name)"
        )
    if "Socket closed" in details and tls:  # the handshake was refused
        return (
            " (a server that requires client certificates closes connections without one: "
            "are --tls-cert and --tls-key needed?)"
        )
    if "Socket closed" in details:
        return " (a server with TLS closes plaintext connections: is --tls-ca needed?)"
    if "Expected SETTINGS frame" in details:  # an HTTP/1 server answered
        return (
            " (that port answers HTTP/1, not gRPC: is it the /metrics port? give the server's "
            "gRPC port, 50051 by default)"
        )
    if "WRONG_VERSION_NUMBER" in details:  # a TLS handshake answered in plaintext
        return " (the server does not speak TLS: leave out --tls-ca for a plaintext one)"
    return ""


def _drop_stdout() -> None:
    """Point stdout at /dev/null after a write to it failed, or the interpreter's last flush
    fails once more."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a failed RPC, or a failed write of its images, into one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            ctx = click.get_current_context(silent=True)
            hint = _hint(exc, ctx)
            # The id, where the server may have logged the call: it echoed the id, or the
            # call ran out of time (perhaps on the server).
            rid = getattr(exc, "request_id", None)
            logged = exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
            logged = logged or any(k == "x-request-id" for k, _ in exc.trailing_metadata() or ())
            request = f" (request id {rid})" if rid and logged else ""
            raise click.ClickException(
                f"{exc.code().name}: {exc.details()}{hint}{request}"
            ) from None
        except BrokenPipeError:  # `gan-client ... | head`: the reader left, as for `cat`
            _drop_stdout()
            raise SystemExit(141) from None  # 128 + SIGPIPE, the status `cat` would end with
        except OSError as exc:
            if exc.filename is None:  # writing to stdout (the images are saved by `_save`)
                _drop_stdout()
                raise click.ClickException(
                    f"cannot write to standard output: {exc.strerror or exc}"
                ) from None
            # Checked before the call, but a disk can still fill up.
            raise click.ClickException(f"cannot write {exc.filename}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:  # the argument checks (arguments.py), ReplyError
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:  # as Ctrl-C ends the other commands: one line, exit 130
            click.echo("interrupted: nothing was written", err=True)
            raise SystemExit(130) from None

    return wrapper


@click.group(help=__doc__, context_settings={"show_default": True})
@click.option(
    "--target",
    default="localhost:50051",
    envvar="GANSERVE_TARGET",
    show_envvar=True,
    callback=checked_target,
    help="host:port of the server.",
)
@click.option(
    "--timeout",
    type=FiniteFloat(0, 1e9, min_open=True),
    default=30.0,
    help="Deadline of each call in seconds (`reload` waits at least 120 s unless it is given).",
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
@click.option(
    "--server-name",
    default=None,
    help="Name the server's certificate must carry, when not the --target host (a "
    "port-forward to localhost, say). TLS only.",
)
@click.option(
    "--request-id",
    default=None,
    help="x-request-id of the call, which the server writes on its log lines about it "
    "[default: a random id]. Errors name it.",
)
@click.pass_context
def main(
    ctx: click.Context,
    target: str,
    timeout: float,
    token_file: pathlib.Path | None,
    tls_ca: pathlib.Path | None,
    tls_cert: pathlib.Path | None,
    tls_key: pathlib.Path | None,
    server_name: str | None,
    request_id: str | None,
) -> None:
    """Call a ganserve server."""
    if request_id is not None:
        try:
            metadata_value("--request-id", request_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--request-id'") from None
        if not request_id:
            raise click.BadParameter("is empty", param_hint="'--request-id'")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if server_name is not None:
        if tls_ca is None and tls_cert is None:
            raise click.UsageError(
                "--server-name checks the server's TLS certificate: add --tls-ca"
            )
        try:
            arguments.server_name(server_name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--server-name'") from None
    ctx.obj = ctx.with_resource(
        GeneratorClient(
            target,
            timeout=timeout,
            token=_read_token(token_file),
            root_certificates=_pem(tls_ca),
            client_certificate=_pem(tls_cert, tls_key),
            client_key=tls_key.read_bytes() if tls_key else None,
            server_name=server_name,
            request_id=request_id,
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
    "--truncation", type=FiniteFloat(0, 2), default=None, help="Truncation psi (1 = none)."
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
    "--mix-layer",
    type=click.IntRange(0, 2**31 - 1),
    default=0,
    help="First style layer from --mix-seed.",
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
    _save(output, result.save)
    r = result.response
    click.echo(
        f"{output}: {r.width}x{r.height}x{r.channels} from {r.model} v{r.model_version} "
        f"(seed {r.seed}, class {r.class_label})"
    )


def _save(output: pathlib.Path, write: Callable[[pathlib.Path], Any]) -> None:
    """Write through a temporary file beside ``output``, renamed over it once whole: a save
    that fails (a disk full, a format's size limit such as WebP's 16383 pixels) leaves a file
    already there as it was. A symbolic link is written through (its target is replaced,
    not the link), and a file already there keeps its permissions."""
    try:
        target = output.resolve()  # a link's target (which may not exist yet)
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links
        raise click.ClickException(
            f"cannot save {output}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        fd, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=output.suffix
        )
    except OSError as exc:  # about output, not the temporary file's made-up name
        raise click.ClickException(f"cannot save {output}: {exc.strerror}") from None
    os.close(fd)
    temp = pathlib.Path(name)
    if mode is None:  # as a plain open() would have made it
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        write(temp)
        temp.chmod(mode)
        temp.replace(target)
    except (OSError, ValueError) as exc:  # Pillow's encoders raise both
        temp.unlink(missing_ok=True)
        raise click.ClickException(
            f"cannot save {output}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


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
    except ValueError as exc:
        raise click.BadParameter(f"{seeds!r}: {exc}", param_hint="'--seeds'") from None
    images = client.generate_batch(
        [(s, class_label) for s in seed_list],
        model=model,
        model_version=model_version,
        truncation=truncation,
    )
    _save(output, _grid(images, min(columns, len(images))).save)
    click.echo(
        f"{output}: {len(images)} images from {images[0].response.model} "
        f"v{images[0].response.model_version}"
    )


@main.command()
@click.option("--from", "seed_start", type=click.IntRange(0, 2**64 - 1), required=True)
@click.option("--to", "seed_end", type=click.IntRange(0, 2**64 - 1), required=True)
@click.option(
    "--frames", type=click.IntRange(2, 2**31 - 1), default=16, help="Frames, ends included."
)
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
        _save(
            output,
            lambda path: pictures[0].save(
                path, save_all=True, append_images=pictures[1:], duration=80, loop=0
            ),
        )
    else:
        _save(output, _grid(walk, len(walk)).save)
    click.echo(f"{output}: {len(walk)} frames from seed {seed_start} to {seed_end}")


@main.command()
@_model
@_version
@click.pass_obj
@_rpc
def info(client: GeneratorClient, model: str, model_version: str) -> None:
    """Print a model's ModelInfo as JSON, with the field names of the proto (and docs/api.md)."""
    response = client.model_info(model, model_version=model_version)
    click.echo(
        json_format.MessageToJson(
            response, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
    )


def _print_statuses(statuses: Any) -> None:
    for s in statuses:
        state = admin_pb2.ModelState.Name(s.state).removeprefix("MODEL_STATE_")
        # A reload that failed as a whole (no version named): the repository's row.
        where = f"{s.name:<16} v{s.version:<4}" if s.name else f"{'(repository)':<22}"
        line = f"{where} {state:<9} {s.backend} {s.precision}"
        click.echo(f"{line}  {s.message}".rstrip())


@main.command()
@click.pass_obj
@_rpc
def models(client: GeneratorClient) -> None:
    """List model versions and their state."""
    _print_statuses(client.list_models())


@main.command()
@click.pass_context
@_rpc
def reload(ctx: click.Context) -> None:
    """Ask the server to re-scan its model repository."""
    client: GeneratorClient = ctx.obj
    # Loads take time: the library's 120 s floor, unless --timeout was given.
    given = ctx.parent.get_parameter_source("timeout") is not ParameterSource.DEFAULT
    response = client.reload_models(timeout=client.timeout if given else None)
    if not response.changes:
        click.echo("no changes")
    _print_statuses(response.changes)
    failed = [s for s in response.changes if s.state == admin_pb2.MODEL_STATE_FAILED]
    if any(not s.name for s in failed):
        raise click.ClickException("the reload failed; the versions served before still serve")
    if failed:
        raise click.ClickException(f"{len(failed)} version(s) failed to load")


if __name__ == "__main__":
    sys.exit(main())
