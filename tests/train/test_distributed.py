"""Multi-process training through torchrun: the same code path, 2 CPU processes on gloo."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from ganserve.train import checkpoint


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--loss", "wgan-gp", "--n-critic", "2", "--r1-gamma", "1", "--diffaugment", "translation"],
    ],
    ids=["nonsaturating", "wgan-gp-r1-diffaugment"],
)
def test_torchrun_trains_with_two_gloo_processes(
    tmp_path: pathlib.Path, options: list[str]
) -> None:
    out = tmp_path / "ddp.pt"
    result = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "torchrun"),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "ganserve.train.cli",
            "--out",
            str(out),
            "--steps",
            "6",
            "--width",
            "8",
            "--batch-size",
            "8",
            "--eval-per-class",
            "0",
            "--log-every",
            "2",
            "--sample-every",
            "3",
            "--checkpoint-every",
            "3",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = checkpoint.load(out)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6
    log = (tmp_path / "ddp-run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [2, 4, 6]  # written by rank 0 only
    assert result.stdout.count("wrote ") == 1


RANKS_AGREE = """
import json, pathlib, re, sys
import torch
from ganserve.train.data import load_digits_split
from ganserve.train.loop import Distributed, TrainConfig, train
from ganserve.train.networks import GeneratorConfig

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
data, heldout = load_digits_split(32)
final = train(
    GeneratorConfig(width=8, latent_dim=16, embed_dim=8),
    TrainConfig(steps=4, batch_size=8, log_every=2, eval_per_class=0),
    data,
    heldout,
    pathlib.Path(sys.argv[1]) / "g.pt",
    distributed=Distributed(rank, torch.distributed.get_world_size()),
)
buffers = re.compile(r"running_|num_batches_tracked|\\._[uv]$")  # BatchNorm, power iteration
sums = {
    f"{net}.{key}": float(t.double().sum())
    for net in ("generator", "discriminator")
    for key, t in final[net].items()
    if not buffers.search(key)
}
(pathlib.Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(sums))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_ranks_end_with_the_same_weights(tmp_path: pathlib.Path) -> None:
    """Each rank draws its own batches; DDP averages the gradients, so every rank makes the same
    updates and ends with the same weights. Without the averaging they would part at step 1."""
    script = tmp_path / "ranks_agree.py"
    script.write_text(RANKS_AGREE)
    result = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "torchrun"),
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(first) > 10 and first == second
