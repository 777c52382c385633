"""`export-gan`: turn a training checkpoint into a verified model version for serving.

Writes <repository>/<name>/<version>/ with model.onnx (FP32, verified against PyTorch),
metadata.json, and on request model.fp16.onnx and model.plan (TensorRT; built by default
where tensorrt and a GPU are present). Nothing is written unless every artifact passes.

Examples:

\b
    export-gan checkpoints/digits.pt
    export-gan checkpoints/digits.pt --repository models --name digits --version 2
    export-gan checkpoints/digits.pt --version 1 --force
    export-gan checkpoints/digits.pt --fp16-onnx --tensorrt on --precision fp16 --max-batch 64
"""

from __future__ import annotations

import logging
import pathlib
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

# Light imports only: the pipeline (torch, onnx) loads inside main, after the interrupt
# handler is in place, so a Ctrl-C during start-up is one line too.
from ganserve.export.config import ExportConfig, Precision, TensorRTMode
from ganserve.export.errors import ExportError
from ganserve.export.publish import catch_stop_signals, restore_stop_signals


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


class Interrupted(click.ClickException):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the export; exit 128 + its number, as a
    shell reports a process the signal killed."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@contextmanager
def _interrupts_reported() -> Iterator[list[pathlib.Path]]:
    """Turn Ctrl-C, SIGTERM or SIGHUP inside the block into `Interrupted`, whatever it
    surfaced as: torch's exporter can wrap the KeyboardInterrupt raised in its own error (one
    that hit an import shows up as an AttributeError inside a TorchExportError), so the
    handler records that it fired. The pipeline removes its staging folder on the way out.
    The block appends the version's folder to the list it gets once the version is published,
    so that a signal after that (while printing) says so instead of "nothing written"."""
    fired: list[int] = []
    published: list[pathlib.Path] = []

    def on_signal(signum: int, frame: object) -> None:
        fired.append(signum)
        raise KeyboardInterrupt

    previous = catch_stop_signals(on_signal)
    try:
        yield published
    except BaseException:
        if not fired:
            raise
        signum = fired[0]
        what = (
            "interrupted"
            if signum == signal.SIGINT
            else f"stopped by {signal.Signals(signum).name}"
        )
        if published:
            raise Interrupted(
                f"{what} after publishing; {published[0]} is complete", signum
            ) from None
        raise Interrupted(f"{what}: nothing was written", signum) from None
    finally:
        restore_stop_signals(previous)


@click.command(help=__doc__, context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default="models",
    help="Model repository root.",
)
@click.option(
    "--name",
    default=None,
    help="Model name [default: the training data's: digits for the built-in digits, else the "
    "data folder's or file's name].",
)
@click.option(
    "--version",
    type=click.IntRange(1),
    default=None,
    help="Version folder [default: highest existing + 1].",
)
@click.option("--force", is_flag=True, help="Replace the version folder if it exists.")
@click.option("--opset", type=click.IntRange(17, 23), default=18, help="ONNX opset.")
@click.option(
    "--optimize/--no-optimize",
    default=True,
    help="Run the exporter's graph optimiser (constant folding, dead code).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 4096),
    default=64,
    help="Largest batch the server will send: TensorRT profile max, verified size.",
)
@click.option(
    "--opt-batch",
    type=click.IntRange(1, 4096),
    default=None,
    help="Batch size TensorRT tunes for [default: --max-batch].",
)
@click.option(
    "--verify-batch-sizes",
    default=None,
    callback=_sizes,
    help="Comma-separated batch sizes to verify, each in 1..MAX_BATCH [default: 1,7,MAX_BATCH].",
)
@click.option("--fp16-onnx", is_flag=True, help="Also write model.fp16.onnx.")
@click.option(
    "--tensorrt",
    type=click.Choice([m.value for m in TensorRTMode]),
    default="auto",
    help="Build model.plan: when possible, always (fail if impossible), never.",
)
@click.option(
    "--precision",
    type=click.Choice([p.value for p in Precision]),
    default="fp32",
    help="TensorRT engine precision.",
)
@click.option(
    "--device",
    type=click.IntRange(0),
    default=0,
    help="CUDA device for TensorRT and the FP16 ONNX check.",
)
def main(checkpoint: pathlib.Path, **options: Any) -> None:
    with _interrupts_reported() as published:  # from here to the last line printed
        _export(checkpoint, published, **options)


def _export(
    checkpoint: pathlib.Path,
    published: list[pathlib.Path],
    *,
    repository: pathlib.Path,
    name: str | None,
    version: int | None,
    force: bool,
    opset: int,
    optimize: bool,
    max_batch: int,
    opt_batch: int | None,
    verify_batch_sizes: tuple[int, ...] | None,
    fp16_onnx: bool,
    tensorrt: str,
    precision: str,
    device: int,
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    outside = [b for b in verify_batch_sizes or () if not 1 <= b <= max_batch]
    if outside:
        raise click.BadParameter(
            f"each size must be in 1..--max-batch ({max_batch}), got {','.join(map(str, outside))}",
            param_hint="'--verify-batch-sizes'",
        )
    try:
        config = ExportConfig(
            repository=repository,
            name=name,
            version=version,
            force=force,
            opset=opset,
            optimize=optimize,
            max_batch=max_batch,
            opt_batch=opt_batch,
            verify_batch_sizes=verify_batch_sizes,
            fp16_onnx=fp16_onnx,
            tensorrt=TensorRTMode(tensorrt),
            tensorrt_precision=Precision(precision),
            device_id=device,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from ganserve.export.pipeline import export_checkpoint

    try:
        result = export_checkpoint(checkpoint, config, on_published=published.append)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    for note in result.notes:
        click.echo(note)
    if result.removed:  # --force: what the old version had and the new one does not
        click.echo(
            f"warning: --force removed {', '.join(result.removed)} with the version it replaced "
            f"({result.version.path}): the new version has no such file",
            err=True,
        )
    extra = result.version.metadata.extra
    for key, label in (
        ("onnx", "model.onnx"),
        ("onnx_fp16", "model.fp16.onnx"),
        ("tensorrt", "model.plan"),
    ):
        if key in extra:
            v = extra[key]["verification"]
            click.echo(
                f"  {label:<16} {extra[key]['precision']}: max |diff| "
                f"{v['max_abs_diff']:.2g}, max {v['max_level_diff']} uint8 levels, "
                f"batch sizes {v['batch_sizes']}"
            )
    click.echo(f"wrote {result.version.path}")


if __name__ == "__main__":
    sys.exit(main())
