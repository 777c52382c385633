"""Pictures and engine timings for the generator families (docs/training.md, docs/benchmarks.md).

Examples:

\b
    .venv/bin/python docs/families.py grid build/families/digits-gan.pt \\
        docs/img/families_gan_grid.png
    .venv/bin/python docs/families.py sweep build/families/digits-style.pt \\
        docs/img/families_stylegan_truncation.png
    .venv/bin/python docs/families.py speed models/digits/2 build/families-repo/digits-gan/1 \\
        build/families-repo/digits-style/1
"""

from __future__ import annotations

import pathlib

import click
import numpy as np

PSI = (0.0, 0.5, 0.7, 1.0)
COLUMNS = 10


@click.group(help=__doc__)
def main() -> None:
    pass


@main.command()
@click.argument("checkpoint_path", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=pathlib.Path))
def grid(checkpoint_path: pathlib.Path, out: pathlib.Path) -> None:
    """Seeds 0-9 (columns) for every class (rows), as served."""
    from ganserve.train import checkpoint, sampling
    from ganserve.train.monitor import tile_grid

    generator = checkpoint.build_generator(checkpoint.load(checkpoint_path))
    seeds, labels = sampling.grid_seeds(generator.config.num_classes, COLUMNS)
    tile_grid(sampling.generate(generator, seeds, labels).numpy(), COLUMNS).save(out)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("checkpoint_path", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--classes", default="4,7", show_default=True, help="Comma-separated classes.")
def sweep(checkpoint_path: pathlib.Path, out: pathlib.Path, classes: str) -> None:
    """Truncation sweep: one row per psi in 0, 0.5, 0.7, 1; seeds 0-9 of each class."""
    from ganserve.train import checkpoint, sampling
    from ganserve.train.monitor import tile_grid

    generator = checkpoint.build_generator(checkpoint.load(checkpoint_path))
    wanted = [int(c) for c in classes.split(",")] if generator.config.num_classes else [0]
    seeds = list(range(COLUMNS)) * len(wanted)
    labels = np.repeat(wanted, COLUMNS) if generator.config.num_classes else None
    rows = [sampling.generate(generator, seeds, labels, truncation=psi) for psi in PSI]
    tile_grid(np.concatenate([r.numpy() for r in rows]), len(seeds)).save(out)
    click.echo(f"wrote {out} (rows: psi {', '.join(str(p) for p in PSI)})")


@main.command()
@click.argument(
    "versions", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=pathlib.Path)
)
@click.option("--seconds", type=click.FloatRange(0.1), default=2.0, show_default=True)
def speed(versions: tuple[pathlib.Path, ...], seconds: float) -> None:
    """Engine alone (ONNX Runtime CPU, the serving engine) at batch 1 and 64, with whichever of
    1 thread or all cores is faster; feeds built by `feeds_for_seeds` as the server does."""
    from ganserve.bench.engine import engine_throughput
    from ganserve.serve.metadata import ModelMetadata

    click.echo("| model | family | batch | images/s | ms per call | threads |")
    click.echo("| --- | --- | --- | --- | --- | --- |")
    for path in versions:  # <repository>/<name>/<version>
        m = ModelMetadata.read(path / "metadata.json")
        rates = engine_throughput(
            path.parent.parent, m.name, [1, 64], seconds=seconds, version=int(m.version)
        )
        for batch, r in rates.items():
            click.echo(
                f"| {m.name} v{m.version} | {m.architecture} | {batch} | "
                f"{r['images_per_s']:.0f} | {r['median_ms']:.3f} | {r['threads']} |"
            )


if __name__ == "__main__":
    main()
