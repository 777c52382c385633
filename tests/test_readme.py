"""The README's Python client example runs as written against a real server."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

from conftest import ROOT, ServerThread


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_a_python_example() -> None:
    assert python_blocks()


@pytest.mark.parametrize("block", python_blocks())
def test_readme_python_example_runs(
    block: str,
    bundled_server: ServerThread,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code = block.replace("localhost:50051", bundled_server.target)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().splitlines() == ["(32, 32, 1)", "10"]
    assert (tmp_path / "seven.png").read_bytes().startswith(b"\x89PNG")


def test_deploy_doc_config_example_is_a_valid_config_file(tmp_path: pathlib.Path) -> None:
    """The TOML example in docs/deploy.md only uses keys and types the server accepts."""
    from ganserve.serve.config import read_config_file

    (block,) = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    path = tmp_path / "ganserve.toml"
    path.write_text(block)
    settings = read_config_file(path)
    assert settings["shutdown_delay_s"] == 5.0 and settings["models"]["digits"]["versions"] == [
        1,
        2,
    ]
