"""The serving install puts gan-train, gan-eval and export-gan on the PATH without torch and
onnx: each then says in one line what to install, not a traceback. And Ctrl-C while they start
is one line and exit code 130, not a traceback either."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from ganserve.train import checkpoint, extras
from ganserve.train.networks import GeneratorConfig, create_generator

COMMANDS = {
    "gan-train": extras.gan_train,
    "gan-eval": extras.gan_eval,
    "export-gan": extras.export_gan,
}


def test_the_console_scripts_go_through_the_check() -> None:
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    for command, entry in COMMANDS.items():
        assert scripts[command] == f"ganserve.train.extras:{entry.__name__}"


@pytest.mark.parametrize("hidden", [("torch",), ("torch", "onnx")])
def test_without_the_train_extras_each_command_is_one_line_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hidden: tuple[str, ...]
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else find_spec(name, *a),
    )
    assert extras.missing_modules() == list(hidden)
    for command, entry in COMMANDS.items():
        with pytest.raises(SystemExit) as stopped:
            entry()
        assert stopped.value.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"Error: {command} needs the training extras"
        )
        verb = "is" if len(hidden) == 1 else "are"
        assert (
            f"{', '.join(hidden)} {verb} not installed" in err and "pip install '.[train]'" in err
        )


def test_every_module_of_the_train_extra_is_checked() -> None:
    """TRAIN_MODULES follows pyproject's `train` extra: one name per requirement."""
    requires = importlib.metadata.requires("ganserve") or []
    train = [r for r in requires if 'extra == "train"' in r]
    assert len(train) == len(extras.TRAIN_MODULES)
    assert extras.missing_modules() == []  # this environment has them all


def interrupt_after_import(argv: list[str], module: str) -> tuple[int, list[str]]:
    """Start a console script and send it SIGINT as soon as it has imported ``module`` (Python
    reports each import as it ends under PYTHONPROFILEIMPORTTIME; the script is left as it is).
    Its exit code, and what it wrote to stderr after that, less the import reports."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    command = [str(pathlib.Path(sys.executable).parent / argv[0]), *argv[1:]]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in proc.stderr:  # (the script blocks on a full pipe, so it is never far ahead)
            if line.startswith("import time:") and line.rsplit("|", 1)[1].strip() == module:
                proc.send_signal(signal.SIGINT)
                break
        else:
            pytest.fail(f"{argv[0]} ended without importing {module} (exit {proc.wait()})")
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    return code, [line for line in rest.splitlines() if not line.startswith("import time:")]


# Points in the start-up, each the end of an import: torch's C++ core (KeyboardInterrupt here
# aborted the process), the last of gan-train's modules (click then parses the options and the
# data loads, importing scikit-learn), the data loading itself.
@pytest.mark.parametrize("module", ["torch._C", "ganserve.train.loop", "sklearn.datasets"])
def test_ctrl_c_while_gan_train_starts_is_one_line_and_exit_130(
    tmp_path: pathlib.Path, module: str
) -> None:
    out = tmp_path / "x.pt"
    args = ["--out", str(out), "--steps", "1000", "--width", "8", "--image-size", "8"]
    code, said = interrupt_after_import(["gan-train", *args, "--eval-per-class", "0"], module)
    assert code == 130 and "Traceback" not in "\n".join(said), said
    if said == [f"Error: {extras.BEFORE_TRAINING}"]:
        assert list(tmp_path.iterdir()) == []
    else:  # it got as far as the training loop, which saves the step and says so
        assert re.fullmatch(r"Error: interrupted after step \d+ of 1000: saved .*", said[-1]), said


# torch's C++ core; the last of gan-eval's modules (then the checkpoint and the data load);
# torch._dynamo, which the feature extractor's first optimiser step imports.
@pytest.mark.parametrize("module", ["torch._C", "ganserve.train.evaluation", "torch._dynamo"])
def test_ctrl_c_while_gan_eval_runs_is_one_line_and_exit_130(
    tmp_path: pathlib.Path, module: str
) -> None:
    cfg = GeneratorConfig(width=8, latent_dim=8, embed_dim=4, image_size=8)
    generator = create_generator(cfg)
    ckpt = tmp_path / "g.pt"
    checkpoint.save(
        {"generator_config": cfg.to_dict(), "generator_ema": generator.state_dict(), "step": 0},
        ckpt,
    )
    args = [str(ckpt), "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "e.json")]
    code, said = interrupt_after_import(["gan-eval", *args, "--per-class", "10"], module)
    assert (code, said) == (130, [f"Error: {extras.BEFORE_EVALUATION}"])
    assert not (tmp_path / "e.json").exists()
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name]
