"""export-gan from the shell: bad input is one clear line and a non-zero exit, never a
traceback; nothing lands in the repository."""

from __future__ import annotations

import pathlib
import pickle
import re
import subprocess
import sys

import pytest
import torch

from ganserve.export import tensorrt_build
from ganserve.serve import repository

BIN = pathlib.Path(sys.executable).parent / "export-gan"

NO_TENSORRT = tensorrt_build.unavailable()
needs_no_tensorrt = pytest.mark.skipif(
    not NO_TENSORRT, reason="TensorRT and a GPU are present here: it would build"
)


class Payload:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def export_gan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120)


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A Python script (which patches export-gan, then runs its main) with ``args``."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
    )


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def make_input(kind: str, tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "input.pt"
    if kind == "missing":
        return tmp_path / "absent.pt"
    if kind == "not-a-checkpoint":
        path.write_bytes(b"this is a text file, not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "other-tool":
        torch.save({"state_dict": {"layer.weight": torch.zeros(3, 3)}, "epoch": 3}, path)
    elif kind == "pickle-payload":
        torch.save({"format": "ganserve-checkpoint", "x": Payload(tmp_path / "ran")}, path)
    elif kind == "raw-pickle-payload":
        path.write_bytes(pickle.dumps(Payload(tmp_path / "ran"), protocol=2))
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such checkpoint file"),
        # A file that is not a zip archive is refused before unpickling ("not a checkpoint
        # (torch.save writes a zip archive ...)") or by unpickling ("not a loadable ...").
        ("not-a-checkpoint", r"not a (loadable )?checkpoint"),
        ("empty", r"not a (loadable )?checkpoint"),
        ("other-tool", "not a ganserve checkpoint"),
        ("pickle-payload", "weights_only=True refused"),
        ("raw-pickle-payload", r"weights_only=True refused|not a checkpoint \(torch.save"),
    ],
)
def test_bad_checkpoint_is_one_line_and_writes_nothing(
    kind: str, message: str, tmp_path: pathlib.Path
) -> None:
    repo = tmp_path / "repo"
    error = refused(export_gan(str(make_input(kind, tmp_path)), "--repository", str(repo)))
    assert re.search(message, error), error
    assert not (tmp_path / "ran").exists(), "the pickle payload executed"
    assert not repo.exists() or list(repo.rglob("*")) == []


def test_a_size_gan_train_does_not_allow_is_one_line_before_anything_is_built(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A latent_dim of 10**9 was a traceback ending in "can't allocate memory"."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["generator_config"] = {**ckpt["generator_config"], "latent_dim": 10**9}
    path = tmp_path / "huge.pt"
    torch.save(ckpt, path)
    repo = tmp_path / "repo"
    assert refused(export_gan(str(path), "--repository", str(repo))) == (
        f"Error: {path}: checkpoint generator_config latent_dim 1000000000 is out of range: "
        "gan-train's --latent-dim allows 1..4096"
    )
    assert not repo.exists()


def test_existing_version_needs_force(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    repo = tmp_path / "repo"
    common = [
        str(tiny_checkpoint),
        "--repository",
        str(repo),
        "--name",
        "tiny",
        "--version",
        "1",
        "--max-batch",
        "8",
        "--tensorrt",
        "off",
    ]
    first = export_gan(*common)
    assert first.returncode == 0, first.stderr
    assert f"wrote {repo / 'tiny' / '1'}" in first.stdout
    assert "model.onnx       fp32: max |diff|" in first.stdout
    assert "already exists; pass --version N for a new one, or --force" in refused(
        export_gan(*common)
    )
    assert export_gan(*common, "--force").returncode == 0


def test_force_keeps_the_checkpoint_it_exports_from_and_names_what_it_removes(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Re-exporting a version from its own checkpoint (to add --fp16-onnx, say) deleted the
    checkpoint with the old version, exit 0, and said nothing of the files it removed."""
    version = tmp_path / "repo" / "tiny" / "1"
    version.mkdir(parents=True)
    source = version / "checkpoint.pt"
    source.write_bytes(tiny_checkpoint.read_bytes())
    (version / "model.fp16.onnx").write_bytes(b"the old version's")
    (version / "notes.txt").write_text("the old version's")
    result = export_gan(
        str(source),
        *("--repository", str(tmp_path / "repo"), "--name", "tiny", "--version", "1", "--force"),
        *("--max-batch", "8", "--tensorrt", "off"),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in version.iterdir()) == [
        "checkpoint.pt",
        "metadata.json",
        "model.onnx",
    ]
    assert source.read_bytes() == tiny_checkpoint.read_bytes()
    assert repository.open_version(tmp_path / "repo", "tiny", 1).metadata.name == "tiny"
    assert result.stderr.splitlines() == [
        f"warning: --force removed model.fp16.onnx, notes.txt with the version it replaced "
        f"({version}): the new version has no such file"
    ]
    assert [p.name for p in version.parent.iterdir()] == ["1"]  # no staging folder left


@needs_no_tensorrt
def test_tensorrt_on_without_tensorrt_is_refused(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    error = refused(
        export_gan(str(tiny_checkpoint), "--repository", str(tmp_path / "r"), "--tensorrt", "on")
    )
    assert "--tensorrt on was requested but cannot build here:" in error


@needs_no_tensorrt
def test_tensorrt_auto_without_tensorrt_says_so_in_one_line(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    result = export_gan(
        str(tiny_checkpoint), "--repository", str(tmp_path / "r"), "--max-batch", "8"
    )
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stdout.splitlines() if "TensorRT" in line]
    assert len(skipped) == 1 and skipped[0].startswith("TensorRT engine skipped: ")
    # torch's per-op notice about torchvision's detection ops is filtered: no generator uses them
    assert "torchvision" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--opt-batch", "128", "--max-batch", "64"], "opt_batch must be in 1..max_batch"),
        (["--verify-batch-sizes", "1,x"], "not a comma-separated list of integers"),
        (["--opset", "9"], "9 is not in the range 17<=x<=23"),
        (
            ["--verify-batch-sizes", "100000000"],
            "'--verify-batch-sizes': each size must be in 1..--max-batch (64), got 100000000",
        ),
        (
            ["--verify-batch-sizes", "1,5000", "--max-batch", "8"],
            "'--verify-batch-sizes': each size must be in 1..--max-batch (8), got 5000",
        ),
        # Undecodable bytes of the shell argument: exported, then no server could load it.
        (["--name", "\udcff"], "is not printable UTF-8 text: clients send it over gRPC"),
        (["--name", "a\tb"], "is not printable UTF-8 text"),
        # Options of the TensorRT engine with no engine: they used to do nothing, silently.
        (["--tensorrt", "off", "--precision", "fp16"], "--precision fp16 applies to the TensorRT"),
        (["--tensorrt", "off", "--opt-batch", "8"], "--opt-batch tunes the TensorRT engine"),
    ],
)
def test_bad_options_are_usage_errors(
    tiny_checkpoint: pathlib.Path, args: list[str], message: str
) -> None:
    result = export_gan(str(tiny_checkpoint), *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["repository-under-a-file", "version-is-a-file"])
def test_unwritable_destination_is_one_line_before_the_work(
    where: str, tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "afile").write_text("")
    if where == "repository-under-a-file":
        args, message = ["--repository", str(tmp_path / "afile" / "sub")], "afile is a file"
    else:
        (tmp_path / "repo" / "m").mkdir(parents=True)
        (tmp_path / "repo" / "m" / "1").write_text("")
        args = ["--repository", str(tmp_path / "repo"), "--name", "m", "--version", "1", "--force"]
        message = "it is a file, not a version folder"
    error = refused(export_gan(str(tiny_checkpoint), *args))
    assert error.startswith("Error: cannot write ") and message in error


# Runs export-gan with torch's exporter replaced by one that writes half a model and then
# receives Ctrl-C (SIGINT), or SIGTERM for "sigterm"; "wrapped" re-raises it the way torch's
# exporter can, as another error caused by the KeyboardInterrupt.
INTERRUPTED_EXPORT = """
import os, signal, sys
from ganserve.export import onnx_export
from ganserve.export.cli import main

def interrupted(generator, path, **kwargs):
    path.write_bytes(b"half a model")
    try:
        os.kill(os.getpid(), signal.SIGTERM if sys.argv[1] == "sigterm" else signal.SIGINT)
        for _ in range(10**7):  # the handler runs between bytecodes
            pass
    except KeyboardInterrupt as exc:
        if sys.argv[1] == "wrapped":
            raise RuntimeError("Failed to export the model with torch.export") from exc
        raise
    raise AssertionError("SIGINT was not delivered")

onnx_export.export_onnx = interrupted
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("how", "code", "said"),
    [
        ("plain", 130, "interrupted"),
        ("wrapped", 130, "interrupted"),
        ("sigterm", 143, "stopped by SIGTERM"),  # left its staging folder behind before
    ],
)
def test_interrupt_is_one_line_exit_130_and_writes_nothing(
    how: str, code: int, said: str, tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    repo = tmp_path / "repo"
    args = [str(tiny_checkpoint), "--repository", str(repo), "--tensorrt", "off"]
    result = run_script(INTERRUPTED_EXPORT, how, *args)
    assert result.returncode == code, result.stderr
    assert result.stderr.strip() == f"Error: {said}: nothing was written", result.stderr
    assert not repo.exists(), sorted(repo.rglob("*"))


# Runs export-gan and sends itself a signal at one point of the export: while publishing
# ("publish": held until the version is whole), or while exporting with SIGHUP ignored, as
# under nohup ("nohup": the export goes on).
SIGNALLED_EXPORT = """
import os, signal, sys
from ganserve.export import onnx_export, publish
from ganserve.export.cli import main

def signalled(real, signum):
    def run(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)
    return run

if sys.argv[1] == "publish":
    publish.publish = signalled(publish.publish, signal.SIGTERM)
else:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    onnx_export.export_onnx = signalled(onnx_export.export_onnx, signal.SIGHUP)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("when", "code", "said"),
    [
        ("publish", 143, "Error: stopped by SIGTERM after publishing; {version} is complete"),
        ("nohup", 0, "wrote {version}"),  # SIGHUP used to stop it, exit 129
    ],
)
def test_a_signal_while_publishing_or_one_ignored_leaves_the_version_whole(
    when: str, code: int, said: str, tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    repo = tmp_path / "repo"
    args = [str(tiny_checkpoint), "--repository", str(repo), "--name", "m", "--tensorrt", "off"]
    result = run_script(SIGNALLED_EXPORT, when, *args)
    assert result.returncode == code, result.stderr
    output = result.stderr if code else result.stdout
    assert said.format(version=repo / "m" / "1") in output, output
    assert repository.open_version(repo, "m", 1).metadata.name == "m"
    assert [p.name for p in (repo / "m").iterdir()] == ["1"]  # no staging folder left


# Runs export-gan and sends Ctrl-C while it prints its summary, after the version is published.
INTERRUPTED_SUMMARY = """
import os, signal, sys
import click
from ganserve.export.cli import main

def echo(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10**7):  # the handler runs between bytecodes
        pass
    raise AssertionError("SIGINT was not delivered")

click.echo = echo
sys.exit(main(sys.argv[1:]))
"""


def test_an_interrupt_after_publishing_says_the_version_is_complete(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """It used to print click's "Aborted!" (exit 1), as if the export had failed."""
    repo = tmp_path / "repo"
    args = [str(tiny_checkpoint), "--repository", str(repo), "--name", "m", "--tensorrt", "off"]
    result = run_script(INTERRUPTED_SUMMARY, *args)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == f"Error: interrupted after publishing; {repo}/m/1 is complete"
    assert repository.open_version(repo, "m", 1).metadata.name == "m"
