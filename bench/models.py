"""Models the benchmark needs besides the bundled one: a DCGAN at 64x64 RGB (the DCGAN paper's
architecture: latent 100, feature width 64). Its weights are the DCGAN initialisation,
untrained: speed does not depend on weight values, and the export is verified all the same."""

from __future__ import annotations

import dataclasses
import pathlib

DCGAN64 = "dcgan64"


def ensure_dcgan64(repo: pathlib.Path) -> pathlib.Path:
    """Export the speed-only DCGAN-64 RGB model into ``repo`` unless it is there; return repo."""
    if (repo / DCGAN64 / "1" / "model.onnx").is_file():
        return repo
    import torch

    from ganserve.export.pipeline import ExportConfig, TensorRTMode, export_checkpoint
    from ganserve.train import checkpoint
    from ganserve.train.networks import Generator, GeneratorConfig

    torch.manual_seed(0)
    config = GeneratorConfig(latent_dim=100, num_classes=0, image_size=64, channels=3, width=64)
    generator = Generator(config).eval()
    ckpt = repo.parent / f"{DCGAN64}.pt"
    checkpoint.save(
        {
            "generator_config": dataclasses.asdict(config),
            "generator_ema": generator.state_dict(),
            "step": 0,
            "metrics": {},
            "dataset": {"name": "none: untrained, for speed measurements only"},
        },
        ckpt,
    )
    export_checkpoint(
        ckpt,
        ExportConfig(
            repository=repo,
            name=DCGAN64,
            version=1,
            force=True,
            tensorrt=TensorRTMode.OFF,
            max_batch=64,
        ),
    )
    return repo
