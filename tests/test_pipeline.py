"""The whole path through the console scripts: gan-train -> export-gan -> ganserve -> gan-client.

Real processes, a real port on loopback, SIGTERM at the end. Well under a minute.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

BIN = pathlib.Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


def wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"server never logged {pattern!r}; it said:\n{''.join(seen)}")


@pytest.mark.slow
def test_train_export_serve_generate(tmp_path: pathlib.Path) -> None:
    ckpt, repo = tmp_path / "tiny.pt", tmp_path / "models"
    run(
        "gan-train",
        "--out",
        str(ckpt),
        "--steps",
        "20",
        "--width",
        "8",
        "--batch-size",
        "16",
        "--log-every",
        "10",
        "--eval-per-class",
        "0",
    )
    out = run("export-gan", str(ckpt), "--repository", str(repo), "--name", "tiny")
    assert "wrote" in out.stdout and (repo / "tiny" / "1" / "model.onnx").is_file()

    server = subprocess.Popen(
        [
            str(BIN / "ganserve"),
            "serve",
            "--model-repository",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # `ganserve serve` runs on uvloop (a dependency), the loop the in-process servers use.
        match = wait_for_line(
            server, r"serving tiny on port (\d+) \(metrics on (\d+), uvloop event loop\)"
        )
        port, metrics_port = match.group(1), match.group(2)
        png = tmp_path / "seven.png"
        out = run(
            "gan-client",
            "--target",
            f"127.0.0.1:{port}",
            "generate",
            "--seed",
            "42",
            "--class",
            "7",
            "-o",
            str(png),
        )
        assert "32x32x1 from tiny v1" in out.stdout
        pixels = np.asarray(Image.open(png))
        assert pixels.shape == (32, 32) and pixels.dtype == np.uint8
        failed = subprocess.run(
            [
                str(BIN / "gan-client"),
                "--target",
                f"127.0.0.1:{port}",
                "generate",
                "--seed",
                "1",
                "--class",
                "10",
                "-o",
                str(tmp_path / "x.png"),
            ],
            capture_output=True,
            text=True,
        )
        assert failed.returncode == 1
        assert "INVALID_ARGUMENT: class_label 10 is out of range" in failed.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as reply:
            assert b'ganserve_images_generated_total{model="tiny",version="1"} 1.0' in reply.read()

        # A new export, then SIGHUP: the running server picks up version 2.
        run("export-gan", str(ckpt), "--repository", str(repo), "--name", "tiny")
        server.send_signal(signal.SIGHUP)
        wait_for_line(server, r"reload: tiny v2 READY, tiny v1 UNLOADED")
        out = run(
            "gan-client",
            "--target",
            f"127.0.0.1:{port}",
            "generate",
            "--seed",
            "42",
            "--class",
            "7",
            "-o",
            str(png),
        )
        assert "from tiny v2" in out.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
    assert code == 0
