"""Where training runs: the device option, bfloat16 mixed precision, and a GPU when present.

The bf16 path runs here on the CPU (torch's CPU autocast), so the mixed-precision code is
exercised in CI; the CUDA run skips without a GPU.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from ganserve.train import checkpoint
from ganserve.train.data import load_digits_split
from ganserve.train.loop import TrainConfig, resolve_device, train
from ganserve.train.networks import GeneratorConfig

TINY = GeneratorConfig(width=8, latent_dim=16, embed_dim=8)


def _train(tmp_path: pathlib.Path, **options: object) -> dict:
    data, heldout = load_digits_split(32)
    config = TrainConfig(steps=6, batch_size=16, log_every=3, eval_per_class=0, **options)
    return train(TINY, config, data, heldout, tmp_path / "g.pt")


@pytest.mark.parametrize("architecture", ["dcgan", "stylegan"])
def test_bf16_mixed_precision_trains_and_keeps_fp32_weights(
    tmp_path: pathlib.Path, architecture: str
) -> None:
    data, heldout = load_digits_split(32)
    config = TrainConfig(
        steps=6, batch_size=16, log_every=3, eval_per_class=0, precision="bf16", r1_gamma=1.0
    )
    generator = GeneratorConfig(
        architecture=architecture, width=8, latent_dim=16, embed_dim=8, w_dim=16
    )
    seen: set[torch.dtype] = set()  # what D's layers compute in, under autocast
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: (
            seen.add(output.dtype) if isinstance(module, torch.nn.Conv2d) else None
        )
    )
    try:
        final = train(generator, config, data, heldout, tmp_path / "g.pt")
    finally:
        hook.remove()
    assert torch.bfloat16 in seen, seen
    assert all(
        torch.isfinite(torch.tensor([r["d_loss"], r["g_loss"]])).all() for r in final["history"]
    )
    weights = checkpoint.load(tmp_path / "g.pt")["generator_ema"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    assert final["training_config"]["precision"] == "bf16"


def test_fp32_on_the_cpu_is_the_same_run_whatever_the_device_option(tmp_path: pathlib.Path):
    """--device cpu and auto (on a machine without a GPU) draw the same numbers."""
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    a = _train(tmp_path / "a", device="cpu")
    b = _train(tmp_path / "b", device="auto")
    for name, tensor in a["generator_ema"].items():
        assert torch.equal(tensor, b["generator_ema"][name]), name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"device": "cpu:1"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, got 'fp8'"),
    ],
)
def test_bad_device_or_precision_is_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_asking_for_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(ValueError, match="torch sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none): trains on cuda"
)
def test_training_on_the_gpu_writes_a_checkpoint_the_cpu_loads(tmp_path: pathlib.Path) -> None:
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    _train(tmp_path, device="cuda", precision=precision, diffaugment="translation,cutout")
    ckpt = checkpoint.load(tmp_path / "g.pt")  # map_location=cpu
    assert next(iter(ckpt["generator_ema"].values())).device.type == "cpu"
    assert "cuda" in ckpt["rng"]
