"""`export-gan`: turn a training checkpoint into a verified ONNX model in a model repository.

Examples:

    export-gan checkpoints/digits.pt
    export-gan checkpoints/digits.pt --repository models --name digits --version 2
    export-gan checkpoints/digits.pt --version 1 --overwrite
"""

from __future__ import annotations

import logging
import pathlib
import sys

import click

from ganserve.export.onnx_export import DEFAULT_OPSET, ExportConfig, ExportError, export_checkpoint


@click.command(help=__doc__, context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default="models",
    help="Model repository root.",
)
@click.option("--name", default="digits", help="Model name.")
@click.option(
    "--version",
    type=click.IntRange(1),
    default=None,
    help="Version folder [default: highest existing + 1].",
)
@click.option("--opset", type=click.IntRange(17, 23), default=DEFAULT_OPSET, help="ONNX opset.")
@click.option("--overwrite", is_flag=True, help="Replace the version folder if it exists.")
def main(
    checkpoint: pathlib.Path,
    repository: pathlib.Path,
    name: str,
    version: int | None,
    opset: int,
    overwrite: bool,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = ExportConfig(
            repository=repository, name=name, version=version, opset=opset, overwrite=overwrite
        )
        written = export_checkpoint(checkpoint, config)
    except (ExportError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    verification = written.metadata.extra.get("verification", {})
    click.echo(
        f"wrote {written.path} (max |ONNX - PyTorch| "
        f"{verification.get('max_abs_diff', float('nan')):.2g})"
    )


if __name__ == "__main__":
    sys.exit(main())
