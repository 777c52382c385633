"""Dependencies point one way: serving and client code never import torch, train or export."""

from __future__ import annotations

import subprocess
import sys

import pytest

SERVING_MODULES = [
    "ganserve.serve.cli",
    "ganserve.serve.server",
    "ganserve.client",
    "ganserve.client.cli",
]


@pytest.mark.parametrize("module", SERVING_MODULES)
def test_serving_path_never_imports_torch(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
        "'ganserve.train', 'ganserve.export', 'onnx.', 'sklearn')))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
