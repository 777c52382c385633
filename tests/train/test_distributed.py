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
