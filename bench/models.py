"""Models the benchmark needs besides the bundled one, exported untrained (speed does not
depend on weight values, and the export is verified all the same):

* ``dcgan64``: a DCGAN at 64x64 RGB, the DCGAN paper's architecture (latent 100, feature
  width 64).
* ``tiny``: the bundled model's contract (conditional, 10 classes, 32x32 grey, so the same
  request and a 1024-byte raw reply) from a fully-connected generator with one hidden layer of
  8 units. Its engine time is a few microseconds, so the server's figures with it are the
  serving path's own ceiling: gRPC, batching and the per-request Python, with the model
  taken out.
"""

from __future__ import annotations

import dataclasses
import pathlib

DCGAN64 = "dcgan64"
TINY = "tiny"


def _configs():
    from ganserve.train.networks import GeneratorConfig

    return {
        DCGAN64: GeneratorConfig(
            latent_dim=100, num_classes=0, image_size=64, channels=3, width=64
        ),
        TINY: GeneratorConfig(
            architecture="gan", latent_dim=64, num_classes=10, width=8, embed_dim=4, fc_layers=1
        ),
    }


def ensure_model(repo: pathlib.Path, name: str, *, tensorrt: bool = False) -> pathlib.Path:
    """Export the speed-only model ``name`` (DCGAN64 or TINY) into ``repo`` as version 1
    unless it is there, with a TensorRT engine if ``tensorrt`` (which needs a GPU); return
    repo."""
    wanted = "model.plan" if tensorrt else "model.onnx"
    if (repo / name / "1" / wanted).is_file():
        return repo
    import torch

    from ganserve.export.pipeline import ExportConfig, TensorRTMode, export_checkpoint
    from ganserve.train import checkpoint
    from ganserve.train.networks import create_generator

    config = _configs()[name]
    torch.manual_seed(0)
    generator = create_generator(config).eval()
    ckpt = repo.parent / f"{name}.pt"
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
            name=name,
            version=1,
            force=True,
            tensorrt=TensorRTMode.ON if tensorrt else TensorRTMode.OFF,
            max_batch=64,
        ),
    )
    return repo
